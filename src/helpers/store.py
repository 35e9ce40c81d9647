"""Count what the object store holds and what it spilled.

An argument larger than 100 KiB passed by value becomes an object of its
own, one per call, owned by the driver and freed as soon as the call is
done. To count those objects we hold the calls back behind a closed gate
(an actor call that does not return until we open it), count what the
driver came to own, and open the gate.

Used by chapters 20, 21, 30, 31, 32, 33, 35, 36, 40, 50, 60, 61 and 63; each
function's docstring names its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import ray

from helpers.internals import (
    get_memory_info_reply,
    get_state_from_address,
    memory_summary,
    node_stats,
    object_locations,
    reference_counts,
)


def owned_objects() -> set:
    """The IDs of the objects this driver holds references to."""
    return set(reference_counts())


@ray.remote(num_cpus=0)
class _Gate:
    def __init__(self) -> None:
        self.opened = asyncio.Event()

    async def wait(self) -> None:
        await self.opened.wait()

    async def open(self) -> None:
        self.opened.set()

    async def close(self) -> None:
        self.opened.clear()


def objects_created_by(
    submit: Callable[[ray.ObjectRef], list[ray.ObjectRef]],
    gate: ray.actor.ActorHandle | None = None,
) -> tuple[int, list[Any]]:
    """Count the objects that ``submit``'s calls create, then return the calls' results.

    ``submit`` receives a reference that is not ready until the count is
    taken. Each call must take it as an extra argument: Ray runs no call
    before its arguments are ready, so none can finish and free its objects
    early. The calls' own results are not counted. A caller that counts many
    times passes a ``gate`` (``_Gate.remote()``) to reuse; else one is made.
    """
    own_gate = gate is None
    gate = _Gate.remote() if own_gate else gate
    closed = gate.wait.remote()
    before = owned_objects()
    pending = submit(closed)
    # Objects freed meanwhile leave `before`; they do not count against the new ones.
    created = len(owned_objects() - before) - len(pending)
    ray.get(gate.open.remote())
    results = ray.get(pending)
    if own_gate:
        ray.kill(gate)
    else:
        ray.get(gate.close.remote())
    return created, results


@ray.remote
def _length(array: Any, *not_before: Any) -> int:
    return len(array)


def goes_through_the_store(
    size: int, gate: ray.actor.ActorHandle | None = None
) -> bool:
    """Whether a task call puts a NumPy array of ``size`` bytes into the object store:
    the call then creates an object besides its own result."""
    array = np.ones(size, dtype=np.uint8)
    created, [length] = objects_created_by(
        lambda closed: [_length.remote(array, closed)], gate
    )
    assert length == size
    return created > 0


def smallest_stored_argument(low: int = 1024, high: int = 2**20) -> int:
    """The smallest NumPy array, in bytes of data, that a call puts into the object
    store rather than into the call itself (chapter 20), found by bisection between
    ``low`` (inside the call) and ``high`` (through the store).

    The caller's process decides, by its own ``max_direct_call_object_size`` (100 KiB
    unless set), which it applies to the serialised argument: the array plus a small
    header. (A task's result is the other way round: the worker that ran it decides.)
    """
    gate = _Gate.remote()  # one for the twenty or so calls
    if goes_through_the_store(low, gate) or not goes_through_the_store(high, gate):
        raise ValueError(f"the threshold is not between {low:,} and {high:,} bytes")
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (
            (low, middle) if goes_through_the_store(middle, gate) else (middle, high)
        )
    ray.kill(gate)
    return high


def bytes_stored_by(step: Callable[[], Any], address: str) -> tuple[int, Any]:
    """The bytes that the nodes' object stores gained while ``step`` ran, and its
    result.

    Ray's own counter of the bytes in every node's store, read once it has settled
    before and after (chapter 35): frees from earlier work would otherwise count against
    the step.
    """
    before = _settled(lambda: store_bytes_used(address))
    result = step()
    return _settled(lambda: store_bytes_used(address)) - before, result


@contextlib.contextmanager
def batches_sent_by_ray_pools() -> Iterator[list[tuple[str, int]]]:
    """Record every batch a ``ray.util.multiprocessing.Pool`` sends to its actors while
    the block runs (chapter 21): the type of the callable, and its pickled bytes
    together with its arguments. A call argument above 100 KiB goes into the object
    store, once per call."""
    from ray.util.multiprocessing import pool

    sent, send = [], pool.Pool._run_batch

    def recording(self, actor_index, func, batch):
        sent.append((type(func).__name__, len(ray.cloudpickle.dumps((func, batch)))))
        return send(self, actor_index, func, batch)

    pool.Pool._run_batch = recording
    try:
        yield sent
    finally:
        pool.Pool._run_batch = send


@contextlib.contextmanager
def store_traffic() -> Iterator[dict[str, tuple[int, int]]]:
    """The objects and bytes each node's store created while the block ran, by node ID
    (chapters 36, 60, 61, 63): every ``ray.put``, every task or actor result and
    argument over 100 KiB, and every copy a node pulled from another. Ray's own
    cumulative counters, asked of each live node's raylet before and after; filled in
    when the block ends."""
    before = _created_per_node()
    traffic: dict[str, tuple[int, int]] = {}
    yield traffic
    for node_id, (objects, nbytes) in _created_per_node().items():
        objects_before, bytes_before = before.get(node_id, (0, 0))
        traffic[node_id] = (objects - objects_before, nbytes - bytes_before)


def _created_per_node() -> dict[str, tuple[int, int]]:
    created = {}
    for node in ray.nodes():
        if node["Alive"]:
            stats = node_stats(
                node["NodeManagerAddress"],
                node["NodeManagerPort"],
                include_memory_info=False,
            ).store_stats
            created[node["NodeID"]] = (
                stats.cumulative_created_objects,
                stats.cumulative_created_bytes,
            )
    return created


def store_bytes_used(address: str) -> int:
    """Bytes held in all the nodes' object stores together, as
    ``ray memory --stats-only`` reads them."""
    return get_memory_info_reply(
        get_state_from_address(address)
    ).store_stats.object_store_bytes_used


def node_store_bytes_used(node_id: str) -> int:
    """Bytes held in one node's object store (chapter 30), asked of that node's
    raylet."""
    [node] = [
        node for node in ray.nodes() if node["NodeID"] == node_id and node["Alive"]
    ]
    stats = node_stats(
        node["NodeManagerAddress"], node["NodeManagerPort"], include_memory_info=False
    )
    return stats.store_stats.object_store_bytes_used


def settled_store_bytes(node_id: str) -> int:
    """A node's store bytes once they stop changing (chapter 30)."""
    return _settled(lambda: node_store_bytes_used(node_id))


def _settled(
    read_bytes: Callable[[], int], still_s: float = 2.5, timeout_s: float = 60
) -> int:
    # Ray frees objects in batches, once a second: a count taken right after the last
    # reference went may not show the free yet. So read until unchanged for `still_s`.
    deadline = time.monotonic() + timeout_s
    last, since = read_bytes(), time.monotonic()
    while time.monotonic() - since < still_s:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the store's bytes did not settle within {timeout_s} s")
        time.sleep(0.25)
        if (current := read_bytes()) != last:
            last, since = current, time.monotonic()
    return last


def bytes_rebuilt_and_mapped(value: Any) -> tuple[int, int]:
    """The bytes of ``value`` that each reader rebuilds, and those it maps in place
    (chapter 32).

    Ray serialises a value with pickle protocol 5 (``ray._private.serialization``):
    buffers that allow it (NumPy arrays, Arrow columns) go out of band and stay in
    shared memory, where a reader maps them; the rest (Python objects, such as a column
    of ``str``) is pickled in band, and every ``ray.get`` unpickles a new copy. This
    splits a value the same way.
    """
    buffers: list = []
    in_band = ray.cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    return len(in_band), sum(memoryview(buffer).nbytes for buffer in buffers)


def held_sizes(refs: list[ray.ObjectRef], settle_s: float = 2.0) -> list[int | None]:
    """Each object's size in bytes where a node's object store holds it, else None.

    A value under 100 KiB returned by a task travels inline to the caller that submitted
    the task, its owner, and lives in the caller's memory, in no store. Waits until
    every object exists. The owner learns where a task's result is stored a moment
    after the result is ready (on separate machines, after it has been seen to say
    none), so an object without a location is looked for again, for up to
    ``settle_s`` seconds, before it counts as held in no store.
    """
    ray.wait(refs, num_returns=len(refs), fetch_local=False)
    deadline = time.monotonic() + settle_s
    while True:
        found = object_locations(refs)
        sizes = [
            found[ref]["object_size"] if found[ref]["node_ids"] else None
            for ref in refs
        ]
        if None not in sizes or time.monotonic() > deadline:
            return sizes
        time.sleep(0.1)


def spill_counters(address: str) -> dict[str, float]:
    """MiB and objects spilled to disk and restored so far, cluster-wide; 0 when
    none."""
    text = memory_summary(address=address, stats_only=True)
    found = {}
    for kind in ("Spilled", "Restored"):
        match = re.search(rf"{kind} (\d+) MiB, (\d+) objects", text)
        found[f"{kind.lower()} MiB"] = float(match.group(1)) if match else 0.0
        found[f"{kind.lower()} objects"] = float(match.group(2)) if match else 0.0
    return found


def stored_size(address: str, object_hex: str) -> int:
    """An object's size as Ray's state API reports it, 0 once no process refers to it
    (chapter 30). The state API needs the cluster's dashboard."""
    from ray.util.state import list_objects

    found = list_objects(
        address=address,
        filters=[("object_id", "=", object_hex)],
        detail=True,
        raise_on_missing_output=False,
    )
    # One row per process that refers to it.
    return max((o.object_size or 0 for o in found), default=0)


def seconds_until_unreferenced(
    address: str, object_hex: str, timeout_s: float = 30
) -> float:
    """Poll the state API every 0.1 s until no process refers to the object
    (chapter 30); the seconds it took."""
    start = time.perf_counter()
    while stored_size(address, object_hex):
        if time.perf_counter() - start > timeout_s:
            raise TimeoutError(
                f"object {object_hex} still referred to after {timeout_s} s"
            )
        time.sleep(0.1)
    return time.perf_counter() - start


def nodes_holding(
    ref: ray.ObjectRef, at_least: int = 2, timeout_s: float = 10
) -> set[str]:
    """The IDs of the nodes whose stores hold a copy of the object (chapter 30).

    A node that pulled a copy reports it to the object's owner a moment later, so
    this waits, up to ``timeout_s``, until ``at_least`` nodes are known.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        found = set(object_locations([ref])[ref]["node_ids"])
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        time.sleep(0.05)
