"""Negative controls: a chapter's central claim, with the mechanism it is about switched off,
seen to fail. Each is cheap: a tiny counterexample on a small cluster, not a second run of the
notebook."""

from __future__ import annotations

import time

import numpy as np
import pytest
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import helpers


@ray.remote(num_cpus=0)
def put_here() -> list[ray.ObjectRef]:
    # ray.put records no task that could make the value again: it has no lineage.
    return [ray.put(np.arange(1_000_000, dtype=np.float64))]


def test_31_an_object_without_lineage_is_lost_with_its_node(cluster):
    """31 claims Ray rebuilt a lost task result from its lineage. Without lineage (an object
    ray.put on the killed node), the same loss is final: ray.get raises ObjectLostError."""
    victim = next(n for n in cluster.nodes() if not n.is_head)
    on_victim = NodeAffinitySchedulingStrategy(victim.node_id, soft=False)
    [lost] = ray.get(put_here.options(scheduling_strategy=on_victim).remote())
    ray.wait([lost], fetch_local=False)
    cluster.kill_node(victim.node_id)
    with pytest.raises(ray.exceptions.ObjectLostError):
        helpers.within(120, "ray.get of an object whose only copy was on the killed node",
                       ray.get, lost)


@ray.remote(num_cpus=1)
def node_of_this_task() -> str:
    time.sleep(0.2)  # long enough that the tasks overlap and each needs a lease of its own
    return ray.get_runtime_context().get_node_id()


def nodes_that_ran(tasks: int, strategy) -> set[str]:
    return set(ray.get([node_of_this_task.options(scheduling_strategy=strategy).remote()
                        for _ in range(tasks)]))


def test_00_tasks_pinned_to_one_node_do_not_run_on_every_node(cluster):
    """00 claims SPREAD tasks ran on every node (its check: as many nodes ran tasks as the
    cluster has). Pinned to the head, the same tasks fail that check."""
    nodes = cluster.nodes()
    head = next(n for n in nodes if n.is_head)
    for node in nodes:  # a worker process on every node first, as 00 starts them
        nodes_that_ran(1, NodeAffinitySchedulingStrategy(node.node_id, soft=False))
    assert len(nodes_that_ran(6, "SPREAD")) == len(nodes)
    pinned = NodeAffinitySchedulingStrategy(head.node_id, soft=False)
    assert len(nodes_that_ran(8, pinned)) < len(nodes)
