"""Print how long the book takes to build, and what a build with a failing cell says.

    .venv/bin/python benchmarks/book_build.py [--first]

Figures, not tests. Targets (from the rendered-book issue), on 2 cores:
  * a rebuild with nothing changed takes <= 10 s;
  * when a notebook's cell fails, the build exits non-zero and names the notebook and
    the cell.
With --first it also times a first build of a copy of the book, which executes every
notebook at full size (about 20 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
JUPYTER_BOOK = Path(sys.executable).parent / "jupyter-book"
SOURCES = ("_config.yml", "_toc.yml", "book", "notebooks")


def build(book: Path) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(
        [JUPYTER_BOOK, "build", book, "-W", "-n", "--keep-going"],
        capture_output=True,
        text=True,
        cwd=book,
    )
    return time.perf_counter() - start, done


def copy_of_the_book(into: Path) -> Path:
    for name in SOURCES:
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, into / name)
    return into


def first_build() -> None:
    with tempfile.TemporaryDirectory(prefix="book-") as folder:
        seconds, done = build(copy_of_the_book(Path(folder)))
    print(
        "first build, every notebook executed: "
        f"{seconds / 60:.1f} min, exit {done.returncode}"
    )


def no_change_rebuild() -> None:
    build(ROOT)  # bring the build up to date first
    seconds, done = build(ROOT)
    print(
        f"rebuild with nothing changed: {seconds:.1f} s, exit {done.returncode}"
        "   (target <= 10 s)"
    )


def failing_cell() -> None:
    """A one-chapter book whose notebook raises in its second code cell."""
    with tempfile.TemporaryDirectory(prefix="broken-book-") as folder:
        book = Path(folder)
        shutil.copy(ROOT / "_config.yml", book)
        (book / "notebooks").mkdir()
        (book / "intro.md").write_text("# A book with a broken chapter\n")
        (book / "_toc.yml").write_text(
            "format: jb-book\nroot: intro\nchapters:\n  - file: notebooks/broken\n"
        )
        notebook = new_notebook(
            cells=[
                new_markdown_cell("# Broken"),
                new_code_cell("x = 1"),
                new_code_cell("raise RuntimeError('this cell fails on purpose')"),
            ]
        )
        notebook.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        nbformat.write(notebook, book / "notebooks" / "broken.ipynb")
        seconds, done = build(book)
    output = re.sub(
        r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr
    )  # without the colours
    said = [
        line.strip()
        for line in output.splitlines()
        if "broken" in line and ("fail" in line.lower() or "error" in line.lower())
    ]
    names_the_cell = "this cell fails on purpose" in output
    print(
        f"a failing cell: exit {done.returncode} after {seconds:.1f} s"
        "   (target: non-zero)"
    )
    print(
        f"  names the notebook: {bool(said)}; "
        f"shows the failing cell's error: {names_the_cell}"
    )
    for line in said[:5]:
        print(f"    {line[:160]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--first", action="store_true", help="also time a first build (about 20 min)"
    )
    args = parser.parse_args()
    if args.first:
        first_build()
    no_change_rebuild()
    failing_cell()


if __name__ == "__main__":
    main()
