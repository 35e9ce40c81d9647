"""The checks behind each chapter's central claim.

A chapter makes its central claim with one of these::

    helpers.claim(
        "tasks ran on every node", *checks.ran_on_every_node(task_nodes, node_ids)
    )

and a negative control in ``tests/test_controls.py`` runs the same check on
what Ray gives with the chapter's mechanism switched off (tasks pinned to one
node, ranks that do not average their gradients, a copy forced on every read)
and sees it fail. A check that nothing could make fail would prove nothing.

Each returns ``(holds, detail)``: the last two arguments of :func:`helpers.claim`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

Check = tuple[bool, str]
MB = 2**20


def ran_on_every_node(task_nodes: Sequence[str], node_ids: Collection[str]) -> Check:
    """00: every node that can run a task (pass the nodes with a CPU) ran at least
    one."""
    ran, nodes = set(task_nodes), set(node_ids)
    return ran == nodes, (
        f"{len(ran & nodes)} of {len(nodes)} nodes ran at least one of "
        f"{len(task_nodes)} tasks"
    )


def weights_digest(tensors: Iterable[Any]) -> str:
    """A short fingerprint of a model's weights (torch tensors): equal only if every
    value is."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def identical_weights(digests: Sequence[str]) -> Check:
    """10, 11, 12: every rank ended with the same weights (compared by
    :func:`weights_digest`)."""
    distinct = sorted(set(digests))
    return len(digests) > 1 and len(
        distinct
    ) == 1, f"{len(digests)} ranks, weights {distinct}"


def executors_are_ray_actors(
    executors: Sequence[tuple[str, int]],
    actor_addresses: Mapping[Any, Collection[tuple[str, int]]],
    expected: int,
) -> Check:
    """13: Spark registered ``expected`` executors, and each runs in a Ray actor's
    process of its own: the host and port Spark records for it (see
    :func:`helpers.network.spark_executor_addresses`) are ones a live actor's process
    listens on. ``actor_addresses`` maps each actor to those
    (:func:`helpers.network.addresses_of_actors`)."""
    actor_at = {
        address: actor
        for actor, addresses in actor_addresses.items()
        for address in addresses
    }
    owners = [actor_at.get(address) for address in executors]
    in_actors = {actor for actor in owners if actor is not None}
    holds = (
        len(executors) == expected and None not in owners and len(in_actors) == expected
    )
    return holds, (
        f"Spark registered {len(executors)} executors; {len(in_actors)} run in Ray "
        f"actors' processes, of {len(actor_addresses)} live actors"
    )


def store_takes_over_at(threshold: int, limit: int = 100 * 1024) -> Check:
    """20: the smallest array argument that went through the object store (in bytes of
    data, see :func:`helpers.store.smallest_stored_argument`) sits just under Ray's
    limit for arguments inside a call: serialised, an array gains a header of a few
    hundred bytes."""
    return 0.98 * limit <= threshold <= limit, (
        f"arrays of {threshold:,} B and more went through the "
        f"object store; the limit: {limit:,} B"
    )


def shared_by_the_pool(calls_per_actor: Sequence[int], items: int) -> Check:
    """20: every actor of the pool served some of the items, and together all of
    them."""
    holds = (
        len(calls_per_actor) > 1
        and sum(calls_per_actor) == items
        and min(calls_per_actor) > 0
    )
    return holds, f"{items} items: {list(calls_per_actor)} calls per actor"


def one_worker_per_cpu(
    workers: Mapping[int, tuple[str, float]], cpus_by_node: Mapping[str, int]
) -> Check:
    """21: a pool ran one worker per CPU of every node, each holding the CPU Ray
    reserved for it.

    ``workers`` maps each worker's pid to its node and the CPUs Ray assigned it. A
    worker that holds no CPU could be anywhere: where it landed proves nothing about the
    CPUs. Nodes without a CPU (a head kept for the drivers) take no worker.
    """
    per_node = Counter(node for node, _ in workers.values())
    cpus = {node: count for node, count in cpus_by_node.items() if count}
    holding = sum(held == 1 for _, held in workers.values())
    return dict(per_node) == cpus and holding == len(workers), (
        f"workers {dict(sorted(per_node.items()))}; CPUs {dict(sorted(cpus.items()))}; "
        f"{holding} of {len(workers)} hold a CPU"
    )


def same_top_k(ids: Any, scores: Any, exact_ids: Any, exact_scores: Any) -> Check:
    """22: a merged answer (arrays of question x rank) is the single index's: the same
    passages in the same order, with the same scores."""
    same = bool(np.array_equal(ids, exact_ids) and np.allclose(scores, exact_scores))
    matching = (
        np.mean(np.asarray(ids) == np.asarray(exact_ids))
        if np.shape(ids) == np.shape(exact_ids)
        else 0.0
    )
    return (
        same,
        f"{matching:.1%} of {np.size(exact_ids)} top-k entries "
        "match the single index's",
    )


