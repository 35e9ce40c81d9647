"""Shared test fixtures: the book's notebooks, and a view of Ray's processes on this machine."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from helpers import ledger

ROOT = Path(__file__).resolve().parent.parent
TOOLS = Path(sys.executable).parent  # the environment's commands: jupyter-book, ruff, linkchecker, ...
# The last three: Ray's Java workers, RayDP's app master and the Spark driver's JVM.
RAY_PROCESS_NAMES = ("gcs_server", "raylet", "ray::", "default_worker", "dashboard", "agent",
                     "io.ray.runtime", "raydp", "SparkSubmit")


def toc_notebooks() -> list[Path]:
    """Every notebook the table of contents lists, in reading order."""
    return [path for path in ledger.toc_notebooks(ROOT / "_toc.yml") if path.exists()]


def ray_processes() -> set[int]:
    """Pids of every Ray process on the machine (ours or not: we only compare sets)."""
    found = set()
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        text = proc.info["name"] + " " + " ".join(proc.info["cmdline"] or [])
        if any(name in text for name in RAY_PROCESS_NAMES) and "ray" in text:
            found.add(proc.pid)
    return found


def shm_files() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def wait_until_gone(pids: set[int], timeout: float = 30) -> set[int]:
    """Wait for the processes to exit; return those still alive."""
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE}
        time.sleep(0.5)
    return alive


@pytest.fixture
def no_leftovers():
    """Fail the test if it leaves a Ray process or a /dev/shm file behind."""
    before_pids, before_shm = ray_processes(), shm_files()
    yield
    left = wait_until_gone(ray_processes() - before_pids)
    assert not left, f"Ray processes left running: {sorted(left)}"
    assert shm_files() <= before_shm, f"/dev/shm files left: {sorted(shm_files() - before_shm)}"


@pytest.fixture(scope="module")
def running_cluster():
    """A loopback cluster started by another process, as a reader's own cluster would be.

    Yields its address; the token it demands is put in this process's
    environment, where a notebook's kernel inherits it.
    """
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "serve_cluster.py")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, **auth},
    )
    try:
        started = json.loads(server.stdout.readline())
    except json.JSONDecodeError:
        server.kill()
        pytest.fail("serve_cluster.py did not print its address")
    saved = {k: os.environ.get(k) for k in auth}
    os.environ.update(auth)
    yield started
    os.environ.update({k: v for k, v in saved.items() if v is not None})
    for key in [k for k, v in saved.items() if v is None]:
        os.environ.pop(key)
    server.stdin.close()  # the server stops its cluster when its input closes
    server.wait(timeout=120)
