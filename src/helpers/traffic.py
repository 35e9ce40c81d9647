"""Who carried the bytes of an exchange: Ray's connections, the library's own, or the
object store.

Chapters 10, 20 and 30 count one exchange each this way, one chapter for each level,
and the level pages show their figures. Two counts are taken before and after a block:

* TCP: every connection on every node, with the bytes it received (Linux's ``ss``,
  from iproute2). A connection to an address where Ray serves (the GCS, a raylet, an
  agent, a worker's or the driver's RPC server) is Ray's: it carries Ray's control
  traffic (leases, scheduling, heartbeats, the object directory) and the arguments and
  results small enough to travel inside a call. Any other connection of a worker
  process is the library's own.
* The object store: the bytes each node's store created, puts and copies pulled from
  other nodes alike (:func:`helpers.store.store_traffic`). A copy between nodes travels
  on the object manager's connection; it is counted once, as the store's.

Each byte is counted once, by the socket that received it. A connection opened and
closed inside the block is missed, and the driver's own connections to anything but
Ray (Jupyter's, say) are left out.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import ray
from matplotlib.axes import Axes
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from helpers.internals import processes_of_ray
from helpers.plots import figure
from helpers.store import store_traffic

Address = tuple[str, int]
# A connection, as one of its ends sees it: (this end, the other end).
Connection = tuple[Address, Address]

CARRIERS = {
    "ray": "Ray's connections",
    "library": "the library's own connections",
    "store": "the object store",
}


@dataclass
class Carried:
    """Bytes each carrier took while the block ran; all None where ``ss`` is missing,
    with the reason in ``unavailable``."""

    ray: int | None = None
    library: int | None = None
    store: int | None = None
    unavailable: str = ""

    def mib(self) -> dict[str, float]:
        """Each carrier's bytes in MiB, by its name in :data:`CARRIERS`."""
        return {CARRIERS[k]: (getattr(self, k) or 0) / 2**20 for k in CARRIERS}


@contextlib.contextmanager
def bytes_carried() -> Iterator[Carried]:
    """Count the bytes that Ray's connections, the library's connections and the object
    stores of all nodes took while the block runs; filled in when it ends."""
    carried = Carried()
    if shutil.which("ss") is None:
        carried.unavailable = "counting bytes per connection needs Linux's ss"
        yield carried
        return
    before = _connections_on_every_machine()
    with store_traffic() as stored:
        yield carried
    after = _connections_on_every_machine()
    ray_served, store_served, worker_pids = _rays_addresses()
    carried.ray = carried.library = 0
    for (machine, connection), (received, pid) in after.items():
        received -= before.get((machine, connection), (0, pid))[0]
        if store_served.intersection(connection):
            continue  # an object copied between nodes: the store's count has it
        if ray_served.intersection(connection):
            carried.ray += received
        elif (machine, pid) in worker_pids:
            carried.library += received
    carried.store = sum(nbytes for _, nbytes in stored.values())


def plot_bytes_carried(cases: dict[str, Carried], title: str) -> Axes:
    """A row of bars for each carrier, one bar in it for each case: the MiB it took."""
    ax = figure(title, "bytes received (MiB)", "carried by")
    height = 0.8 / len(cases)
    for k, (case, carried) in enumerate(cases.items()):
        if carried.unavailable:
            continue  # said across the plot, below
        rows = [i + k * height for i in range(len(CARRIERS))]
        bars = ax.barh(rows, list(carried.mib().values()), height=height, label=case)
        ax.bar_label(bars, fmt="%.2f", padding=3)
    ax.set_yticks(
        [i + (len(cases) - 1) * height / 2 for i in range(len(CARRIERS))],
        list(CARRIERS.values()),
    )
    ax.invert_yaxis()
    ax.set_xlim(right=ax.get_xlim()[1] * 1.15)  # room for the labels
    for reason in {c.unavailable for c in cases.values() if c.unavailable}:
        ax.text(0.5, 0.5, f"not counted: {reason}", transform=ax.transAxes, ha="center")
    if ax.containers:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2))
    return ax


def _connections_on_every_machine() -> dict[tuple[str, Connection], tuple[int, int]]:
    """Every TCP connection on the cluster's machines, by (machine, connection): the
    bytes it received and the process that holds it. Nodes that share an address
    share a machine here (a local cluster), so ``ss`` runs once per address."""
    here = ray.util.get_node_ip_address()
    node_by_address = {
        n["NodeManagerAddress"]: n["NodeID"] for n in ray.nodes() if n["Alive"]
    }
    found = {}
    for address, node_id in node_by_address.items():
        if address == here:
            connections = connections_on_this_machine()
        else:
            on_node = NodeAffinitySchedulingStrategy(node_id, soft=False)
            connections = ray.get(
                _connections_there.options(scheduling_strategy=on_node).remote()
            )
        found.update({(address, c): value for c, value in connections.items()})
    return found


@ray.remote(num_cpus=0)
def _connections_there() -> dict[Connection, tuple[int, int]]:
    return connections_on_this_machine()


def connections_on_this_machine() -> dict[Connection, tuple[int, int]]:
    """Every TCP connection this machine's network holds: the bytes each received, and
    the pid that holds it (0 where ``ss`` may not say)."""
    listing = subprocess.run(
        ["ss", "--tcp", "--numeric", "--info", "--processes", "--no-header"]
        + ["state", "connected"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return parse_ss(listing)


def parse_ss(listing: str) -> dict[Connection, tuple[int, int]]:
    """``ss --tcp --numeric --info --processes`` read into (local, peer) -> (bytes
    received, pid): a line per connection, its counters on the next, indented (and
    blank for a connection that is closing)."""
    found = {}
    for line, info in re.findall(r"^(\S.*)\n[ \t]+(.*)$", listing, re.MULTILINE):
        fields = line.split()
        received = re.search(r"\bbytes_received:(\d+)", info)
        pid = re.search(r"\bpid=(\d+)", line)
        ends = fields[-3:-1] if fields[-1].startswith("users:") else fields[-2:]
        found[_address(ends[0]), _address(ends[1])] = (
            int(received.group(1)) if received else 0,
            int(pid.group(1)) if pid else 0,
        )
    return found


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    host = host.strip("[]").removeprefix("::ffff:")
    return host, int(port)


def _rays_addresses() -> tuple[set[Address], set[Address], set[tuple[str, int]]]:
    """Where Ray serves (its object managers apart), and its worker processes by
    (machine, pid), drivers left out."""
    served = set()
    gcs_host, _, gcs_port = ray.get_runtime_context().gcs_address.rpartition(":")
    served.add((gcs_host, int(gcs_port)))
    object_managers, workers = set(), set()
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        address = node["NodeManagerAddress"]
        object_managers.add((address, node["ObjectManagerPort"]))
        served |= {
            (address, port)
            for key, port in node.items()
            if key.endswith("Port") and key != "ObjectManagerPort" and port
        }
        for ip, port, pid, is_driver in processes_of_ray(
            address, node["NodeManagerPort"]
        ):
            served.add((ip, port))
            if not is_driver:
                workers.add((address, pid))
    return served, object_managers, workers
