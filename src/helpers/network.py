"""Which addresses a process listens on, and whether they are loopback only.

A Level 1 library brings its own network stack: Ray's token authentication
does not cover the sockets Horovod or Spark open. The notebooks check those
sockets the same way the tests check Ray's.

Used by chapters 10, 11, 12, 13, 24, 35, 60 and 61.
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import psutil
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

# What a socket bound to every interface of its machine shows as its address.
WILDCARDS = frozenset({"0.0.0.0", "::"})


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1, their IPv4-mapped forms, and "localhost"."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def listening_addresses(pid: int | None = None) -> set[tuple[str, int]]:
    """The (ip, port) pairs a process (this one by default) accepts connections on."""
    connections = psutil.Process(pid).net_connections("inet")
    return {
        (c.laddr.ip, c.laddr.port)
        for c in connections
        if c.status == psutil.CONN_LISTEN
    }


def exposed(addresses: set[tuple[str, int]]) -> set[tuple[str, int]]:
    """The addresses in ``addresses`` that other machines could reach."""
    return {(ip, port) for ip, port in addresses if not is_loopback(ip)}


@contextlib.contextmanager
def listened_during(every_s: float = 0.002) -> Iterator[set[tuple[str, int]]]:
    """Collect the addresses this process starts listening on while the block runs.

    Some libraries listen only briefly: XGBoost's workers (chapter 35) keep a listener
    for their peers open for 30-120 ms while they form their ring. A look before or
    after the block misses it, so a thread looks every ``every_s`` seconds meanwhile.
    """
    before = listening_addresses()
    opened: set[tuple[str, int]] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(every_s):
            opened.update(listening_addresses() - before)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield opened
    finally:
        stop.set()
        watcher.join()


@ray.remote(num_cpus=0)
def _addresses_on_this_node(pids: list[int]) -> dict[int, set[tuple[str, int]]]:
    host = ray.util.get_node_ip_address()
    found = {}
    for pid in pids:
        try:
            found[pid] = {(host, port) for _, port in listening_addresses(pid)}
        except (
            psutil.NoSuchProcess,
            psutil.AccessDenied,
        ):  # an actor that ended since it was listed
            found[pid] = set()
    return found


def addresses_of_actors(
    actors: Iterable[Any],
) -> dict[tuple[str, int], set[tuple[str, int]]]:
    """Where each actor's process accepts connections: its node's address and each port
    it listens on, by (node ID, pid) (chapter 13).

    ``actors`` as Ray's state API lists them (``node_id`` and ``pid``). An actor may run
    on another machine, with pids of its own, so a task on its node looks.
    """
    pids_by_node = defaultdict(list)
    for actor in actors:
        pids_by_node[actor.node_id].append(actor.pid)
    on_its_node = {
        node: NodeAffinitySchedulingStrategy(node, soft=False) for node in pids_by_node
    }
    found = ray.get(
        [
            _addresses_on_this_node.options(
                scheduling_strategy=on_its_node[node]
            ).remote(pids)
            for node, pids in pids_by_node.items()
        ]
    )
    return {
        (node, pid): addresses
        for node, on_node in zip(pids_by_node, found)
        for pid, addresses in on_node.items()
    }


def spark_executor_addresses(spark: Any) -> list[tuple[str, int]]:
    """The host and port of each executor Spark's scheduler registered, its driver left
    out (chapter 13).

    It is where the executor's block manager serves: Spark's own record of where the
    executor is, whoever started its process.
    """
    from helpers.internals import spark_scala_context

    context = spark_scala_context(spark)
    driver = context.env().blockManager().blockManagerId()
    executors = [
        (info.host(), info.port())
        for info in context.statusTracker().getExecutorInfos()
    ]
    return [
        address for address in executors if address != (driver.host(), driver.port())
    ]
