"""Every notebook runs top to bottom, in smoke size, on a cluster of separate
(simulated) machines, and its claims hold there.

At the book's own size, on a cluster of its own, each notebook runs once more: in the
book build, whose records tests/test_book.py checks. Those two are every execution of a
test run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile

import nbformat
import pytest
from conftest import ROOT, check_records, toc_notebooks, wait_until_gone
from listeners import ListenerSampler

from booktools.run import NotebookFailed, declared_parameters, execute
from helpers.gpu import visible_gpus
from helpers.machines import SimulatedCluster, unavailable_reason
from helpers.results import records_in

NOTEBOOKS = toc_notebooks()
RUN_TIMEOUT_S = 1500


def test_the_book_has_notebooks():
    assert NOTEBOOKS, "_toc.yml lists no notebook"


def gpu_path(notebook) -> dict | None:
    """What the chapter does on a GPU and the claim that says the GPU did it; None for
    chapters that declare no GPU path (tests/test_repository.py lists them and their
    reasons)."""
    return (
        nbformat.read(notebook, as_version=4)
        .metadata["ray_library_patterns"]
        .get("gpu")
    )


def gpu_unavailable_reason() -> str | None:
    """Why the GPU variants cannot run here, or None."""
    found = visible_gpus()
    if found.count == 0:
        return f"gpu variant: {found}"
    import torch

    if not torch.cuda.is_available():
        return (
            f"gpu variant: {found}, "
            f"but this environment's torch {torch.__version__} has no CUDA; "
            "install a CUDA build of torch, "
            "or run scripts/gpu-kit and scripts/gpu-check"
        )
    return None


@pytest.mark.notebook
@pytest.mark.parametrize(
    "notebook", [n for n in NOTEBOOKS if gpu_path(n)], ids=lambda p: p.stem
)
def test_notebook_gpu_variant(notebook, tmp_path, no_leftovers):
    if reason := gpu_unavailable_reason():
        pytest.skip(reason)
    try:
        result = execute(
            notebook, tmp_path / notebook.name, {"smoke": True, "use_gpu": True}
        )
    except NotebookFailed as error:
        pytest.fail(str(error), pytrace=False)
    check_records(notebook, result.records)
    # Checked, not "not checked": the GPU did the work.
    claim = gpu_path(notebook)["claim"]
    assert any(c["name"] == claim and c["holds"] for c in result.claims), (
        f"{notebook.name}: {claim!r} not checked"
    )


@pytest.fixture(scope="module")
def machines():
    """A head (2 CPUs) and two worker nodes (1 CPU each) that share only a network and
    one folder."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no simulated machines here: {reason}")
    # Not under /tmp: each worker node has a /tmp of its own.
    storage = tempfile.mkdtemp(prefix="ray-library-patterns-shared-", dir="/var/tmp")
    cluster = SimulatedCluster(storage)
    processes: set[int] = set()
    try:
        cluster.start()
        yield cluster, storage
        processes = cluster.processes()
    finally:
        cluster.stop()
        shutil.rmtree(storage, ignore_errors=True)
    assert not wait_until_gone(processes), "processes outlived the simulated machines"


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_on_separate_machines(notebook, machines, tmp_path):
    """The whole book again, joined to a cluster it did not start, whose nodes are
    separate machines."""
    cluster, storage = machines
    parameters = {"smoke": True, "ray_address": cluster.address}
    if "storage_path" in declared_parameters(notebook):
        parameters["storage_path"] = storage
    output = tmp_path / notebook.name
    command = [sys.executable, "-m", "booktools.run", str(notebook), "-o", str(output)]
    for name, value in parameters.items():
        command += ["-p", name, json.dumps(value)]
    try:
        with ListenerSampler() as sockets:
            done = cluster.run(
                command, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
            )
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"{notebook.name} ran over {RUN_TIMEOUT_S} s on the simulated machines"
        )
    if done.returncode != 0:
        pytest.fail(done.stderr[-3000:], pytrace=False)
    # The sampler saw the notebook's kernel, and nothing it or the cluster opened is
    # reachable from outside the machines' network (Ray's worker nodes bind wildcards,
    # which reach only lo).
    assert any("ipykernel" in s.process for s in sockets.seen), (
        "no kernel socket was sampled"
    )
    assert not sockets.reachable, (
        f"listening beyond the machines' network: {sockets.reachable}"
    )
    executed = nbformat.read(output, as_version=4)
    check_records(notebook, records_in(executed))
    printed = "".join(
        o.get("text", "") for cell in executed.cells for o in cell.get("outputs", [])
    )
    assert f"LiveCluster({cluster.address}, joined)" in printed
    assert re.search(
        rf"^total\s+{len(cluster.node_addresses)} nodes", printed, re.MULTILINE
    )
    # The notebook only disconnected: every node is still there, and it left nothing
    # running.
    after = cluster.wait_until_idle()
    assert after["nodes"] == cluster.node_addresses, (
        f"nodes after the run: {after['nodes']}"
    )
    assert after["idle"], f"{notebook.name} left behind: {after}"
