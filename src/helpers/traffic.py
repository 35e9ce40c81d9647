"""Who carried the bytes of an exchange: Ray's connections, the library's own, or the
object store.

Chapters 10, 20 and 30 count one exchange each this way, one chapter for each level,
and the level pages show their figures. Two counts are taken around a block:

* TCP: every connection in every network of the cluster, with the bytes it received
  (Linux's ``ss``, from iproute2), before and after. A connection to an address where
  Ray serves (the GCS, a raylet, an agent, a worker's or the driver's RPC server) is
  Ray's: it carries Ray's control traffic (leases, scheduling, heartbeats, metrics, the
  object directory) and the arguments and results small enough to travel inside a
  call. Any other connection of a Ray worker process is the library's own.
* The object store: the bytes each node's store created, puts and copies pulled from
  other nodes alike (:func:`helpers.store.store_traffic`). A copy between nodes travels
  on the object managers' connection; it is counted once, here.

Each byte on a connection is counted once, by the socket that received it; a store's
bytes are counted where they were created. Left out or misplaced: a connection opened
and closed inside the block, one of a worker that died before the block ended, the
driver's own connections to anything but Ray (Jupyter's, say), and the bytes Ray moves
outside its servers (a direct tensor transport's, a spill worker's reads from remote
storage), which count as a worker's own.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Collection, Iterator
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
# A connection in one network (its namespace's inode): the bytes received, the pid.
Connections = dict[tuple[int, Connection], tuple[int, int]]

CARRIERS = {
    "ray": "Ray's connections",
    "library": "the library's own connections",
    "store": "the object store",
}
NO_SS = "counting bytes per connection needs Linux's ss on every node"


@dataclass
class Carried:
    """Bytes each carrier took while the block ran; all None where they could not be
    counted, with the reason in ``unavailable``."""

    ray: int | None = None
    library: int | None = None
    store: int | None = None
    unavailable: str = ""

    def taken(self) -> dict[str, int]:
        """Each carrier's bytes, by its key in :data:`CARRIERS`."""
        return {carrier: getattr(self, carrier) or 0 for carrier in CARRIERS}


@contextlib.contextmanager
def bytes_carried() -> Iterator[Carried]:
    """Count the bytes that Ray's connections, the library's connections and the object
    stores of all nodes took while the block runs; filled in when it ends."""
    carried = Carried()
    # The store's counters are read outside the connections' window, so that asking
    # the raylets for them is not counted as Ray's traffic.
    with store_traffic() as stored:
        before, networks = _connections_everywhere()
        yield carried
        after, _ = _connections_everywhere()
    if before is None or after is None:
        carried.unavailable = NO_SS
        return
    carried.ray, carried.library = attribute(before, after, *_rays_part(networks))
    carried.store = sum(nbytes for _, nbytes in stored.values())


def attribute(
    before: Connections,
    after: Connections,
    ray_serves: set[Address],
    object_managers: set[Address],
    workers: set[tuple[int, int]],
) -> tuple[int, int]:
    """The bytes received between ``before`` and ``after`` by Ray's connections (one
    end where Ray serves, the object managers left out) and by the connections of its
    worker processes, given as (network, pid)."""
    ray_bytes = library_bytes = 0
    for (network, connection), (received, pid) in after.items():
        # A connection that closed has no counters left: it adds nothing, not minus all.
        received = max(0, received - before.get((network, connection), (0, 0))[0])
        if object_managers.intersection(connection):
            continue  # an object copied between nodes: the store's count has it
        if ray_serves.intersection(connection):
            ray_bytes += received
        elif (network, pid) in workers:
            library_bytes += received
    return ray_bytes, library_bytes


def plot_bytes_carried(cases: dict[str, Carried], title: str) -> Axes:
    """A row of bars for each carrier, one bar in it for each case, in MiB."""
    ax = figure(title, "MiB received on connections, or created in the stores", "by")
    height = 0.8 / len(cases)
    for k, (case, carried) in enumerate(cases.items()):
        if carried.unavailable:
            continue  # said across the plot, below
        rows = [i + k * height for i in range(len(CARRIERS))]
        mib = [nbytes / 2**20 for nbytes in carried.taken().values()]
        bars = ax.barh(rows, mib, height=height, label=case)
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


