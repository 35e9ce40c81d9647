"""Shared test fixtures: the book's notebooks, their records, and the Ray processes the
tests start."""

from __future__ import annotations

import ctypes
import os
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest

import helpers
from booktools import ledger
from helpers.results import declared_claims, unaccounted_claims

ROOT = Path(__file__).resolve().parent.parent
TOOLS = Path(
    sys.executable
).parent  # the environment's commands: jupyter-book, ruff, linkchecker, ...
# The last three: Ray's Java workers, RayDP's app master and the Spark driver's JVM.
RAY_PROCESS_NAMES = (
    "gcs_server",
    "raylet",
    "ray::",
    "default_worker",
    "dashboard",
    "agent",
    "io.ray.runtime",
    "raydp",
    "SparkSubmit",
)


def toc_notebooks() -> list[Path]:
    """Every notebook the table of contents lists, in reading order."""
    return [path for path in ledger.toc_notebooks(ROOT / "_toc.yml") if path.exists()]


def _adopt_orphans() -> None:
    """Make this process the parent of every orphan among its descendants (Linux).

    A kernel that exits leaves the Ray processes it started to whoever
    adopts orphans; with this, that is the test run, so that the leftover
    check can look at what the tests started and nothing else on the machine.
    """
    if sys.platform == "linux":
        PR_SET_CHILD_SUBREAPER = 36  # noqa: N806, from <linux/prctl.h>
        ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1)


_adopt_orphans()


def ray_processes() -> set[int]:
    """Pids of the Ray processes this test run started (and the orphans it adopted)."""
    found = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            text = proc.name() + " " + " ".join(proc.cmdline())
        except psutil.NoSuchProcess:
            continue
        if any(name in text for name in RAY_PROCESS_NAMES) and "ray" in text:
            found.add(proc.pid)
    return found


def describe(pids: set[int]) -> list[str]:
    """Each process as "pid name command line", for a message that says what was
    left."""
    found = []
    for pid in sorted(pids):
        try:
            proc = psutil.Process(pid)
            found.append(f"{pid} {proc.name()} {' '.join(proc.cmdline())[:200]}")
        except psutil.NoSuchProcess:
            found.append(f"{pid} (gone)")
    return found


def shm_files() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def wait_until_gone(pids: set[int], timeout: float = 30) -> set[int]:
    """Wait for the processes to exit; return those still alive."""
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if _running(p)}
        time.sleep(0.5)
    return alive


def _running(pid: int) -> bool:
    """False once the process has exited; collects it if it was ours (adopted or
    not)."""
    try:
        if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            return True
        os.waitpid(pid, os.WNOHANG)
    except (psutil.NoSuchProcess, ChildProcessError):
        pass
    return False


def check_records(notebook: Path, records: list[dict]) -> None:
    """A run's records: it measured something, accounted for every claim the notebook
    declares (checked, or not checked with a reason), and every claim it checked
    held."""
    name = notebook.name
    assert any(r["kind"] == "measurement" for r in records), (
        f"{name} recorded no measurement"
    )
    declared = declared_claims(nbformat.read(notebook, as_version=4))
    assert declared, f"{name} declares no claim in its metadata"
    wrong = {k: v for k, v in unaccounted_claims(declared, records).items() if v}
    assert not wrong, f"{name}: {wrong}"
    claims = [r for r in records if r["kind"] == "claim"]
    assert claims, f"{name} checked no claim"
    failed = [f"{c['name']}: {c['detail']}" for c in claims if not c["holds"]]
    assert not failed, f"{name}: claims failed: {failed}"


@pytest.fixture
def no_leftovers():
    """Fail the test if it leaves a Ray process or a /dev/shm file behind."""
    before_pids, before_shm = ray_processes(), shm_files()
    yield
    left = wait_until_gone(ray_processes() - before_pids)
    assert not left, f"Ray processes left running: {describe(left)}"
    assert shm_files() <= before_shm, (
        f"/dev/shm files left: {sorted(shm_files() - before_shm)}"
    )


@pytest.fixture
def cluster(no_leftovers):
    """A small local cluster (a head and one worker node, 1 CPU each), stopped after the
    test."""
    live = helpers.start_or_join(None, worker_nodes=1, quiet=True)
    yield live
    live.shutdown()
