"""Every notebook in the book runs top to bottom, in smoke size, and its claims hold."""

from __future__ import annotations

import re

import pytest
from conftest import toc_notebooks

import helpers
from helpers.gpu import cuda_gpu_count
from helpers.run import ExecutedNotebook, NotebookFailed, execute

NOTEBOOKS = toc_notebooks()


def run_checked(notebook, output, parameters) -> ExecutedNotebook:
    """Execute, and fail the test with the notebook's own message on any error."""
    try:
        result = execute(notebook, output, parameters)
    except NotebookFailed as error:
        pytest.fail(str(error), pytrace=False)
    assert result.claims, f"{notebook.name} checked no claim"
    assert result.measurements, f"{notebook.name} recorded no measurement"
    assert all(c["holds"] for c in result.claims)  # a false claim has already raised
    return result


def test_the_book_has_notebooks():
    assert NOTEBOOKS, "_toc.yml lists no notebook"


@pytest.mark.notebook
@pytest.mark.parametrize("variant", ["cpu", "gpu"])
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook(notebook, variant, tmp_path, no_leftovers):
    if variant == "gpu" and cuda_gpu_count() == 0:
        pytest.skip("gpu variant: no CUDA GPU is visible on this machine")
    run_checked(notebook, tmp_path / notebook.name,
                {"smoke": True, "use_gpu": variant == "gpu"})


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_joins_a_running_cluster(notebook, running_cluster, tmp_path, monkeypatch):
    """The whole book again, on a cluster it did not start: the stand-in for a reader's own."""
    result = run_checked(notebook, tmp_path / notebook.name,
                         {"smoke": True, "ray_address": running_cluster["address"]})
    printed = "".join(output.get("text", "") for cell in result.notebook["cells"]
                      for output in cell.get("outputs", []))
    assert f"LiveCluster({running_cluster['address']}, joined)" in printed
    assert re.search(rf"^total\s+{running_cluster['nodes']} nodes", printed, re.MULTILINE)
    # The notebook's shutdown only disconnected: the cluster is still there,
    # and RAY_ADDRESS finds it when no address is given.
    monkeypatch.setenv("RAY_ADDRESS", running_cluster["address"])
    rejoined = helpers.start_or_join(None, quiet=True)
    try:
        assert not rejoined.started_here
        assert len(rejoined.nodes()) == running_cluster["nodes"]
    finally:
        rejoined.shutdown()