def _connections_everywhere() -> tuple[Connections | None, dict[str, int]]:
    """Every TCP connection in the networks of the cluster's nodes (None where a node
    has no ``ss``), and each node's network. Nodes may share one network (a local
    cluster, the simulated machines): each network is read once."""
    here = ray.get_runtime_context().get_node_id()
    networks, found = {}, {}
    # This node first: its network is read here, without a task.
    for node in sorted(ray.nodes(), key=lambda n: n["NodeID"] != here):
        node_id = node["NodeID"]
        if not node["Alive"]:
            continue
        read = set(networks.values())
        if node_id == here:
            network, connections = connections_in_this_network(read)
        else:
            on_node = NodeAffinitySchedulingStrategy(node_id, soft=False)
            network, connections = ray.get(
                _connections_there.options(scheduling_strategy=on_node).remote(read)
            )
        if connections is None:
            return None, networks
        networks[node_id] = network
        found.update({(network, c): value for c, value in connections.items()})
    return found, networks


@ray.remote(num_cpus=0)
def _connections_there(
    read: set[int],
) -> tuple[int, dict[Connection, tuple[int, int]] | None]:
    return connections_in_this_network(read)


def connections_in_this_network(
    read: Collection[int] = (),
) -> tuple[int, dict[Connection, tuple[int, int]] | None]:
    """This process's network namespace, and every TCP connection in it that has
    received bytes, with the bytes and the pid that holds it (0 where ``ss`` may not
    say): none if the network is among those ``read`` already, None without ``ss``."""
    network = os.stat("/proc/self/ns/net").st_ino
    if network in read:
        return network, {}
    if shutil.which("ss") is None:
        return network, None
    listing = subprocess.run(
        ["ss", "--tcp", "--numeric", "--info", "--processes", "--no-header"]
        + ["state", "connected"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return network, parse_ss(listing)


def parse_ss(listing: str) -> dict[Connection, tuple[int, int]]:
    """``ss --tcp --numeric --info --processes`` read into (local, peer) -> (bytes
    received, pid), for the connections that have received bytes: a line for each
    connection, its counters on the next, indented (blank for one that is closing)."""
    found = {}
    for line, info in re.findall(r"^(\S.*)\n[ \t]+(.*)$", listing, re.MULTILINE):
        received = re.search(r"\bbytes_received:(\d+)", info)
        if not received:
            continue
        # The process column last, if any: a process's name may hold spaces.
        line, _, users = line.partition(" users:(")
        local, peer = line.split()[-2:]
        pid = re.search(r"\bpid=(\d+)", users)
        found[_address(local), _address(peer)] = (
            int(received.group(1)),
            int(pid.group(1)) if pid else 0,
        )
    return found


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    host = host.strip("[]").removeprefix("::ffff:")
    return host, int(port)


def _rays_part(
    networks: dict[str, int],
) -> tuple[set[Address], set[Address], set[tuple[int, int]]]:
    """Where Ray serves (its object managers apart), where its object managers serve,
    and its worker processes by (network, pid), drivers left out."""
    gcs_host, _, gcs_port = ray.get_runtime_context().gcs_address.rpartition(":")
    serves = {(gcs_host, int(gcs_port))}
    object_managers, workers = set(), set()
    for node in ray.nodes():
        if not node["Alive"] or node["NodeID"] not in networks:
            continue
        address = node["NodeManagerAddress"]
        object_managers.add((address, node["ObjectManagerPort"]))
        serves |= {
            (address, port)
            for key, port in node.items()
            if key.endswith("Port") and key != "ObjectManagerPort" and port
        }
        for ip, port, pid, is_driver in processes_of_ray(
            address, node["NodeManagerPort"]
        ):
            serves.add((ip, port))
            if not is_driver:
                workers.add((networks[node["NodeID"]], pid))
    return serves, object_managers, workers
