"""Negative controls: a chapter's central claim, with the mechanism it is about switched off,
seen to fail.

Each control runs the chapter's own check (``helpers.checks``) on a tiny example, with the
mechanism on (the check holds) and off (it fails): a check that holds either way would prove
nothing. They are cheap on purpose: one small cluster serves all but the one that kills a
node, and a notebook runs again only where one of its parameters is the switch (23, at smoke
size). Each notebook names its control in its metadata (``negative_control``), and the results
ledger shows it beside the claim."""

from __future__ import annotations

import os
import time

import joblib
import numpy as np
import psutil
import pytest
import ray
from conftest import ROOT, ray_processes, wait_until_gone
from ray.util import ActorPool
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import helpers
from helpers import checks
from helpers.run import NotebookFailed, execute
from helpers.store import held_sizes, objects_created_by

MB = 2**20


@pytest.fixture(scope="module")
def stop_at_the_end():
    before = ray_processes()
    yield
    helpers.cluster.shutdown()
    assert not wait_until_gone(ray_processes() - before), "the controls' cluster left processes behind"


@pytest.fixture
def small_cluster(stop_at_the_end):
    """A head and two worker nodes, 1 CPU each: started by the first control that asks, and
    reused by the next ones (start_or_join returns the running one) until the module ends."""
    return helpers.start_or_join(None, worker_nodes=2, quiet=True)


def on(node) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node.node_id, soft=False)


@ray.remote(num_cpus=1)
def node_of_this_task(*arguments) -> str:
    time.sleep(0.2)  # long enough that the tasks overlap and each needs a lease of its own
    return ray.get_runtime_context().get_node_id()


def warm_every_node(cluster) -> None:
    # A worker process on every node first, as chapter 00 starts them: else the caller hands
    # queued tasks to the worker it already holds, while another node's first one is starting.
    ray.get([node_of_this_task.options(scheduling_strategy=on(n)).remote() for n in cluster.nodes()])


def test_00_tasks_pinned_to_one_node_do_not_run_on_every_node(small_cluster):
    """00 claims that SPREAD tasks ran on every node. Pinned to the head, they do not."""
    nodes = small_cluster.nodes()
    node_ids = [n.node_id for n in nodes]
    warm_every_node(small_cluster)

    def run(strategy, tasks: int = 6) -> list[str]:
        return ray.get([node_of_this_task.options(scheduling_strategy=strategy).remote() for _ in range(tasks)])

    assert checks.ran_on_every_node(run("SPREAD"), node_ids)[0]
    assert not checks.ran_on_every_node(run(on(nodes[0])), node_ids)[0]


def test_10_11_12_ranks_that_do_not_average_gradients_drift_apart():
    """10, 11 and 12 claim that every rank ended with the same weights, which the allreduce of
    the gradients (torch.distributed, Horovod, DDP) keeps so. Two ranks start from the same
    weights and train on their own shards: averaging the gradients, they stay identical; each
    stepping on its own gradients, as a rank without the allreduce does, they drift apart."""
    import torch

    def train(average: bool) -> list[str]:
        torch.manual_seed(0)
        first = torch.nn.Linear(8, 1)
        ranks = [first, torch.nn.Linear(8, 1)]
        ranks[1].load_state_dict(first.state_dict())  # rank 0's weights, broadcast
        shards = [torch.randn(64, 8, generator=torch.Generator().manual_seed(rank)) for rank in range(2)]
        for _ in range(5):
            for model, x in zip(ranks, shards):
                model.zero_grad()
                model(x).square().mean().backward()
            if average:
                for params in zip(*(model.parameters() for model in ranks)):
                    mean = sum(p.grad for p in params) / len(params)
                    for p in params:
                        p.grad = mean.clone()
            with torch.no_grad():
                for model in ranks:
                    for p in model.parameters():
                        p -= 0.1 * p.grad
        return [checks.weights_digest(model.parameters()) for model in ranks]

    assert checks.identical_weights(train(average=True))[0]
    assert not checks.identical_weights(train(average=False))[0]


@ray.remote(num_cpus=0)
class Scorer:
    def __init__(self) -> None:
        self.calls = 0

    def score(self, x: int) -> int:
        self.calls += 1
        time.sleep(0.002)
        return x * x

    def calls_served(self) -> int:
        return self.calls


def test_20_calls_sent_to_one_actor_are_not_shared(small_cluster):
    """20 claims that the actor pool shared the items between its actors. The pool hands each
    item to an idle actor; calls that all go to one actor, as without it, are not shared."""
    items = 40

    def served(submit) -> list[int]:
        scorers = [Scorer.remote() for _ in range(2)]
        ray.get([s.calls_served.remote() for s in scorers])  # both up before the first item
        submit(scorers)
        calls = ray.get([s.calls_served.remote() for s in scorers])
        for scorer in scorers:
            ray.kill(scorer)
        return calls

    pooled = served(lambda scorers: list(ActorPool(scorers).map(lambda a, x: a.score.remote(x), range(items))))
    to_one = served(lambda scorers: ray.get([scorers[0].score.remote(x) for x in range(items)]))
    assert checks.shared_by_the_pool(pooled, items)[0]
    assert not checks.shared_by_the_pool(to_one, items)[0]


