"""The results ledger: what every notebook measured and claimed in the book's latest
execution.

``make book`` executes each notebook and keeps the executed copy in Jupyter
Book's cache (``_build/.jupyter_cache``) until the notebook changes. The
ledger reads the records (see :mod:`helpers.results`) back from there, so a
reader who builds the book gets the figures of their own machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import nbformat
import yaml
from jupyter_cache import get_cache

from helpers.results import declared_claims, records_in


@dataclass(frozen=True)
class Chapter:
    """One notebook, the claims it declares, and the records of its latest execution
    (``executed`` is None if it has none)."""

    notebook: Path
    title: str
    executed: datetime | None
    records: list[dict[str, Any]]
    declared: dict[str, dict[str, str]]

    def machine(self) -> str:
        """What it ran on, in words, from the notebook's own machine record."""
        found = [r for r in self.records if r["kind"] == "machine"]
        if not found:
            return "machine not recorded"
        m = found[0]
        gpus = f"{m['gpus']:g} GPUs" if m["gpus"] else "no GPU"
        return (
            f"{m['cpus']} CPUs, {m['memory_gib']:.1f} GiB, {gpus}, "
            f"Ray {m['ray_version']}; cluster {m['cluster']}"
        )

    def table(self):
        """Measurements and claims, one row each, in the order the notebook made them; a
        claim with what would have made it fail, as the notebook declares it."""
        import pandas as pd

        rows = []
        for r in self.records:
            if r["kind"] == "measurement":
                rows.append(
                    (
                        "measured",
                        r["name"],
                        f"{r['value']:.4g} {r['unit']}",
                        r.get("compared_to", ""),
                        r["note"],
                    )
                )
            elif r["kind"] == "claim":
                rows.append(
                    (
                        "claim",
                        r["name"],
                        "holds" if r["holds"] else "FAILED",
                        self._fails_if(r["name"]),
                        r["detail"],
                    )
                )
            elif r["kind"] == "not checked":
                rows.append(
                    (
                        "claim",
                        r["name"],
                        "not checked here",
                        self._fails_if(r["name"]),
                        r["because"],
                    )
                )
        columns = ["kind", "what", "result", "compared to, or fails if", "detail"]
        return pd.DataFrame(rows, columns=columns)

    def result(self, claim: str) -> str:
        """How a claim fared in the latest execution: holds, FAILED, not checked here,
        not run."""
        for r in self.records:
            if r.get("name") == claim and r["kind"] == "claim":
                return "holds" if r["holds"] else "FAILED"
            if r.get("name") == claim and r["kind"] == "not checked":
                return "not checked here"
        return "not run"

    def _fails_if(self, claim: str) -> str:
        declared = self.declared.get(claim, {})
        text = f"fails if {declared['fails_if']}" if "fails_if" in declared else ""
        control = declared.get("negative_control")
        return f"{text} (negative control: {control})" if control else text


def central_claims(book: list[Chapter]):
    """One row per chapter: its central claim (the one that names a negative control),
    what would make it fail, the control that switches its mechanism off, and how it
    fared."""
    import pandas as pd

    rows = []
    for chapter in book:
        central = [
            (name, d) for name, d in chapter.declared.items() if "negative_control" in d
        ]
        for name, declared in central or [("none named yet", {})]:
            rows.append(
                (
                    chapter.title,
                    name,
                    declared.get("fails_if", ""),
                    declared.get("negative_control", ""),
                    chapter.result(name) if declared else "",
                )
            )
    return pd.DataFrame(
        rows,
        columns=[
            "chapter",
            "central claim",
            "fails if",
            "negative control",
            "in this build",
        ],
    )


def gpu_runs(folder: Path) -> list[tuple[str, Any]]:
    """Each GPU run committed under ``benchmarks/gpu/`` (a ``gpu-run.json`` that
    ``scripts/gpu-check`` wrote on a machine with a GPU): a line saying on what and
    when, and a table of what its chapters recorded. Dry runs are left out."""
    import json

    import pandas as pd

    runs = []
    for path in sorted(folder.glob("*.json")):
        run = json.loads(path.read_text(encoding="utf-8"))
        if run.get("dry_run"):
            continue
        versions = run.get("versions", {})
        heading = (
            f"measured on {run['gpu']}, {run['date']}: Ray {versions.get('ray')}, "
            f"torch {versions.get('torch')}, CUDA {versions.get('cuda')}"
        )
        rows = []
        for chapter, result in run["chapters_run"].items():
            if not result["ran"]:
                rows.append((chapter, "failed to run", " ".join(result["error"]), ""))
            for record in result.get("records", []):
                if record["kind"] == "claim":
                    rows.append(
                        (
                            chapter,
                            record["name"],
                            "held" if record["holds"] else "FAILED",
                            record["detail"],
                        )
                    )
                elif record["kind"] == "measurement":
                    rows.append(
                        (
                            chapter,
                            record["name"],
                            f"{record['value']:.4g} {record['unit']}",
                            record["note"],
                        )
                    )
        runs.append(
            (
                heading,
                pd.DataFrame(rows, columns=["chapter", "record", "result", "detail"]),
            )
        )
    return runs


def toc_notebooks(toc: Path) -> list[Path]:
    """The notebooks (files under ``notebooks/``) that ``_toc.yml`` lists, in reading
    order."""
    book = yaml.safe_load(toc.read_text(encoding="utf-8"))
    files = [book["root"]]
    stack = list(book.get("chapters", [])) + [
        c for p in book.get("parts", []) for c in p["chapters"]
    ]
    while stack:
        entry = stack.pop(0)
        files.append(entry["file"])
        stack[:0] = entry.get("sections", [])
    return [
        toc.parent / f"{f.removesuffix('.ipynb')}.ipynb"
        for f in files
        if f.startswith("notebooks/")
    ]


def chapters(toc: Path, cache_path: Path) -> list[Chapter]:
    """Every notebook of the book with the records of its latest cached execution."""
    cache = get_cache(str(cache_path))
    found = []
    for notebook in toc_notebooks(toc):
        title = _title(notebook)
        declared = declared_claims(nbformat.read(notebook, as_version=4))
        try:
            record = cache.match_cache_file(str(notebook))
        except KeyError:  # changed since it last ran, or never ran
            found.append(Chapter(notebook, title, None, [], declared))
            continue
        executed = cache.get_cache_bundle(record.pk).nb
        found.append(
            Chapter(notebook, title, record.created, records_in(executed), declared)
        )
    return found


def _title(notebook: Path) -> str:
    for cell in nbformat.read(notebook, as_version=4).cells:
        if cell.cell_type == "markdown" and cell.source.startswith("# "):
            return cell.source.splitlines()[0][2:].strip()
    return notebook.stem
