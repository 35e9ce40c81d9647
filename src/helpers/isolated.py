"""Run a function on a cluster whose nodes have distinct addresses, in a private network.

Some libraries tell machines apart by address: elastic Horovod, for one,
counts hosts by address and gives up on a host, not a process, when a worker
dies. Every node of our local cluster has the address 127.0.0.1, so to such a
library it is one machine. Ray can give each node an address of its own
(127.0.0.2, 127.0.0.3, ...), but a node on such an address listens on every
interface, which our loopback-only rule forbids.

So we run that cluster inside a private network namespace (Linux; no
privileges needed): a network of its own with no interface but loopback,
which nothing outside can reach. The function runs there in a child process,
on the cluster, and its return value comes back pickled.

    outcome = run_isolated(my_function)      # my_function() runs on the cluster
    outcome.value, outcome.node_addresses, outcome.interfaces

Run as ``python -m helpers.isolated PAYLOAD RESULT``, it is that child.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from ray import cloudpickle

ADDRESSES = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
NAMESPACE = ["unshare", "--user", "--map-root-user", "--net", "--"]


@dataclass(frozen=True)
class IsolatedRun:
    """What came back from a function run on an isolated multi-address cluster."""

    value: Any
    node_addresses: list[str]  # the live nodes' addresses, as Ray reports them
    interfaces: list[str]  # the network interfaces inside the namespace
    wall_s: float  # cluster start, the function, and shutdown


def unavailable_reason() -> str | None:
    """Why this machine cannot run an isolated cluster, or None when it can."""
    if sys.platform != "linux":
        return "private network namespaces are a Linux feature"
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return f"the `{tool}` command is not installed"
    probe = subprocess.run([*NAMESPACE, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"this machine refuses private network namespaces ({probe.stderr.strip()})"
    return None


def run_isolated(function: Callable[[], Any], *, addresses: tuple[str, ...] = ADDRESSES,
                 cpus_per_node: int = 1, timeout_s: float = 300) -> IsolatedRun:
    """Start a cluster of one node per address in a private network, call ``function()`` there.

    The cluster is stopped before this returns, also when the function fails;
    a run longer than ``timeout_s`` is killed, with everything it started.
    """
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(f"Cannot run an isolated cluster here: {reason}.")
    with tempfile.TemporaryDirectory(prefix="isolated-cluster-") as folder:
        payload, result = Path(folder, "payload.pkl"), Path(folder, "result.pkl")
        payload.write_bytes(cloudpickle.dumps((function, addresses, cpus_per_node)))
        # The namespace starts with its loopback interface down.
        script = 'ip link set lo up && exec "$0" -m helpers.isolated "$1" "$2"'
        command = [*NAMESPACE, "sh", "-c", script, sys.executable, str(payload), str(result)]
        environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        # Functions are pickled by reference to their module: the child must import what we can.
        environment["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        start = time.perf_counter()
        child = subprocess.Popen(command, env=environment, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            output, _ = child.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_tree(child.pid)
            child.communicate()
            raise TimeoutError(f"The isolated cluster run took over {timeout_s:.0f} s and was "
                               "stopped.") from None
        if child.returncode != 0 or not result.exists():
            tail = "\n".join(output.splitlines()[-30:])
            raise RuntimeError(f"The isolated cluster run failed (exit {child.returncode}):\n{tail}")
        value, node_addresses, interfaces = cloudpickle.loads(result.read_bytes())
    return IsolatedRun(value, node_addresses, interfaces, time.perf_counter() - start)


def _kill_tree(pid: int) -> None:
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in family:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=10)


def _serve(payload: Path, result: Path) -> None:
    """The child: inside the namespace, start the cluster, call the function, stop the cluster."""
    import ray
    from ray.cluster_utils import Cluster

    from helpers.cluster import _advertise_loopback, _require_token

    function, addresses, cpus_per_node = cloudpickle.loads(payload.read_bytes())
    _advertise_loopback(True)
    _require_token()
    node_args = dict(num_cpus=cpus_per_node, object_store_memory=200 * 2**20)
    head, *others = addresses
    local = Cluster(initialize_head=True, shutdown_at_exit=True,
                    head_node_args=dict(node_args, node_ip_address=head, include_dashboard=False))
    try:
        for address in others:
            local.add_node(wait=False, node_ip_address=address, **node_args)
        local.wait_for_nodes()
        ray.init(address=local.address, _node_ip_address=head)
        value = function()
        node_addresses = sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"])
        interfaces = sorted(psutil.net_if_addrs())
        result.write_bytes(cloudpickle.dumps((value, node_addresses, interfaces)))
    finally:
        ray.shutdown()
        local.shutdown()


if __name__ == "__main__":
    _serve(Path(sys.argv[1]), Path(sys.argv[2]))