def test_21_actors_that_ask_for_no_cpu_stack_up(small_cluster):
    """21 claims that with one CPU per actor the joblib backend runs one worker per CPU of every
    node. Ray's pool actors ask for no CPU by default: they hold none, wherever they land."""
    from ray.util.joblib import register_ray

    register_ray()
    cpus_by_node = {n.node_id: int(n.cpus) for n in small_cluster.nodes()}

    def where_am_i(_: int) -> tuple[str, int, float]:  # here: the workers cannot import this module
        time.sleep(0.05)  # long enough for every worker to get some
        context = ray.get_runtime_context()
        return context.get_node_id(), os.getpid(), context.get_assigned_resources().get("CPU", 0.0)

    def pool_workers(ray_remote_args: dict | None) -> dict[int, tuple[str, float]]:
        with joblib.parallel_backend("ray", ray_remote_args=ray_remote_args):
            jobs = joblib.Parallel(n_jobs=-1)(joblib.delayed(where_am_i)(i) for i in range(30))
        return {pid: (node, cpus) for node, pid, cpus in jobs}

    assert checks.one_worker_per_cpu(pool_workers({"num_cpus": 1}), cpus_by_node)[0]
    holds, detail = checks.one_worker_per_cpu(pool_workers(None), cpus_by_node)
    assert not holds, detail


@ray.remote(num_cpus=0)
def search_slice(vectors: np.ndarray, first: int, questions: np.ndarray, k: int) -> tuple:
    # One shard's answer: its best k per question, numbered in the whole index.
    scores = questions @ vectors.T
    best = np.argsort(-scores, axis=1)[:, :k]
    return np.take_along_axis(scores, best, axis=1), best + first


