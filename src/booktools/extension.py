"""Five hooks into the book's build.

* How a record is shown: a check by its line, the rest not at all. Jupyter
  Book (through myst-nb) warns about MIME types it does not know, and the
  book is built with warnings as errors. :class:`RecordRenderer`, registered
  in pyproject.toml under ``myst_nb.mime_renderers``, claims the record type:
  a claim, or a claim not checked, shows as its "claim holds ..." line; a
  measurement or the machine shows nothing on the page, since the results
  ledger lists them all and the page's own lines and figures give the numbers.
  :class:`DropEmptyOutputs` removes the output box of a cell that showed
  nothing else.
* When the results ledger is read: last, on every build. The ledger page
  reads every notebook's latest execution from the cache, so it must come
  after them. :func:`setup` makes this module a Sphinx extension
  (``_config.yml`` lists it) that re-reads the page each build, at the end.
* Each script once per page. sphinx-thebe, as Jupyter Book 1 sets it up,
  adds its configuration script twice, and the second ``const THEBE_JS_URL``
  is a SyntaxError in the console of every page. :func:`_each_script_once`
  drops the repeat.
* Launch buttons for the repository the book was cloned from. Binder and
  Colab open a notebook from a public repository, but ``_config.yml`` names
  none, so that a fork's book launches the fork rather than its upstream.
  :func:`_launch_from_origin` reads the URL from git's ``origin`` remote when
  the build starts, and leaves the two buttons out when that is not a GitHub
  or GitLab repository (a copy made from a local clone, an unpacked archive).
* No outputs of older code. Jupyter Book keeps a notebook's execution until
  the notebook changes, but a chapter's results depend on ``helpers`` (and
  :mod:`booktools.lines`) and on the installed packages too.
  :func:`_forget_outdated_executions` empties the cache when either has
  changed since it was filled, so the book and its ledger never show what
  older code did.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, ClassVar

from docutils import nodes
from sphinx.transforms.post_transforms import SphinxPostTransform

from helpers.results import MIME_TYPE, record_line

# What the rendered book shows of the records: the checks. Measurements and the
# machine go to the results ledger and the tests; the page's own lines and figures
# show the numbers.
SHOWN_ON_THE_PAGE = ("claim", "not checked")


class RecordRenderer:
    """A myst-nb MIME renderer plugin for :data:`helpers.results.MIME_TYPE`."""

    # First choice for an output that holds a record, whatever else it holds.
    mime_priority_overrides: ClassVar[list[tuple[str, str, int]]] = [
        ("*", MIME_TYPE, 1)
    ]

    @staticmethod
    def handle_mime(renderer: Any, data: Any, inline: bool) -> list | None:
        """A check as its line of text, any other record as nothing; None leaves
        other types to myst-nb."""
        if data.mime_type != MIME_TYPE:
            return None
        record = data.content
        if isinstance(record, (str, bytes)):
            record = json.loads(record)
        if record["kind"] not in SHOWN_ON_THE_PAGE:
            # Not nothing: myst-nb drops a type that renders to no node, and would
            # show the output's text line instead. A comment shows nothing.
            return [nodes.comment()]
        line = dataclasses.replace(
            data, mime_type="text/plain", content=record_line(record)
        )
        return renderer.render_text_plain(line)


class DropEmptyOutputs(SphinxPostTransform):
    """A cell whose outputs were all records that the page does not show keeps no
    empty output box."""

    default_priority = 10  # after myst-nb has chosen each output's MIME type

    def run(self, **kwargs: Any) -> None:
        for box in list(self.document.findall(nodes.container)):
            hidden = all(isinstance(child, nodes.comment) for child in box.children)
            if "cell_output" in box["classes"] and hidden:
                box.parent.remove(box)


LEDGER = "book/ledger"


def setup(app: Any) -> dict[str, Any]:
    """Register the hooks with Sphinx."""
    app.add_post_transform(DropEmptyOutputs)
    app.connect("config-inited", _launch_from_origin)
    app.connect("config-inited", _forget_outdated_executions)
    app.connect("env-get-outdated", _ledger_is_always_outdated)
    app.connect("env-before-read-docs", _read_ledger_last)
    app.connect("html-page-context", _each_script_once)
    return {"parallel_read_safe": False, "parallel_write_safe": True}


def _ledger_is_always_outdated(
    app: Any, env: Any, added: set, changed: set, removed: set
) -> list[str]:
    return [LEDGER] if LEDGER in env.found_docs else []


def _read_ledger_last(app: Any, env: Any, docnames: list[str]) -> None:
    if LEDGER in docnames:
        docnames.remove(LEDGER)
        docnames.append(LEDGER)


def _each_script_once(
    app: Any, pagename: str, templatename: str, context: dict, doctree: Any
) -> None:
    # The two copies differ only in how they name "no file": None and "".
    seen, unique = set(), []
    for script in context.get("script_files", []):
        key = (
            script.filename or "",
            script.priority,
            tuple(sorted(script.attributes.items())),
        )
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


# https://github.com/org/repo.git, git@gitlab.com:org/repo,
# ssh://git@github.com/org/repo: the host, org and repo.
_PUBLIC_REMOTE = re.compile(
    r"^(?:https://(?:[^@/]+@)?|ssh://git@|git@)(?P<host>github\.com|gitlab\.com)[:/]"
    r"(?P<org>[\w.-]+)/(?P<repo>[\w.-]+?)(?:\.git)?/?$"
)


def public_repository_url(remote: str) -> str | None:
    """The https URL of a GitHub or GitLab remote, without credentials; None for any
    other remote."""
    found = _PUBLIC_REMOTE.match(remote.strip())
    return f"https://{found['host']}/{found['org']}/{found['repo']}" if found else None


def _origin(folder: str | Path) -> str:
    git = subprocess.run(
        ["git", "remote", "get-url", "origin"],
        cwd=folder,
        capture_output=True,
        text=True,
    )
    return git.stdout if git.returncode == 0 else ""


def _launch_from_origin(app: Any, config: Any) -> None:
    options = config.html_theme_options
    if options.get("repository_url"):
        return
    url = public_repository_url(_origin(app.srcdir))
    if url:
        options["repository_url"] = url
    else:
        # The theme cannot build a Binder or Colab link without a repository; the
        # download button stays.
        options["launch_buttons"] = {}


# What every chapter's execution depends on besides the notebook itself: the helpers,
# the line counting that three chapters import, and the locks.
EXECUTION_INPUTS = ("src/helpers/*.py", "src/booktools/lines.py", "requirements*.lock")


def inputs_digest(root: Path) -> str:
    """A digest of the helpers' sources and the locks, by name and content."""
    digest = hashlib.sha256()
    for pattern in EXECUTION_INPUTS:
        for path in sorted(root.glob(pattern)):
            digest.update(
                str(path.relative_to(root)).encode() + b"\0" + path.read_bytes()
            )
    return digest.hexdigest()


def _forget_outdated_executions(app: Any, config: Any) -> None:
    if not getattr(config, "nb_execution_cache_path", ""):
        return  # not executing through a cache
    root = Path(app.srcdir)
    cache = root / config.nb_execution_cache_path
    stamp = cache.with_name(cache.name + ".inputs")
    digest = inputs_digest(root)
    if stamp.exists() and stamp.read_text() == digest:
        return
    shutil.rmtree(cache, ignore_errors=True)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest)
