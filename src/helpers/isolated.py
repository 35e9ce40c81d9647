"""Run a function on a cluster whose nodes have distinct addresses, in a private
network.

Some libraries tell machines apart by address: elastic Horovod, for one,
counts hosts by address and gives up on a host, not a process, when a worker
dies (chapter 11). Every node of our local cluster has the address 127.0.0.1,
so to such a library it is one machine. The simulated machines of
:mod:`helpers.machines` have an address each (127.0.0.1, .2, .3, ...) in a
network of their own, which nothing outside can reach. ``run_isolated`` starts
such a cluster, calls the function there as a driver on its head node, and
brings the return value back pickled:

    outcome = run_isolated(my_function)      # my_function() runs on the cluster
    outcome.value, outcome.node_addresses, outcome.interfaces

Run as ``python -m helpers.isolated ADDRESS PAYLOAD RESULT``, it is that driver.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import cloudpickle

from helpers.machines import SimulatedCluster, unavailable_reason

__all__ = ["IsolatedRun", "run_isolated", "unavailable_reason"]


@dataclass(frozen=True)
class IsolatedRun:
    """What came back from a function run on an isolated multi-address cluster."""

    value: Any
    node_addresses: list[str]  # the live nodes' addresses, as Ray reports them
    interfaces: list[str]  # the network interfaces inside the namespace
    wall_s: float  # cluster start, the function, and shutdown


def run_isolated(
    function: Callable[[], Any],
    *,
    nodes: int = 3,
    cpus_per_node: int = 1,
    timeout_s: float = 300,
) -> IsolatedRun:
    """Start ``nodes`` nodes of ``cpus_per_node`` CPUs, each at its own address; call
    ``function()`` there.

    The cluster is stopped before this returns, also when the function fails;
    a run longer than ``timeout_s`` is stopped, with everything it started.
    """
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(f"Cannot run an isolated cluster here: {reason}.")
    start = time.perf_counter()
    # The function's files, and the storage every node shares: none of the nodes'
    # private /tmp.
    with tempfile.TemporaryDirectory(
        prefix="isolated-cluster-", dir="/var/tmp"
    ) as folder:
        payload, result = Path(folder, "payload.pkl"), Path(folder, "result.pkl")
        payload.write_bytes(cloudpickle.dumps(function))
        machines = SimulatedCluster(
            folder, head_cpus=cpus_per_node, worker_cpus=(cpus_per_node,) * (nodes - 1)
        )
        with machines:
            # A function is pickled by reference to its module: the driver imports what
            # we can.
            environment = {
                **machines.driver_environment(),
                "PYTHONPATH": os.pathsep.join(sys.path),
            }
            try:
                done = machines.run(
                    [
                        sys.executable,
                        "-m",
                        "helpers.isolated",
                        machines.address,
                        str(payload),
                        str(result),
                    ],
                    env=environment,
                    capture_output=True,
                    text=True,
                    timeout=timeout_s,
                )
            except subprocess.TimeoutExpired:
                raise TimeoutError(
                    f"The isolated cluster run took over {timeout_s:.0f} s and was "
                    "stopped."
                ) from None
        if done.returncode != 0 or not result.exists():
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
            raise RuntimeError(
                f"The isolated cluster run failed (exit {done.returncode}):\n{tail}"
            )
        value, node_addresses, interfaces = cloudpickle.loads(result.read_bytes())
    return IsolatedRun(value, node_addresses, interfaces, time.perf_counter() - start)


def _drive(address: str, payload: Path, result: Path) -> None:
    """The driver inside the namespace: join, call the function, write what came
    back."""
    import psutil

    from helpers.cluster import start_or_join

    function = cloudpickle.loads(payload.read_bytes())
    cluster = start_or_join(address, quiet=True)
    try:
        value = function()
        node_addresses = sorted(n.address for n in cluster.nodes())
        result.write_bytes(
            cloudpickle.dumps((value, node_addresses, sorted(psutil.net_if_addrs())))
        )
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    _drive(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