def same_attributions(
    distributed: Any, sequential: Any, tolerance: float = 1e-8
) -> Check:
    """24: attributions computed in batches on Ray's actors, gathered back, are the
    sequential ones: the same shape, every value within ``tolerance``. Batches gathered
    in the order they finished, or one lost, give other rows in the places of the
    instances."""
    distributed, sequential = np.asarray(distributed), np.asarray(sequential)
    if distributed.shape != sequential.shape:
        return (
            False,
            f"shape {distributed.shape} against the sequential {sequential.shape}",
        )
    largest = float(np.abs(distributed - sequential).max(initial=0.0))
    holds = sequential.size > 0 and largest <= tolerance
    return holds, f"largest difference {largest:.1e} over {sequential.size} values"


def read_without_copying(reads: Sequence[Mapping[str, Any]], megabytes: int) -> Check:
    """30: each reader (a process of its own) got a read-only array and copied under a
    tenth of it.

    A read is ``{"pid", "writeable", "private_growth" (bytes), "intact"}``.
    """
    holds = len({r["pid"] for r in reads}) == len(reads) > 1 and all(
        not r["writeable"]
        and r["private_growth"] < 0.1 * megabytes * MB
        and r["intact"]
        for r in reads
    )
    growth = max((r["private_growth"] for r in reads), default=0)
    return holds, (
        f"{len(reads)} workers, {sum(not r['writeable'] for r in reads)} read-only, "
        f"private growth at most {growth / MB:.1f} MB of {megabytes} MB"
    )


def rebuilt_from_lineage(runs: Sequence[str], victim: str, intact: bool) -> Check:
    """31: the task ran twice, first on the node that was then killed, then on another;
    the value came back intact. ``runs`` are the nodes the task ran on, in order."""
    holds = len(runs) == 2 and runs[0] == victim and runs[1] != victim and intact
    where = ", then ".join(
        "the killed node" if node == victim else "another node" for node in runs
    )
    return (
        holds,
        f"the task ran {len(runs)} times: on {where or 'no node'}; intact: {intact}",
    )


def stored_once_per_node(
    copy_nodes: Sequence[str],
    task_nodes: Sequence[str],
    node_ids: Collection[str],
    put_on: str,
) -> Check:
    """32: one copy of the shared table on each node that ran a task, besides the one it
    was put on, and none on the other nodes: fewer copies than tasks. ``copy_nodes`` has
    one entry per copy, the node that holds it. At least one node must have run no task,
    or a table sent to every node whether it was used or not would pass too."""
    expected = set(task_nodes) | {put_on}
    idle = set(node_ids) - expected
    holds = (
        sorted(copy_nodes) == sorted(expected)
        and len(copy_nodes) < len(task_nodes)
        and len(idle) > 0
    )
    return holds, (
        f"{len(copy_nodes)} copies on {len(set(copy_nodes))} nodes, "
        f"for {len(task_nodes)} tasks "
        f"on {len(set(task_nodes))} nodes; {len(idle)} other node(s), holding "
        f"{sum(node in idle for node in copy_nodes)} copies"
    )


def entered_once_per_node(
    created: Mapping[str, tuple[int, int]],
    reader_nodes: Sequence[str],
    put_on: str,
    size: int,
) -> Check:
    """36: a value that many readers share (Tune's trials) entered the store of each
    node that read it, and of the node it was put on, once: 1 to 1.1 times its ``size``
    in bytes there, under half of it elsewhere; and there were more readers than copies.
    ``created`` holds each node's (objects, bytes) created meanwhile
    (:func:`helpers.store.store_traffic`); one reader per ``reader_nodes`` entry."""
    expected = set(reader_nodes) | {put_on}
    once = {
        node: size <= nbytes <= 1.1 * size if node in expected else nbytes < size / 2
        for node, (_, nbytes) in created.items()
    }
    holds = all(once.values()) and len(reader_nodes) > len(expected)
    return holds, (
        f"{len(reader_nodes)} readers on {len(set(reader_nodes))} nodes; "
        f"{sum(nbytes for _, nbytes in created.values()) / MB:.1f} MB "
        f"entered the stores for {size / MB:.1f} MB of data; "
        f"{sum(once.values())} of {len(once)} nodes as expected"
    )


def kept_out_of_the_store(
    stored_bytes: int, exchanged_bytes: int, sums: Sequence[float], members: int
) -> Check:
    """60: a collective exchanged ``exchanged_bytes`` per member while the nodes' stores
    took under 1 % of that (``stored_bytes``, from :func:`helpers.store.store_traffic`),
    and every member's sum of ones is the number of members."""
    holds = (
        stored_bytes < 0.01 * exchanged_bytes
        and list(sums) == [float(members)] * members
    )
    return holds, (
        f"{stored_bytes / MB:.2f} MB entered the stores "
        f"for {exchanged_bytes / MB:.0f} MB a member; "
        f"sums {sorted(set(sums))} for {members} members"
    )


