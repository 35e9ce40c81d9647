"""Negative controls: a chapter's central claim, with the mechanism it is about switched
off, seen to fail.

Each control runs the chapter's own check (``helpers.checks``) on a tiny example, with
the mechanism on (the check holds) and off (it fails): a check that holds either way
would prove nothing. They are cheap on purpose: one small cluster serves all but the one
that kills a node, and a notebook runs again only where one of its parameters is the
switch (23, at smoke size). Each notebook names its control in its metadata
(``negative_control``), and the results ledger shows it beside the claim."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
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
from booktools.run import NotebookFailed, execute
from helpers import checks
from helpers.internals import object_locations
from helpers.network import addresses_of_actors, spark_executor_addresses
from helpers.store import (
    bytes_stored_by,
    held_sizes,
    objects_created_by,
    smallest_stored_argument,
)

MB = 2**20


@pytest.fixture(scope="module")
def stop_at_the_end():
    before = ray_processes()
    yield
    helpers.cluster.shutdown()
    assert not wait_until_gone(ray_processes() - before), (
        "the controls' cluster left processes behind"
    )


@pytest.fixture
def small_cluster(stop_at_the_end):
    """A head and two worker nodes, 1 CPU each, with the state API: started by the first
    control that asks, and reused by the next ones (start_or_join returns the running
    one) until the module ends."""
    return helpers.start_or_join(
        None, worker_nodes=2, dashboard=True, quiet=True
    )  # 13 lists actors


def on(node) -> NodeAffinitySchedulingStrategy:
    return on_node_id(node.node_id)


def on_node_id(node_id: str) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node_id, soft=False)


@ray.remote(num_cpus=1)
def node_of_this_task(*arguments) -> str:
    time.sleep(
        0.2
    )  # long enough that the tasks overlap and each needs a lease of its own
    return ray.get_runtime_context().get_node_id()


def warm_every_node(cluster) -> None:
    # A worker process on every node first, as chapter 00 starts them: else the caller
    # hands queued tasks to the worker it already holds, while another node's first one
    # is starting.
    ray.get(
        [
            node_of_this_task.options(scheduling_strategy=on(n)).remote()
            for n in cluster.nodes()
        ]
    )
    # And their CPUs seen free again: SPREAD skips a node whose CPU still looks busy.
    helpers.within(30, "the warm-up tasks' CPUs to be free", all_cpus_free)


def all_cpus_free() -> None:
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources().get(
        "CPU", 0
    ):
        time.sleep(0.1)


@pytest.fixture
def roomy_cluster(stop_at_the_end):
    """A head and two worker nodes of four CPUs each, as chapter 00 starts them: room on
    any node for a task per node."""
    return helpers.start_or_join(None, worker_nodes=2, cpus_per_node=4, quiet=True)


def test_00_tasks_scheduled_by_default_do_not_run_on_every_node(roomy_cluster):
    """00 claims that SPREAD put one of its tasks on every node. Scheduled by default,
    the same tasks stay on the caller's node until half its CPUs are busy: they do
    not."""
    nodes = roomy_cluster.nodes()
    node_ids = [n.node_id for n in nodes]
    warm_every_node(roomy_cluster)

    def run(strategy: str) -> list[str]:
        return ray.get(
            [
                node_of_this_task.options(scheduling_strategy=strategy).remote()
                for _ in nodes
            ]
        )

    holds, detail = checks.ran_on_every_node(run("SPREAD"), node_ids)
    assert holds, detail
    holds, detail = checks.ran_on_every_node(run("DEFAULT"), node_ids)
    assert not holds, detail


def test_10_11_12_ranks_that_do_not_average_gradients_drift_apart():
    """10, 11 and 12 claim that every rank ended with the same weights, which the
    allreduce of the gradients (torch.distributed, Horovod, DDP) keeps so. Two ranks
    start from the same weights and train on their own shards: averaging the gradients,
    they stay identical; each stepping on its own gradients, as a rank without the
    allreduce does, they drift apart."""
    import torch

    def train(average: bool) -> list[str]:
        torch.manual_seed(0)
        first = torch.nn.Linear(8, 1)
        ranks = [first, torch.nn.Linear(8, 1)]
        ranks[1].load_state_dict(first.state_dict())  # rank 0's weights, broadcast
        shards = [
            torch.randn(64, 8, generator=torch.Generator().manual_seed(rank))
            for rank in range(2)
        ]
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
class Listener:
    """An actor that serves on a port of its own, as an executor's block manager
    does."""

    def __init__(self) -> None:
        self.server = socket.create_server((ray.util.get_node_ip_address(), 0))

    def address(self) -> tuple[str, int]:
        return self.server.getsockname()[:2]


def test_13_executors_started_by_spark_itself_are_no_ray_actors(
    small_cluster, monkeypatch
):
    """13 claims that every Spark executor is a Ray actor: RayDP starts each executor as
    a Java actor, so the host and port Spark records for it are where a live actor's
    process listens. The check finds an actor that serves on a port; but Spark's own
    cluster manager ("local-cluster", Spark's standalone cluster on one machine) starts
    executors that Spark knows just as well, in processes of its own: no Ray actor
    listens there, and it fails."""
    from pyspark import SparkContext
    from pyspark.sql import SparkSession
    from ray.util.state import list_actors

    def live_actor_addresses() -> dict:
        return addresses_of_actors(
            list_actors(
                address=small_cluster.address, filters=[("state", "=", "ALIVE")]
            )
        )

    executors = 2
    monkeypatch.setenv("SPARK_LOCAL_IP", "127.0.0.1")
    listener = Listener.remote()
    try:
        in_an_actor = ray.get(listener.address.remote())
        holds, detail = checks.executors_are_ray_actors(
            [in_an_actor], live_actor_addresses(), 1
        )
        assert holds, detail
        spark = (
            SparkSession.builder.master(f"local-cluster[{executors},1,512]")
            .config("spark.ui.enabled", "false")
            .config("spark.executor.memory", "512m")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .getOrCreate()
        )
        try:
            addresses = helpers.within(
                120, "Spark's executors registering", registered, spark, executors
            )
            holds, detail = checks.executors_are_ray_actors(
                addresses, live_actor_addresses(), executors
            )
        finally:
            spark.stop()
            # and Spark's driver JVM: else it lives as long as pytest
            SparkContext._gateway.shutdown()
            SparkContext._gateway.proc.terminate()
            SparkContext._gateway.proc.wait()
            SparkContext._gateway = SparkContext._jvm = None
    finally:
        ray.kill(listener)
    assert not holds, detail


def registered(spark, executors: int) -> list[tuple[str, int]]:
    while len(addresses := spark_executor_addresses(spark)) < executors:
        time.sleep(0.2)
    return addresses


def test_20_a_driver_with_another_inline_limit_stores_smaller_arguments(small_cluster):
    """20 claims that the object store takes over at Ray's 100 KiB: an argument above it
    is put into the store, one up to it travels inside the call. The caller applies the
    limit, from its own copy of Ray's settings, which the environment sets unless the
    cluster's system config does: a driver started with RAY_max_direct_call_object_size
    at 10 KiB sends smaller arrays through the store, and the check sees another
    threshold."""
    assert checks.store_takes_over_at(smallest_stored_argument())[0]
    measure = (
        "import helpers; from helpers.store import smallest_stored_argument; "
        f"helpers.start_or_join({small_cluster.address!r}, quiet=True); "
        "print('threshold', smallest_stored_argument())"
    )
    driver = subprocess.run(
        [sys.executable, "-c", measure],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RAY_max_direct_call_object_size": str(10 * 1024)},
    )
    assert driver.returncode == 0, driver.stderr[-2000:]
    [threshold] = [
        line.split()[1]
        for line in driver.stdout.splitlines()
        if line.startswith("threshold ")
    ]
    holds, detail = checks.store_takes_over_at(int(threshold))
    assert not holds, detail


@ray.remote(num_cpus=0)
class Wire:
    """A worker that sends or receives bytes on a connection of its own, as a Level 1
    library does, or takes them as a Ray call's argument."""

    def listen(self) -> tuple[str, int]:
        self.server = socket.create_server((ray.util.get_node_ip_address(), 0))
        return self.server.getsockname()[:2]

    def receive(self, nbytes: int) -> int:
        # The connection stays open: a count of connections misses one that closed.
        self.connection, _ = self.server.accept()
        got = 0
        while got < nbytes:
            got += len(self.connection.recv(2**20))
        return got

    def send(self, address: tuple[str, int], nbytes: int) -> None:
        self.connection = socket.create_connection(address)
        self.connection.sendall(bytes(nbytes))

    def take(self, data) -> int:
        return len(data)


def test_10_20_30_bytes_carried_by_ray_not_by_the_library(small_cluster):
    """10, 20 and 30 claim which carrier took an exchange's bytes: the library's own
    connections (10), Ray's connections (20's small arguments) or the object stores
    (20's large arguments, 30). The same bytes are sent three ways to a worker on
    another node: from a worker, over a connection of its own; from the driver, as
    call arguments under Ray's 100 KiB threshold; and over it. Each way's bytes are
    seen on its own carrier, and the check for any other carrier fails."""
    from helpers.traffic import CARRIERS, bytes_carried

    here = ray.get_runtime_context().get_node_id()
    first, second = [n for n in small_cluster.nodes() if n.node_id != here]
    sender = Wire.options(scheduling_strategy=on(first)).remote()
    receiver = Wire.options(scheduling_strategy=on(second)).remote()
    nbytes, chunk = 8 * MB, 64 * 1024
    counted = {}
    try:
        address = ray.get(receiver.listen.remote())
        with bytes_carried() as counted["library"]:
            received = receiver.receive.remote(nbytes)
            ray.get(sender.send.remote(address, nbytes))
            assert ray.get(received) == nbytes
        with bytes_carried() as counted["ray"]:
            calls = [receiver.take.remote(bytes(chunk)) for _ in range(nbytes // chunk)]
            assert sum(ray.get(calls)) == nbytes
        with bytes_carried() as counted["store"]:
            calls = [receiver.take.remote(bytes(MB)) for _ in range(nbytes // MB)]
            assert sum(ray.get(calls)) == nbytes
    finally:
        for actor in (sender, receiver):
            ray.kill(actor)
    if any(carried.unavailable for carried in counted.values()):
        pytest.skip(counted["library"].unavailable)
    for sent_by, carried in counted.items():
        for carrier in CARRIERS:
            holds, detail = checks.carried_by(carried, carrier, at_least=nbytes)
            assert holds == (carrier == sent_by), f"sent by {sent_by}: {detail}"


def test_21_actors_that_ask_for_no_cpu_stack_up(small_cluster):
    """21 claims that with one CPU per actor the joblib backend runs one worker per CPU
    of every node, each holding its CPU. Ray's pool actors ask for no CPU by default:
    they hold none, wherever they land, and the check sees it; it also sees workers
    stacked on one node."""
    from ray.util.joblib import register_ray

    register_ray()
    cpus_by_node = {n.node_id: int(n.cpus) for n in small_cluster.nodes()}

    def where_am_i(
        _: int,
    ) -> tuple[str, int, float]:  # here: the workers cannot import this module
        time.sleep(0.05)  # long enough for every worker to get some
        context = ray.get_runtime_context()
        return (
            context.get_node_id(),
            os.getpid(),
            context.get_assigned_resources().get("CPU", 0.0),
        )

    def pool_workers(ray_remote_args: dict | None) -> dict[int, tuple[str, float]]:
        with joblib.parallel_backend("ray", ray_remote_args=ray_remote_args):
            jobs = joblib.Parallel(n_jobs=-1)(
                joblib.delayed(where_am_i)(i) for i in range(30)
            )
        return {pid: (node, cpus) for node, pid, cpus in jobs}

    one_cpu_each = pool_workers({"num_cpus": 1})
    assert checks.one_worker_per_cpu(one_cpu_each, cpus_by_node)[0]
    holds, detail = checks.one_worker_per_cpu(pool_workers(None), cpus_by_node)
    assert not holds, detail
    # And workers that hold a CPU each, but stacked on one node (which Ray's accounting
    # rules out on these one-CPU nodes): the count per node fails on its own.
    head = small_cluster.nodes()[0].node_id
    holds, detail = checks.one_worker_per_cpu(
        {pid: (head, 1.0) for pid in one_cpu_each}, cpus_by_node
    )
    assert not holds, detail


@ray.remote(num_cpus=0)
def search_slice(
    vectors: np.ndarray, first: int, questions: np.ndarray, k: int
) -> tuple:
    # One shard's answer: its best k per question, numbered in the whole index.
    scores = questions @ vectors.T
    best = np.argsort(-scores, axis=1)[:, :k]
    return np.take_along_axis(scores, best, axis=1), best + first


def merge(answers: list[tuple], k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = np.concatenate([s for s, _ in answers], axis=1)
    ids = np.concatenate([i for _, i in answers], axis=1)
    best = np.argsort(-scores, axis=1)[:, :k]
    return np.take_along_axis(ids, best, axis=1), np.take_along_axis(
        scores, best, axis=1
    )


def test_22_a_fan_out_that_misses_a_shard_gives_another_answer(small_cluster):
    """22 claims the sharded answer is the single index's: every shard answers with its
    own best k, and the merge keeps the best of those. A fan-out that misses one shard
    (lost, or never asked) gives another answer, and the check sees it."""
    random = np.random.default_rng(0)
    index = random.standard_normal((3000, 16)).astype(np.float32)
    questions = index[random.choice(len(index), 20, replace=False)] + np.float32(0.05)
    k = 5
    exact_ids, exact_scores = merge(
        [ray.get(search_slice.remote(index, 0, questions, k))], k
    )
    answers = ray.get(
        [
            search_slice.remote(index[first : first + 1000], first, questions, k)
            for first in (0, 1000, 2000)
        ]
    )

    assert checks.same_top_k(*merge(answers, k), exact_ids, exact_scores)[0]
    holds, detail = checks.same_top_k(*merge(answers[1:], k), exact_ids, exact_scores)
    assert not holds, detail


@ray.remote(num_cpus=0)
class LinearExplainer:
    """Exact SHAP values of a linear model: each coefficient times the instance's
    distance from the background's mean, the answer Kernel SHAP approximates, without
    its sampling."""

    def __init__(self, coefficients: np.ndarray, background_mean: np.ndarray) -> None:
        self.coefficients, self.background_mean = coefficients, background_mean

    def explain(self, batch: tuple[int, np.ndarray]) -> np.ndarray:
        number, instances = batch
        time.sleep(1.0 if number == 0 else 0.0)  # the first batch finishes last
        return self.coefficients * (instances - self.background_mean)


def test_24_batches_gathered_as_they_finish_are_not_the_sequential_attributions(
    small_cluster,
):
    """24 claims that Alibi on Ray's actors gives the sequential attributions: it cuts
    the instances into batches, a pool of actors explains them, and the pool's ordered
    map puts each batch's answer back in its place. Gathered as they finish (the pool's
    unordered map, which Alibi uses only when the caller asks for a generator and
    reorders), or with a batch lost, the rows land in other instances' places, and the
    check fails."""
    random = np.random.default_rng(0)
    coefficients, background = (
        random.standard_normal(5),
        random.standard_normal((20, 5)),
    )
    instances = random.standard_normal((12, 5))
    sequential = coefficients * (instances - background.mean(axis=0))
    pool = ActorPool(
        [
            LinearExplainer.remote(coefficients, background.mean(axis=0))
            for _ in range(2)
        ]
    )
    batches = list(enumerate(np.array_split(instances, 4)))

    def explain(gather) -> np.ndarray:
        return np.concatenate(
            list(gather(lambda actor, batch: actor.explain.remote(batch), batches))
        )

    assert checks.same_attributions(explain(pool.map), sequential)[0]
    for name, gathered in (
        ("as they finish", explain(pool.map_unordered)),
        ("a batch lost", explain(pool.map)[3:]),
    ):
        holds, detail = checks.same_attributions(gathered, sequential)
        assert not holds, f"{name}: {detail}"


@ray.remote(num_cpus=0)
class Reader:
    def read(self, wrapped: list, copy: str) -> dict:
        me = psutil.Process()
        private_before = me.memory_full_info().uss
        array = ray.get(wrapped[0])
        if copy != "no copy":
            array = np.array(array)  # what a library that copies what it reads does
            array.flags.writeable = copy == "a copy"
        return {
            "pid": os.getpid(),
            "writeable": array.flags.writeable,
            "intact": float(array.sum()) == len(array),
            "private_growth": me.memory_full_info().uss - private_before,
        }


def test_30_a_read_that_copies_is_seen(small_cluster):
    """30 claims that workers on one node read an array without copying it. A reader
    that copies it gets a writeable array and as many private bytes as the array has;
    made read-only, the copy still shows in the private bytes: the check sees each."""
    megabytes = 64
    shared = ray.put(np.ones(megabytes * MB // 8))
    head = small_cluster.nodes()[0]
    readers = [Reader.options(scheduling_strategy=on(head)).remote() for _ in range(2)]

    def reads(copy: str) -> list[dict]:
        return ray.get([r.read.remote([shared], copy) for r in readers])

    assert checks.read_without_copying(reads("no copy"), megabytes)[0]
    for copy in ("a copy", "a read-only copy"):
        holds, detail = checks.read_without_copying(reads(copy), megabytes)
        assert not holds, f"{copy}: {detail}"
    for reader in readers:
        ray.kill(reader)


def holders(reference: ray.ObjectRef, nodes: int) -> list[str]:
    """The nodes that hold a copy, once ``nodes`` have reported one (they do so
    asynchronously)."""
    deadline = time.monotonic() + 10
    while True:
        found = object_locations([reference])[reference]["node_ids"]
        if len(found) >= nodes or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_32_a_table_sent_to_every_node_is_not_stored_only_where_used(small_cluster):
    """32 claims that S, passed by reference, is stored once per node that used it: each
    node fetches it when a task there first needs it. The joins run on two of the three
    nodes. Sent to every node first, as a library that broadcasts eagerly would, S is
    also on the node that ran no join, and the check sees it."""
    node_ids = [n.node_id for n in small_cluster.nodes()]
    head, used = node_ids[:2]  # the driver's node, where ray.put stores, and one more
    warm_every_node(small_cluster)

    def joins(table: ray.ObjectRef) -> list[str]:
        return ray.get(
            [
                node_of_this_task.options(
                    scheduling_strategy=on_node_id((head, used)[i % 2])
                ).remote(table)
                for i in range(8)
            ]
        )

    where_used = ray.put(np.ones(MB // 8))
    ran_on = joins(where_used)
    holds, detail = checks.stored_once_per_node(
        holders(where_used, 2), ran_on, node_ids, put_on=head
    )
    assert holds, detail

    everywhere = ray.put(np.ones(MB // 8))
    ray.get(
        [
            node_of_this_task.options(scheduling_strategy=on_node_id(node)).remote(
                everywhere
            )
            for node in node_ids
        ]
    )
    ran_on = joins(everywhere)
    holds, detail = checks.stored_once_per_node(
        holders(everywhere, 3), ran_on, node_ids, put_on=head
    )
    assert not holds, detail


def test_40_an_argument_passed_by_value_is_stored_once_per_call(small_cluster):
    """40 claims that an array passed by reference is stored once in all. Passed by
    value, Ray puts it into the caller's store once per call, and the check fails."""
    calls = 12
    table = np.ones(MB // 8)  # 1 MiB: over the 100 KiB a call carries inline
    warm_every_node(small_cluster)

    def spread(argument, closed=None) -> list:
        return [
            node_of_this_task.options(scheduling_strategy="SPREAD").remote(
                argument, closed
            )
            for _ in range(calls)
        ]

    reference = ray.put(table)
    by_reference, _ = objects_created_by(lambda closed: spread(reference, closed))
    by_value, _ = objects_created_by(lambda closed: spread(table, closed))
    assert checks.stored_once_by_reference(by_value, 1 + by_reference, calls)[
        0
    ]  # 1: the ray.put
    by_value_again, _ = objects_created_by(
        lambda closed: spread(table, closed)
    )  # the reference's place
    holds, detail = checks.stored_once_by_reference(by_value, by_value_again, calls)
    assert not holds, detail


@ray.remote
def part_of(table: np.ndarray, first: int, last: int) -> np.ndarray:
    return table[first:last].copy()


def test_33_partitions_returned_inline_are_in_no_store(small_cluster):
    """33 claims that Modin's table is held in the object store, one object per
    partition, the results of Modin's tasks. Ray keeps a task's return value in a node's
    store only from 100 KiB up: a smaller one travels inline to the caller and lives in
    its memory. Cut into parts that small, the same table is in no store, and the check
    sees it."""
    table = np.ones(4 * MB // 8)
    table_ref = ray.put(table)

    def part_sizes(parts: int) -> list[int | None]:
        bounds = np.linspace(0, len(table), parts + 1).astype(int)
        return held_sizes(
            [
                part_of.remote(table_ref, first, last)
                for first, last in zip(bounds[:-1], bounds[1:])
            ]
        )

    assert checks.held_in_the_store(part_sizes(4), table.nbytes)[0]  # 1 MiB each
    holds, detail = checks.held_in_the_store(
        part_sizes(64), table.nbytes
    )  # 64 KiB each
    assert not holds, detail


def test_34_dask_on_its_own_threads_leaves_nothing_in_the_store(small_cluster):
    """34 claims that a Dask array's intermediate chunks are objects in Ray's store.
    With Dask's own thread scheduler instead of Ray's, the same computation leaves none
    there; on Ray but in chunks under 100 KiB, its results travel inline and stay out of
    the store too."""
    import dask.array as da
    from ray.util.dask import RayDaskCallback, ray_dask_get

    class Results(RayDaskCallback):
        def __init__(self) -> None:
            super().__init__()
            self.refs: list = []

        def _ray_postsubmit(self, task, key, deps, object_ref) -> None:
            self.refs.append(object_ref)

    def check(scheduler, chunk: int):
        matrix = da.ones((4 * chunk, 4 * chunk), chunks=(chunk, chunk))  # 16 chunks
        with Results() as results:
            (matrix @ matrix.T).mean(axis=0).compute(scheduler=scheduler)
        sizes = [
            None if size is None else size / MB for size in held_sizes(results.refs)
        ]
        return checks.results_in_the_store(
            sizes, matrix.npartitions, matrix.nbytes / MB
        )

    assert check(ray_dask_get, chunk=250)[0]  # chunks of 500 KB
    for scheduler, chunk in (
        ("threads", 250),
        (ray_dask_get, 100),
    ):  # 80 KB: results travel inline
        holds, detail = check(scheduler, chunk)
        assert not holds, f"{scheduler}, chunks of {chunk}: {detail}"


def test_35_workers_that_read_their_rows_from_a_file_add_nothing_to_the_store(
    small_cluster,
):
    """35 claims that xgboost_ray hands each training actor its rows through the object
    store: it puts one shard per actor there, and the nodes' stores grow by the rows'
    bytes. A Level 1 launcher lets each worker read its own rows from shared storage
    instead, as Spark's or Horovod's workers do. Counted the same way (what the stores
    gain while the workers get their rows), that adds nothing there, and the check
    fails."""
    import pandas as pd
    import xgboost
    from xgboost_ray import RayDMatrix

    random = np.random.default_rng(0)
    rows, workers = 20_000, 2  # and 20 features, as in the chapter: 168 bytes a row
    train = pd.DataFrame(
        random.standard_normal((rows, 20)), columns=[f"f{i}" for i in range(20)]
    )
    train["label"] = random.integers(0, 2, rows)
    data_bytes = train.memory_usage(index=False).sum()

    matrix = RayDMatrix(train, label="label")
    through_the_store, _ = bytes_stored_by(
        lambda: matrix.load_data(workers), small_cluster.address
    )

    shared_file = os.path.join(
        small_cluster.storage, "train.parquet"
    )  # what every node can read
    train.to_parquet(shared_file)

    @ray.remote(num_cpus=1)
    def read_my_rows(rank: int) -> int:
        mine = pd.read_parquet(shared_file).iloc[rank::workers]
        return xgboost.DMatrix(
            mine.drop(columns="label"), label=mine["label"]
        ).num_row()

    def read_from_the_file() -> list[int]:
        return ray.get([read_my_rows.remote(rank) for rank in range(workers)])

    from_a_file, rows_read = bytes_stored_by(read_from_the_file, small_cluster.address)
    os.remove(shared_file)

    holds, detail = checks.rows_entered_the_store(
        through_the_store, len(matrix.refs), workers, data_bytes
    )
    assert holds, detail
    assert sum(rows_read) == rows  # the workers did get every row
    holds, detail = checks.rows_entered_the_store(
        from_a_file, len(rows_read), workers, data_bytes
    )
    assert not holds, detail


def test_36_trials_that_capture_the_data_put_nothing_in_the_store(small_cluster):
    """36 claims that Tune's shared data entered each node's store once, however many
    trials read it: tune.with_parameters puts it there and hands each trial the
    reference. A trial function that captures the array instead carries it in its own
    definition, which Ray ships through its control store (the GCS), not the object
    store: counted the same way, no node's store takes the array, and the check
    fails."""
    from ray import tune

    from helpers.store import store_traffic

    data, trials = np.ones(MB // 8), 4
    here = ray.get_runtime_context().get_node_id()

    def by_reference(config: dict, data: np.ndarray) -> None:
        tune.report(
            {"node": ray.get_runtime_context().get_node_id(), "sum": float(data.sum())}
        )

    def captured(config: dict) -> None:
        tune.report(
            {"node": ray.get_runtime_context().get_node_id(), "sum": float(data.sum())}
        )

    def search(make_trainable) -> tuple[dict, list[str]]:
        with (
            store_traffic() as traffic
        ):  # with_parameters puts the data as it is called
            tuner = tune.Tuner(
                make_trainable(),
                param_space={"trial": tune.grid_search(list(range(trials)))},
                run_config=tune.RunConfig(
                    storage_path=small_cluster.storage, verbose=0
                ),
            )
            results = tuner.fit().get_dataframe()
        assert (results["sum"] == len(data)).all()  # every trial read the whole array
        return traffic, list(results["node"])

    shared = search(lambda: tune.with_parameters(by_reference, data=data))
    holds, detail = checks.entered_once_per_node(*shared, here, data.nbytes)
    assert holds, detail
    holds, detail = checks.entered_once_per_node(
        *search(lambda: captured), here, data.nbytes
    )
    assert not holds, detail


@ray.remote(num_cpus=0)
class Peer:
    """A member of a collective group, or of the same exchange done with Ray calls."""

    def allreduce_ones(self, megabytes: int, group: str) -> float:
        import torch
        from ray.util import collective

        tensor = torch.ones(megabytes * MB // 4)
        collective.allreduce(tensor, group_name=group)
        return float(tensor[0])

    def ones(self, megabytes: int) -> np.ndarray:
        return np.ones(megabytes * MB // 4, dtype=np.float32)

    def total(self, parts: list) -> float:  # references inside a list arrive unresolved
        return float(sum(ray.get(parts))[0])


def test_60_an_exchange_through_ray_calls_fills_the_store(small_cluster):
    """60 claims that a collective group's allreduce moves its bytes outside the object
    store: over Gloo, between the members' processes. The same exchange with the
    collective switched off (each member returns its tensor, and every member reads all
    of them through the store) puts them into the stores, counted the same way, and the
    check fails."""
    import ray.experimental.collective

    from helpers.store import store_traffic

    members, megabytes = 2, 8
    peers = [
        Peer.options(scheduling_strategy="SPREAD").remote() for _ in range(members)
    ]
    group = ray.experimental.collective.create_collective_group(
        peers, backend="torch_gloo"
    )
    with store_traffic() as over_gloo:
        sums = ray.get(
            [peer.allreduce_ones.remote(megabytes, group.name) for peer in peers]
        )
    holds, detail = checks.kept_out_of_the_store(
        sum(b for _, b in over_gloo.values()), megabytes * MB, sums, members
    )
    assert holds, detail

    with store_traffic() as through_the_store:
        parts = [peer.ones.remote(megabytes) for peer in peers]
        sums = ray.get([peer.total.remote(parts) for peer in peers])
    holds, detail = checks.kept_out_of_the_store(
        sum(b for _, b in through_the_store.values()), megabytes * MB, sums, members
    )
    assert not holds, detail
    ray.experimental.collective.destroy_collective_group(group)
    for peer in peers:
        ray.kill(peer)


def test_61_a_tensor_returned_without_direct_transport_enters_the_store(small_cluster):
    """61 claims that a tensor returned by a method marked tensor_transport="gloo" and
    passed by reference to another actor goes past the object store. The same method
    without the mark (the mechanism off) returns it through the store: counted the same
    way, the stores take its bytes twice (put, then pulled), and the check fails."""
    import ray.experimental.collective
    import torch

    from helpers.store import store_traffic

    @ray.remote(num_cpus=0)
    class Holder:
        @ray.method(tensor_transport="gloo")
        def make(self, megabytes: int):
            return torch.ones(megabytes * MB // 4)

        def make_plain(self, megabytes: int):
            return torch.ones(megabytes * MB // 4)

        def total(self, tensor) -> float:
            return float(tensor.sum())

    sender, receiver = [
        Holder.options(scheduling_strategy="SPREAD").remote() for _ in range(2)
    ]
    group = ray.experimental.collective.create_collective_group(
        [sender, receiver], backend="torch_gloo"
    )
    stored = {}
    for path, make in (("direct", sender.make), ("store", sender.make_plain)):
        with store_traffic() as traffic:
            assert ray.get(receiver.total.remote(make.remote(8))) == 8 * MB // 4
        stored[path] = {8 * MB: sum(nbytes for _, nbytes in traffic.values())}
    holds, detail = checks.passed_past_the_store(stored["direct"])
    assert holds, detail
    holds, detail = checks.passed_past_the_store(stored["store"])
    assert not holds, detail
    ray.experimental.collective.destroy_collective_group(group)
    for holder in (sender, receiver):
        ray.kill(holder)


def test_62_a_pipeline_of_actor_calls_runs_a_task_per_execution(small_cluster):
    """62 claims that a compiled graph runs every execution of a pipeline in one task
    per stage. The same stages called with .remote() (compilation switched off) run a
    task per execution, and the check fails."""
    from ray.dag import InputNode

    @ray.remote(num_cpus=0)
    class Stage:
        def __init__(self) -> None:
            self.task_ids: set[str] = set()

        def step(self, value: int) -> int:
            self.task_ids.add(ray.get_runtime_context().get_task_id())
            return value + 1

        def tasks_seen(self) -> int:
            return len(self.task_ids)

    executions = 20
    called = [Stage.remote() for _ in range(2)]
    for i in range(executions):
        assert ray.get(called[1].step.remote(called[0].step.remote(i))) == i + 2
    holds, detail = checks.one_task_per_stage(
        ray.get([s.tasks_seen.remote() for s in called]), executions
    )
    assert not holds, detail

    compiled_stages = [Stage.remote() for _ in range(2)]
    with InputNode() as value:
        dag = compiled_stages[1].step.bind(compiled_stages[0].step.bind(value))
    compiled = dag.experimental_compile()
    assert [ray.get(compiled.execute(i)) for i in range(executions)] == [
        i + 2 for i in range(executions)
    ]
    compiled.teardown()
    holds, detail = checks.one_task_per_stage(
        ray.get([s.tasks_seen.remote() for s in compiled_stages]), executions
    )
    assert holds, detail
    for stage in called + compiled_stages:
        ray.kill(stage)


def test_63_a_materialized_dataset_larger_than_the_stores_spills(small_cluster):
    """63 claims that a dataset twice the size of all the object stores streams through
    them without spilling: Ray Data's executor holds producers back while their blocks
    wait. With streaming switched off (materialize() keeps every block), the same
    dataset must spill, counted the same way, and the check fails."""
    import logging

    from helpers.store import spill_counters

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    stores_bytes = sum(node.object_store_mb for node in small_cluster.nodes()) * MB
    block_mb = 8
    blocks = int(2 * stores_bytes / (block_mb * MB))

    def make_block(batch: dict) -> dict:
        return {
            "values": np.stack(
                [np.full(block_mb * MB // 8, float(i)) for i in batch["id"]]
            )
        }

    dataset = ray.data.range(blocks, override_num_blocks=blocks).map_batches(
        make_block, batch_size=1
    )
    spilled_before = spill_counters(small_cluster.address)["spilled MiB"]
    materialized = dataset.materialize()
    total = sum(
        float(batch["values"][:, 0].sum())
        for batch in materialized.iter_batches(batch_size=1, batch_format="numpy")
    )
    spilled = spill_counters(small_cluster.address)["spilled MiB"] - spilled_before
    holds, detail = checks.streamed_without_spilling(
        materialized.count(),
        blocks,
        total,
        spilled,
        blocks * block_mb * MB,
        stores_bytes,
    )
    del materialized
    assert spilled > 0 and not holds, detail


@ray.remote(num_cpus=0)
class Runs:
    def __init__(self) -> None:
        self.nodes: list[str] = []

    def add(self, node_id: str) -> None:
        self.nodes.append(node_id)

    def read(self) -> list[str]:
        return self.nodes


@ray.remote(num_cpus=0)
def make_array(runs) -> np.ndarray:
    ray.get(runs.add.remote(ray.get_runtime_context().get_node_id()))
    return np.arange(1_000_000, dtype=np.float64)


@pytest.fixture
def cluster_to_break(no_leftovers):
    """A head and two worker nodes, stopped after the test that kills them."""
    live = helpers.start_or_join(None, worker_nodes=2, quiet=True)
    yield live
    live.shutdown()


def test_31_a_lost_object_whose_task_may_not_run_again_stays_lost(cluster_to_break):
    """31 claims Ray rebuilt a lost object from its lineage: the driver owns the result
    and knows the task that made it, so Ray runs the task again. As in the chapter, the
    task runs on a worker node, reports each run to an actor on the head, and the node
    is killed. With re-execution allowed it runs twice and the check holds; with
    max_retries=0 (lineage that may not be replayed) ray.get raises ObjectLostError, the
    task ran once, and the check fails."""
    nodes = cluster_to_break.nodes()
    runs = Runs.options(scheduling_strategy=on(nodes[0])).remote()
    expected = np.arange(1_000_000, dtype=np.float64)

    def lose_and_get(victim, max_retries: int):
        soft = NodeAffinitySchedulingStrategy(victim.node_id, soft=True)
        made = make_array.options(
            scheduling_strategy=soft, max_retries=max_retries
        ).remote(runs)
        ray.wait([made], fetch_local=False)
        start = len(ray.get(runs.read.remote()))
        cluster_to_break.kill_node(victim.node_id)
        try:
            array = helpers.within(120, "ray.get of the lost object", ray.get, made)
        except ray.exceptions.ObjectLostError:
            array = None
        ran_on = ray.get(runs.read.remote())[start - 1 :]
        return checks.rebuilt_from_lineage(
            ran_on,
            victim.node_id,
            array is not None and bool((array == expected).all()),
        )

    assert lose_and_get(nodes[1], max_retries=3)[0]
    holds, detail = lose_and_get(nodes[2], max_retries=0)
    assert not holds, detail


def test_23_a_planner_that_never_replans_does_not_converge(tmp_path, no_leftovers):
    """23 claims the plan converged to within 3 % of the optimum: at each re-plan the
    planner gathers the channels' counters through actor calls and learns from them.
    With re-planning switched off, the first plan, made from no data, stands, and the
    chapter's own check fails."""
    helpers.cluster.shutdown()  # one cluster at a time: the notebook starts its own
    notebook = ROOT / "notebooks" / "23_online_actors.ipynb"
    with pytest.raises(NotebookFailed, match="ClaimFailed: the plan converged"):
        execute(notebook, tmp_path / notebook.name, {"smoke": True, "replan": "never"})
