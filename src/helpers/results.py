"""Record what a notebook measured and what it claims, where tests can read it back.

Every notebook records through :func:`helpers.claim` and :func:`helpers.measure`.

Each record is displayed as an output with its own MIME type, holding JSON,
beside a plain-text line for people. The executed notebook therefore carries
its own results: the tests, the benchmark script and the results ledger all
read them from there, with :func:`records_in`.

A notebook declares the claims it makes in its metadata, each with what would
make it fail (:func:`declared_claims`). A run must account for every one:
checked with :func:`claim`, or recorded with :func:`not_checked` and the reason
(no GPU here, a cluster this notebook may not kill a node of).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

MIME_TYPE = "application/vnd.ray-library-patterns.record+json"


class ClaimFailed(AssertionError):
    """A claim the notebook makes did not hold on this run."""


def measure(
    name: str, value: float, unit: str, *, note: str = "", compared_to: str = ""
) -> None:
    """Record a named measurement and show it.

    ``compared_to`` names the reference it is set against, where there is one:
    another measurement of the same run ("memcpy throughput"), or a baseline
    ("pandas"). The results ledger shows it beside the value.
    """
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"Measurement {name!r} is not a finite number: {value}")
    _emit(
        {
            "kind": "measurement",
            "name": name,
            "value": value,
            "unit": unit,
            "note": note,
            "compared_to": compared_to,
        }
    )


def machine(
    *, cpus: int, memory_gib: float, gpus: float, ray_version: str, cluster: str
) -> None:
    """Record what the notebook ran on: the machine, and the cluster it started or
    joined."""
    _emit(
        {
            "kind": "machine",
            "cpus": cpus,
            "memory_gib": memory_gib,
            "gpus": gpus,
            "ray_version": ray_version,
            "cluster": cluster,
        }
    )


def claim(name: str, holds: bool, detail: str) -> None:
    """Record a named claim; raise :class:`ClaimFailed` if it does not hold.

    ``detail`` says what was compared, with the numbers, so that a failure
    explains itself: "3 of 3 nodes ran a task", "4 copies for 24 calls".
    ``holds`` must be a boolean (Python's or NumPy's): a list, a number or
    None would hold or fail by its truthiness, not by a comparison.
    """
    if not isinstance(holds, (bool, np.bool_)):
        raise TypeError(
            f"claim {name!r}: holds must be a bool, not {type(holds).__name__}; "
            "compare explicitly (len(found) > 0, value is not None)"
        )
    holds = bool(holds)
    _emit({"kind": "claim", "name": name, "holds": holds, "detail": detail})
    if not holds:
        raise ClaimFailed(f"{name}: {detail}")


def not_checked(name: str, because: str) -> None:
    """Record that a declared claim was not checked on this run, and why."""
    if not because:
        raise ValueError(f"not_checked({name!r}): say why the claim was not checked")
    _emit({"kind": "not checked", "name": name, "because": because})


def declared_claims(notebook: dict) -> dict[str, dict[str, str]]:
    """The claims a notebook declares in its metadata, by name.

    Each says what would make it fail (``fails_if``); a chapter's central claim
    also names its ``negative_control``, the test that switches the mechanism
    off and sees the claim fail.
    """
    return (
        notebook.get("metadata", {}).get("ray_library_patterns", {}).get("claims", {})
    )


# What a claim can show about its chapter's level: each answers one of the decision
# guide's questions (book/choosing.md) with a check, where the chapter's metadata says
# ``"shows": ...``.
SHOWS = {
    "data in the store": "the library keeps its data in Ray's object store",
    "messages through Ray": (
        "its parts talk through Ray's calls, references or channels"
    ),
    "its own wire": "its workers exchange their bytes over a transport of their own",
    "a hand-off through the store": (
        "it hands its result to another library through the store"
    ),
}


def claims_showing(notebook: dict) -> dict[str, list[str]]:
    """The notebook's declared claims that show something about its level, by what they
    show."""
    found: dict[str, list[str]] = {}
    for name, claim in declared_claims(notebook).items():
        shows = claim.get("shows")
        if shows is not None and shows not in SHOWS:
            raise ValueError(
                f"claim {name!r} shows {shows!r}, not one of {sorted(SHOWS)}"
            )
        if shows is not None:
            found.setdefault(shows, []).append(name)
    return found


def unaccounted_claims(
    declared: dict, records: list[dict[str, Any]]
) -> dict[str, list[str]]:
    """Declared claims a run neither checked nor recorded as not checked, and the
    reverse."""
    made = [r["name"] for r in records if r["kind"] in ("claim", "not checked")]
    return {
        "declared, not accounted for": [n for n in declared if n not in made],
        "made, not declared": [n for n in made if n not in declared],
        "made twice": sorted({n for n in made if made.count(n) > 1}),
    }


def records_in(notebook: dict) -> list[dict[str, Any]]:
    """Every record in an executed notebook (as parsed JSON), in cell order."""
    found = []
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            payload = output.get("data", {}).get(MIME_TYPE)
            if payload is not None:
                found.append(
                    json.loads(payload) if isinstance(payload, str) else payload
                )
    return found


def record_line(record: dict[str, Any]) -> str:
    """A record as one line for people: what a notebook shows where it runs."""
    kind, name = record["kind"], record.get("name", "")
    if kind == "measurement":
        note, against = record.get("note"), record.get("compared_to")
        return (
            f"measured  {name} = {record['value']:.4g} {record['unit']}"
            + (f"  ({note})" if note else "")
            + (f"  [against {against}]" if against else "")
        )
    if kind == "machine":
        return (
            f"machine  {record['cpus']} CPUs, {record['memory_gib']:.1f} GiB, "
            f"Ray {record['ray_version']}; cluster {record['cluster']}, "
            f"{record['gpus']:g} GPUs"
        )
    if kind == "claim":
        verdict = "claim holds" if record["holds"] else "CLAIM FAILED"
        return f"{verdict}  {name}: {record['detail']}"
    return f"not checked  {name}: {record['because']}"


def _emit(record: dict[str, Any]) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        get_ipython = None  # noqa: N806
    if get_ipython is not None and get_ipython() is not None:
        display({MIME_TYPE: record, "text/plain": record_line(record)}, raw=True)
    else:
        print(record_line(record))