def passed_past_the_store(stored: Mapping[int, int]) -> Check:
    """61: tensors of several sizes went from one actor to another while the nodes'
    stores took under 1 % of each one's bytes. ``stored`` maps each tensor's bytes to
    what the stores created meanwhile (:func:`helpers.store.store_traffic`); at least
    one tensor must be 1 MB or more, or the store would not have been asked to hold it
    anyway."""
    holds = any(size >= MB for size in stored) and all(
        taken < 0.01 * size for size, taken in stored.items()
    )
    return holds, "; ".join(
        f"{size / MB:g} MB: {taken / MB:.2f} MB in the stores"
        for size, taken in stored.items()
    )


def one_task_per_stage(tasks_per_stage: Sequence[int], executions: int) -> Check:
    """62: each stage of a pipeline ran ``executions`` executions (more than one) under
    a single task ID: channels between long-running loops, not a task per message."""
    holds = (
        executions > 1
        and bool(tasks_per_stage)
        and all(tasks == 1 for tasks in tasks_per_stage)
    )
    return (
        holds,
        f"task IDs seen by each stage {list(tasks_per_stage)}, "
        f"for {executions} executions",
    )


def streamed_without_spilling(
    rows: int,
    blocks: int,
    total: float,
    spilled_mb: float,
    data_bytes: int,
    stores_bytes: int,
) -> Check:
    """63: every block of a dataset larger than all the object stores together arrived
    once (block i carries the value i, so the values sum to 0 + 1 + ... + blocks - 1),
    and nothing spilled to disk meanwhile (``spilled_mb``, from
    :func:`helpers.store.spill_counters`)."""
    holds = (
        rows == blocks
        and total == blocks * (blocks - 1) / 2
        and data_bytes > stores_bytes
        and spilled_mb == 0
    )
    return holds, (
        f"{rows} of {blocks} blocks, "
        f"{data_bytes / MB:.0f} MB for {stores_bytes / MB:.0f} MB of "
        f"stores; {spilled_mb:.0f} MB spilled"
    )


def held_in_the_store(sizes: Sequence[int | None], data_bytes: float) -> Check:
    """33: a table partitioned into several objects, each held in a node's store,
    together 0.9 to 1.25 times the table's bytes.

    ``sizes`` are the objects' sizes in bytes, None for one that no node's store holds
    (see :func:`helpers.store.held_sizes`).
    """
    stored = [size for size in sizes if size is not None]
    ratio = sum(stored) / data_bytes if data_bytes else 0.0
    holds = len(sizes) > 1 and len(stored) == len(sizes) and 0.9 <= ratio <= 1.25
    return holds, (
        f"{len(stored)} of {len(sizes)} objects in a node's store; "
        f"{sum(stored) / MB:.1f} MB stored for {data_bytes / MB:.1f} MB of data"
    )


def results_in_the_store(
    result_sizes_mb: Sequence[float | None], chunks: int, data_mb: float
) -> Check:
    """34: more task results in shared memory than the input has chunks, and more bytes
    than the input. ``result_sizes_mb`` holds one entry per task result, None for one
    not in the store."""
    stored = [mb for mb in result_sizes_mb if mb is not None]
    return len(stored) > chunks and sum(stored) > data_mb, (
        f"{len(stored)} of {len(result_sizes_mb)} task results in shared memory, "
        f"{sum(stored):.0f} MB, for {chunks} chunks of {data_mb:.0f} MB"
    )


def rows_entered_the_store(
    stored_bytes: int, shards: int, workers: int, data_bytes: float
) -> Check:
    """35: the training rows were cut into one shard per worker, and the nodes' stores
    grew by the rows' bytes while the workers got them (0.9 to 1.25 times: a pickled
    frame carries its index). ``stored_bytes`` is what the stores gained meanwhile (see
    :func:`helpers.store.bytes_stored_by`); workers that read their rows from a file add
    nothing there."""
    ratio = stored_bytes / data_bytes if data_bytes else 0.0
    return shards == workers and 0.9 <= ratio <= 1.25, (
        f"{shards} shards for {workers} workers; "
        f"the stores grew by {stored_bytes / MB:.1f} MB "
        f"for {data_bytes / MB:.1f} MB of rows"
    )


def stored_once_by_reference(by_value: int, by_reference: int, calls: int) -> Check:
    """40: objects Ray stored for ``calls`` calls: one per call by value, one in all by
    reference."""
    return (
        (by_value, by_reference) == (calls, 1),
        f"{by_value} objects by value, {by_reference} by reference, for {calls} calls",
    )


def carried_by(carried: Any, carrier: str, at_least: int) -> Check:
    """10, 20, 30: ``carrier`` (a key of :data:`helpers.traffic.CARRIERS`) took at
    least ``at_least`` bytes of a :class:`helpers.traffic.Carried`, and each of the
    others less than a tenth of that."""
    taken = carried.taken()
    others = [name for name in taken if name != carrier]
    holds = taken[carrier] >= at_least and all(
        taken[name] < at_least / 10 for name in others
    )
    return holds, (
        f"{carrier} {taken[carrier] / MB:.2f} MiB of at least {at_least / MB:.2f}; "
        + ", ".join(f"{name} {taken[name] / MB:.3f} MiB" for name in others)
    )
