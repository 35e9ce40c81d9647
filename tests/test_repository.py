"""The repository's own rules: clean notebooks, one source of dependencies, a book that builds."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml
from conftest import ROOT, toc_notebooks

from helpers.lines import integration_lines
from helpers.run import declared_parameters

ALL_NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
COMMON_PARAMETERS = {"ray_address", "use_gpu", "smoke"}


def test_every_notebook_is_in_the_book():
    assert set(ALL_NOTEBOOKS) == set(toc_notebooks())


@pytest.mark.parametrize("notebook", ALL_NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_committed_without_outputs(notebook):
    cells = nbformat.read(notebook, as_version=4).cells
    with_outputs = [i for i, c in enumerate(cells)
                    if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not with_outputs, (f"{notebook.name}: cells {with_outputs} carry outputs; "
                              "clear them before committing")


@pytest.mark.parametrize("notebook", ALL_NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_take_the_common_parameters(notebook):
    missing = COMMON_PARAMETERS - set(declared_parameters(notebook))
    assert not missing, f"{notebook.name}: its parameters cell lacks {sorted(missing)}"


# Chapters 1x, 2x and 3x show one level each; 0x gets started, 4x compares the levels.
@pytest.mark.parametrize("notebook", [n for n in ALL_NOTEBOOKS if n.stem[0] in "123"],
                         ids=lambda p: p.stem)
def test_level_notebooks_mark_their_integration_code(notebook):
    # The level pages count these cells; a chapter without them has no cost to show.
    assert integration_lines(notebook) > 0


def test_conda_environment_leaves_python_packages_to_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    environment = (ROOT / "environment.yml").read_text()
    conda = yaml.safe_load(environment)["dependencies"]
    assert all(isinstance(d, str) for d in conda), "environment.yml must install nothing through pip"
    assert "make book VENV=$CONDA_PREFIX" in environment, "environment.yml must say how to finish"
    python = next(d for d in conda if isinstance(d, str) and d.startswith("python="))
    assert project["requires-python"] == f">={python[7:]},<3.{int(python[9:]) + 1}"
    conda_names = {d.split("=")[0] for d in conda if isinstance(d, str)}
    python_names = {r.split("[")[0].split("=")[0].lower()
                    for r in project["dependencies"]}
    assert not conda_names & python_names, "a Python package is pinned in both files"


def test_ci_runs_the_readme_test_command():
    assert "exec make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make book" in readme


@pytest.mark.book
def test_the_book_builds_with_warnings_as_errors():
    build = subprocess.run(
        [str(Path(sys.executable).parent / "jupyter-book"), "build", str(ROOT), "--all",
         "-W", "-n", "--keep-going"],
        capture_output=True, text=True, cwd=ROOT, timeout=1800,
    )
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    for notebook in toc_notebooks():
        page = ROOT / "_build" / "html" / notebook.relative_to(ROOT).with_suffix(".html")
        assert page.exists(), f"{page} was not built"
    # The ledger is read last, so it sees this build's execution of every notebook.
    ledger = (ROOT / "_build" / "html" / "book" / "ledger.html").read_text(encoding="utf-8")
    count = len(toc_notebooks())
    assert f"{count} of {count} notebooks executed" in ledger and ", 0 failed." in ledger