def merge(answers: list[tuple], k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = np.concatenate([s for s, _ in answers], axis=1)
    ids = np.concatenate([i for _, i in answers], axis=1)
    best = np.argsort(-scores, axis=1)[:, :k]
    return np.take_along_axis(ids, best, axis=1), np.take_along_axis(scores, best, axis=1)


def test_22_a_fan_out_that_misses_a_shard_gives_another_answer(small_cluster):
    """22 claims the sharded answer is the single index's: every shard answers with its own
    best k, and the merge keeps the best of those. A fan-out that misses one shard (lost, or
    never asked) gives another answer, and the check sees it."""
    random = np.random.default_rng(0)
    index = random.standard_normal((3000, 16)).astype(np.float32)
    questions = index[random.choice(len(index), 20, replace=False)] + np.float32(0.05)
    k = 5
    exact_ids, exact_scores = merge([ray.get(search_slice.remote(index, 0, questions, k))], k)
    answers = ray.get([search_slice.remote(index[first:first + 1000], first, questions, k)
                       for first in (0, 1000, 2000)])

    assert checks.same_top_k(*merge(answers, k), exact_ids, exact_scores)[0]
    holds, detail = checks.same_top_k(*merge(answers[1:], k), exact_ids, exact_scores)
    assert not holds, detail


@ray.remote(num_cpus=0)
class Reader:
    def read(self, wrapped: list, copy: bool) -> dict:
        me = psutil.Process()
        private_before = me.memory_full_info().uss
        array = ray.get(wrapped[0])
        if copy:
            array = np.array(array)  # what a library that copies what it reads does
        return {"pid": os.getpid(), "writeable": array.flags.writeable,
                "intact": float(array.sum()) == len(array),
                "private_growth": me.memory_full_info().uss - private_before}


def test_30_a_read_that_copies_is_seen(small_cluster):
    """30 claims that workers on one node read an array without copying it. A reader that
    copies it (np.array of what ray.get returned) gets a writeable array and as many private
    bytes as the array has: the check sees both."""
    megabytes = 64
    shared = ray.put(np.ones(megabytes * MB // 8))
    head = small_cluster.nodes()[0]
    readers = [Reader.options(scheduling_strategy=on(head)).remote() for _ in range(2)]

    def reads(copy: bool) -> list[dict]:
        return ray.get([r.read.remote([shared], copy) for r in readers])

    assert checks.read_without_copying(reads(copy=False), megabytes)[0]
    holds, detail = checks.read_without_copying(reads(copy=True), megabytes)
    assert not holds, detail
    for reader in readers:
        ray.kill(reader)


def test_32_40_an_argument_passed_by_value_is_stored_once_per_call(small_cluster):
    """32 claims that S, passed by reference, is stored once per node that used it; 40 that an
    array passed by reference is stored once in all. Passed by value, Ray stores it once per
    call, and both checks fail."""
    calls = 6
    table = np.ones(MB // 8)  # 1 MiB: over the 100 KiB a call carries inline
    warm_every_node(small_cluster)

    reference = ray.put(table)
    ran_on = ray.get([node_of_this_task.options(scheduling_strategy="SPREAD").remote(reference)
                      for _ in range(calls)])
    copies = len(ray.experimental.get_object_locations([reference])[reference]["node_ids"])
    by_value, ran_on_by_value = objects_created_by(
        lambda closed: [node_of_this_task.options(scheduling_strategy="SPREAD").remote(table, closed)
                        for _ in range(calls)])

    assert checks.stored_once_per_node(copies, ran_on)[0]
    assert not checks.stored_once_per_node(by_value, ran_on_by_value)[0]
    assert checks.stored_once_by_reference(by_value, 1, calls)[0]
    assert not checks.stored_once_by_reference(by_value, by_value, calls)[0]


@ray.remote
def part_of(table: np.ndarray, first: int, last: int) -> np.ndarray:
    return table[first:last].copy()


def test_33_35_parts_returned_inline_are_in_no_store(small_cluster):
    """33 and 35 claim that a table is held in the object store, one object per partition or
    shard. Ray keeps a task's return value in a node's store only above 100 KiB: a smaller one
    travels inline to the caller and lives in the caller's memory. Cut into parts that small,
    the same table is in no store, and the check sees it."""
    table = np.ones(4 * MB // 8)
    table_ref = ray.put(table)

    def part_sizes(parts: int) -> list[int | None]:
        bounds = np.linspace(0, len(table), parts + 1).astype(int)
        return held_sizes([part_of.remote(table_ref, first, last) for first, last in zip(bounds[:-1], bounds[1:])])

    assert checks.held_in_the_store(part_sizes(4), 4, table.nbytes)[0]  # 1 MiB each
    holds, detail = checks.held_in_the_store(part_sizes(64), 64, table.nbytes)  # 64 KiB each
    assert not holds, detail


def test_34_dask_on_its_own_threads_leaves_nothing_in_the_store(small_cluster):
    """34 claims that a Dask array's intermediate chunks are objects in Ray's store. With Dask's
    own thread scheduler instead of Ray's, the same computation leaves none there."""
    import dask.array as da
    from ray.util.dask import RayDaskCallback, ray_dask_get

    class Results(RayDaskCallback):
        def __init__(self) -> None:
            super().__init__()
            self.refs: list = []

        def _ray_postsubmit(self, task, key, deps, object_ref) -> None:
            self.refs.append(object_ref)

    matrix = da.ones((1000, 1000), chunks=(250, 250))
    column_means = (matrix @ matrix.T).mean(axis=0)

    def result_sizes(scheduler) -> list[float | None]:
        with Results() as results:
            column_means.compute(scheduler=scheduler)
        return [None if size is None else size / MB for size in held_sizes(results.refs)]

    assert checks.results_in_the_store(result_sizes(ray_dask_get), matrix.npartitions, matrix.nbytes / MB)[0]
    holds, detail = checks.results_in_the_store(result_sizes("threads"), matrix.npartitions, matrix.nbytes / MB)
    assert not holds, detail


@ray.remote(num_cpus=0)
def put_here() -> list[ray.ObjectRef]:
    # ray.put records no task that could make the value again: it has no lineage.
    return [ray.put(np.arange(1_000_000, dtype=np.float64))]


def test_31_an_object_without_lineage_is_lost_with_its_node(cluster):  # a cluster of its own: it kills a node
    """31 claims Ray rebuilt a lost task result from its lineage. Without lineage (an object
    ray.put on the killed node), the same loss is final: ray.get raises ObjectLostError."""
    victim = next(n for n in cluster.nodes() if not n.is_head)
    [lost] = ray.get(put_here.options(scheduling_strategy=on(victim)).remote())
    ray.wait([lost], fetch_local=False)
    cluster.kill_node(victim.node_id)
    with pytest.raises(ray.exceptions.ObjectLostError):
        helpers.within(120, "ray.get of an object whose only copy was on the killed node",
                       ray.get, lost)


def test_23_a_planner_that_never_replans_does_not_converge(tmp_path, no_leftovers):
    """23 claims the plan converged to within 5 % of the optimum: at each re-plan the planner
    gathers the channels' counters through actor calls and learns from them. With re-planning
    switched off (replan_every beyond the last round), the first plan, made from no data,
    stands, and the chapter's own check fails: a smoke run with that one parameter."""
    helpers.cluster.shutdown()  # one cluster at a time: the notebook starts its own
    notebook = ROOT / "notebooks" / "23_online_actors.ipynb"
    with pytest.raises(NotebookFailed, match="ClaimFailed: the plan converged"):
        execute(notebook, tmp_path / notebook.name, {"smoke": True, "replan_every": 10_000})
