"""Count what the object store holds and what it spilled.

An argument larger than 100 KiB passed by value becomes an object of its
own, one per call, owned by the driver and freed as soon as the call is
done. To count those objects we hold the calls back behind a closed gate
(an actor call that does not return until we open it), count what the
driver came to own, and open the gate.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import ray

# Private, but Ray has no public way to list the references a driver holds
# or to read the store's spill counters.
from ray._private.internal_api import memory_summary
from ray._private.worker import global_worker


def owned_objects() -> set:
    """The IDs of the objects this driver holds references to."""
    return set(global_worker.core_worker.get_all_reference_counts())


@ray.remote(num_cpus=0)
class _Gate:
    def __init__(self) -> None:
        self.opened = asyncio.Event()

    async def wait(self) -> None:
        await self.opened.wait()

    async def open(self) -> None:
        self.opened.set()


def objects_created_by(submit: Callable[[ray.ObjectRef], list[ray.ObjectRef]]) -> tuple[int, list[Any]]:
    """Count the objects that ``submit``'s calls create, then return the calls' results.

    ``submit`` receives a reference that is not ready until the count is
    taken. Each call must take it as an extra argument: Ray runs no call
    before its arguments are ready, so none can finish and free its objects
    early. The calls' own results are not counted.
    """
    gate = _Gate.remote()
    closed = gate.wait.remote()
    before = owned_objects()
    pending = submit(closed)
    # Objects freed meanwhile leave `before`; they do not count against the new ones.
    created = len(owned_objects() - before) - len(pending)
    ray.get(gate.open.remote())
    results = ray.get(pending)
    ray.kill(gate)
    return created, results


def held_sizes(refs: list[ray.ObjectRef]) -> list[int | None]:
    """Each object's size in bytes where a node's object store holds it, else None.

    A value of 100 KiB or less returned by a task travels inline to its owner and lives in
    the owner's memory, in no store. Waits until every object exists.
    """
    ray.wait(refs, num_returns=len(refs), fetch_local=False)
    found = ray.experimental.get_object_locations(refs)
    return [found[ref]["object_size"] if found[ref]["node_ids"] else None for ref in refs]


def spill_counters(address: str) -> dict[str, float]:
    """MiB and objects spilled to disk and restored so far, cluster-wide; 0 when none."""
    text = memory_summary(address=address, stats_only=True)
    found = {}
    for kind in ("Spilled", "Restored"):
        match = re.search(rf"{kind} (\d+) MiB, (\d+) objects", text)
        found[f"{kind.lower()} MiB"] = float(match.group(1)) if match else 0.0
        found[f"{kind.lower()} objects"] = float(match.group(2)) if match else 0.0
    return found
