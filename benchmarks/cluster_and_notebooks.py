"""Print what a live cluster costs on this machine, and how long each notebook takes.

    .venv/bin/python benchmarks/cluster_and_notebooks.py
        [--starts 3] [--no-notebooks] [--full]

Figures, not tests: this machine is shared and noisy, so nothing here passes
or fails. Targets (from the foundation issue), on 2 cores:
  * a head plus two worker nodes starts in <= 10 s and takes <= 1.5 GB RSS;
  * the simulated machines (helpers.machines: head + 2 workers) start in <= 15 s;
  * each notebook, in smoke size, executes in <= 30 s (median).

Under each notebook it lists the cells that ran longer than SLOW_CELL_S, and
whether each drew a progress bar. A reader should not wait that long in
silence: a loop gets a bar, a single long call a line saying what it waits
for. --full runs the notebooks at the sizes a reader gets, where this matters.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import psutil
import ray

import helpers
from booktools.run import execute
from helpers.machines import SimulatedCluster, unavailable_reason

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import toc_notebooks  # noqa: E402


def cluster_processes() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


def rss_by_kind(processes: list[psutil.Process]) -> dict[str, int]:
    """Resident memory of the cluster's processes, summed by process name."""
    totals: dict[str, int] = defaultdict(int)
    for proc in processes:
        try:
            totals[proc.name()] += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return dict(totals)


@ray.remote(num_cpus=1)
def node_id() -> str:
    return ray.get_runtime_context().get_node_id()


def measure_cluster(starts: int) -> None:
    seconds, rss_idle, rss_busy = [], [], []
    for _ in range(starts):
        start = time.perf_counter()
        cluster = helpers.start_or_join(None, worker_nodes=2, quiet=True)
        seconds.append(time.perf_counter() - start)
        rss_idle.append(rss_by_kind(cluster_processes()))
        ray.get(
            [node_id.options(scheduling_strategy="SPREAD").remote() for _ in range(6)]
        )
        rss_busy.append(rss_by_kind(cluster_processes()))
        cluster.shutdown()
    print(
        f"cluster start, head + 2 worker nodes ({starts} starts): "
        f"median {statistics.median(seconds):.1f} s, min {min(seconds):.1f} s, "
        f"max {max(seconds):.1f} s   (target <= 10 s)"
    )
    for label, samples in (
        ("just started", rss_idle),
        ("after a task per node", rss_busy),
    ):
        totals = [sum(s.values()) / 2**30 for s in samples]
        print(
            f"cluster RSS, {label}: median {statistics.median(totals):.2f} GB "
            f"(target <= 1.5 GB); by process, last start:"
        )
        for name, rss in sorted(samples[-1].items(), key=lambda kv: -kv[1]):
            print(f"    {name:<28} {rss / 2**20:7.0f} MB")


def measure_machines(starts: int) -> None:
    """The cluster of simulated machines the tests join: its start, and its memory
    beside the plain one."""
    seconds, rss = [], []
    with tempfile.TemporaryDirectory(dir="/var/tmp") as storage:
        for _ in range(starts):
            with SimulatedCluster(storage) as machines:
                seconds.append(machines.start_s)
                rss.append(
                    sum(
                        rss_by_kind(
                            [psutil.Process(p) for p in machines.processes()]
                        ).values()
                    )
                )
    print(
        f"simulated machines start, head + 2 worker nodes ({starts} starts): "
        f"median {statistics.median(seconds):.1f} s, min {min(seconds):.1f} s, "
        f"max {max(seconds):.1f} s   (target <= 15 s); RSS just started: "
        f"median {statistics.median(rss) / 2**30:.2f} GB"
    )


SLOW_CELL_S = 10
BAR = re.compile(
    r"\d+%\||\[Stage \d+:"
)  # tqdm's text bar (tqdm_ray's too), Spark's console bar


def slow_cells(notebook: dict) -> list[str]:
    """A line for each cell that ran longer than SLOW_CELL_S: its time, whether it drew
    a bar, its start."""
    lines = []
    for cell in notebook["cells"]:
        seconds = cell.get("metadata", {}).get("papermill", {}).get("duration") or 0
        if seconds > SLOW_CELL_S:
            printed = "".join(
                output.get("text", "") for output in cell.get("outputs", [])
            )
            code = [
                line
                for line in cell["source"].splitlines()
                if line.strip() and not line.startswith("#")
            ]
            lines.append(
                f"{seconds:5.1f} s  {'bar' if BAR.search(printed) else 'no bar'}  "
                f"{cell.get('id')}: {code[0][:60] if code else ''}"
            )
    return lines


def measure_notebooks(full: bool) -> None:
    times = {}
    with tempfile.TemporaryDirectory() as out:
        for notebook in toc_notebooks():
            result = execute(
                notebook, Path(out) / notebook.name, {} if full else {"smoke": True}
            )
            times[notebook.stem] = result.seconds
            print(f"notebook {notebook.stem:<32} {result.seconds:6.1f} s")
            for line in slow_cells(result.notebook):
                print(f"    {line}")
    size = "full size" if full else "smoke size; target <= 30 s"
    print(
        f"notebooks: median {statistics.median(times.values()):.1f} s ({size}), "
        f"total {sum(times.values()):.1f} s for {len(times)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--no-notebooks", action="store_true")
    parser.add_argument(
        "--full",
        action="store_true",
        help="the notebooks at their own sizes, not smoke",
    )
    args = parser.parse_args()
    print(
        f"machine: {psutil.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GB, "
        f"Ray {ray.__version__}"
    )
    measure_cluster(args.starts)
    reason = unavailable_reason()
    if reason:
        print(f"simulated machines: not measured, {reason}")
    else:
        measure_machines(args.starts)
    if not args.no_notebooks:
        measure_notebooks(args.full)


if __name__ == "__main__":
    main()
