"""Which addresses a process listens on, and whether they are loopback only.

A Level 1 library brings its own network stack: Ray's token authentication
does not cover the sockets Horovod or Spark open. The notebooks check those
sockets the same way the tests check Ray's.
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
    return {(c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN}


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
def _ports_on_this_node(pids: list[int]) -> dict[int, set[int]]:
    return {pid: {port for _, port in listening_addresses(pid)} for pid in pids}


def ports_of_actors(actors: Iterable[Any]) -> dict[int, set[int]]:
    """The ports each actor's process listens on, by pid (chapter 13).

    ``actors`` as Ray's state API lists them (``pid`` and ``node_id``). The actor may run
    on another machine, so a task on its node looks.
    """
    pids_by_node = defaultdict(list)
    for actor in actors:
        pids_by_node[actor.node_id].append(actor.pid)
    found = ray.get([_ports_on_this_node.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                     .remote(pids) for node, pids in pids_by_node.items()])
    return {pid: ports for on_node in found for pid, ports in on_node.items()}


def spark_executor_ports(spark: Any) -> list[int]:
    """The port of each executor Spark's scheduler registered, its driver left out (chapter 13).

    It is the port the executor's block manager serves on: Spark's own record of where the
    executor is, whoever started its process.
    """
    context = spark.sparkContext._jsc.sc()
    driver = context.env().blockManager().blockManagerId().port()
    return [info.port() for info in context.statusTracker().getExecutorInfos() if info.port() != driver]
