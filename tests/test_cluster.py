"""helpers.cluster: loopback only, nothing left behind, idempotent, fails fast;
helpers.store counts."""

from __future__ import annotations

import os
import re
import time

import numpy as np
import psutil
import pytest
import ray
from conftest import ray_processes, shm_files, wait_until_gone

import helpers
from helpers.cluster import InfeasibleRequest
from helpers.network import is_loopback, listening_addresses
from helpers.store import objects_created_by


def our_processes() -> list[psutil.Process]:
    return [psutil.Process(), *psutil.Process().children(recursive=True)]


@pytest.mark.parametrize("dashboard", [False, True], ids=["no-dashboard", "dashboard"])
def test_every_listener_is_on_loopback(dashboard, no_leftovers):
    cluster = helpers.start_or_join(
        None, worker_nodes=1, dashboard=dashboard, quiet=True
    )
    try:
        check_listeners(cluster)
    finally:
        cluster.shutdown()


def check_listeners(cluster):
    # Run a task on each node so that worker processes are listening too.
    @ray.remote(num_cpus=1)
    def node_id():
        return ray.get_runtime_context().get_node_id()

    ids = {
        ray.get(node_id.options(scheduling_strategy="SPREAD").remote())
        for _ in range(4)
    }
    listeners = []
    for proc in our_processes():
        try:
            listeners += [
                (proc.name(), address) for address in listening_addresses(proc.pid)
            ]
        except psutil.NoSuchProcess:
            pass
    assert len(listeners) >= 6, (
        f"expected GCS, raylets and agents listening, found {listeners}"
    )
    exposed = [
        (name, (ip, port)) for name, (ip, port) in listeners if not is_loopback(ip)
    ]
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert {n.address for n in cluster.nodes()} == {"127.0.0.1"}
    assert len(ids) >= 1


def test_token_authentication_is_on(cluster):
    import os

    assert os.environ["RAY_AUTH_MODE"] == "token"
    from helpers.internals import AuthenticationMode, get_authentication_mode

    assert get_authentication_mode() == AuthenticationMode.TOKEN


def test_shutdown_leaves_no_process_and_no_shared_memory():
    before_pids, before_shm = ray_processes(), shm_files()
    live = helpers.start_or_join(None, worker_nodes=2, quiet=True)
    started = ray_processes() - before_pids
    assert len(started) >= 3, "expected at least a GCS and three raylets"
    live.shutdown()
    assert not ray.is_initialized()
    assert not wait_until_gone(started), "processes survived shutdown"
    assert shm_files() <= before_shm


def test_shutdown_puts_back_the_settings_the_start_changed(no_leftovers):
    from helpers.cluster import RETRY_REPORTS, Settings

    before = Settings.save()
    live = helpers.start_or_join(None, worker_nodes=0, quiet=True, report_retries=False)
    helpers.quiet_ray_data()
    assert Settings.save() != before, (
        "the start changed nothing: this test checks nothing"
    )
    assert os.environ[RETRY_REPORTS] == "0"
    live.shutdown()
    assert Settings.save() == before


def test_running_the_setup_twice_reuses_the_cluster(cluster):
    again = helpers.start_or_join(None, worker_nodes=1, quiet=True)
    assert again is cluster and ray.is_initialized()
    assert len(again.nodes()) == 2


def test_other_arguments_replace_the_cluster(no_leftovers):
    first = helpers.start_or_join(None, worker_nodes=1, quiet=True)
    first_processes = {p.pid for p in psutil.Process().children(recursive=True)}
    second = helpers.start_or_join(None, worker_nodes=0, quiet=True)
    try:
        assert second is not first and len(second.nodes()) == 1
        assert not wait_until_gone(first_processes - {p.pid for p in our_processes()})
    finally:
        second.shutdown()


def test_node_names_put_the_head_first(cluster):
    names = cluster.node_names()
    assert [names[n.node_id] for n in cluster.nodes()] == ["head", "worker 1"]


def test_the_table_shows_nodes_cpus_gpus_and_store(cluster):
    table = cluster.table()
    assert "object store (MB)" in table
    assert re.search(r"^total\s+2 nodes\s+2\s+0\s+400$", table, re.MULTILINE), table
    assert table.count("127.0.0.1") == 2


@pytest.mark.parametrize(
    "request_kwargs",
    [
        {"workers": 3, "cpus": 1},  # more workers than CPUs in the cluster
        {"workers": 1, "cpus": 2},  # more CPUs than any one node has
        {"workers": 1, "gpus": 1},  # a GPU on a cluster without one
        {"workers": 3, "cpus": 1, "spread": True},  # more separate nodes than exist
    ],
)
def test_an_infeasible_request_fails_fast_and_says_why(cluster, request_kwargs):
    start = time.monotonic()
    with pytest.raises(InfeasibleRequest, match=r"Asked for .* it has 2 node\(s\)"):
        cluster.require(**request_kwargs)
    assert time.monotonic() - start < 10, "the check must not wait on Ray's scheduler"


def test_a_feasible_request_passes(cluster):
    cluster.require(workers=2, cpus=1, spread=True)
    cluster.require(workers=2, cpus=0.5)


def test_a_bad_cluster_shape_is_refused():
    with pytest.raises(ValueError, match="object store"):
        helpers.start_or_join(None, object_store_mb=10, quiet=True)


def test_an_address_where_nothing_answers_fails_fast():
    start = time.monotonic()
    with pytest.raises(
        ConnectionError, match="No Ray cluster answers at '127.0.0.1:9'"
    ):
        helpers.start_or_join("127.0.0.1:9", quiet=True)
    assert time.monotonic() - start < 10, "ray.init would have retried for minutes"


def test_a_ray_client_address_is_refused_with_the_way_out():
    with pytest.raises(ValueError, match="ray job submit"):
        helpers.start_or_join("ray://127.0.0.1:10001", quiet=True)


def test_shutdown_with_no_cluster_does_nothing():
    helpers.cluster.shutdown()
    assert not ray.is_initialized()


def test_a_large_argument_is_stored_once_per_call_and_a_reference_never(cluster):
    @ray.remote
    def length(array, *not_before):
        return len(array)

    array = np.zeros(200_000)  # 1.6 MB: over the 100 KiB that Ray passes inline
    by_value, lengths = objects_created_by(
        lambda closed: [length.remote(array, closed) for _ in range(3)]
    )
    reference = ray.put(array)
    by_reference, _ = objects_created_by(
        lambda closed: [length.remote(reference, closed) for _ in range(3)]
    )
    assert (by_value, by_reference, lengths) == (3, 0, [200_000] * 3)


def test_a_killed_actors_cpu_is_awaited_and_a_worker_killed_on_cue(cluster):
    """helpers.faults kills the worker its progress names, once; the cluster's
    CPUs are then seen free again."""
    from helpers.faults import KillWhen, ProgressLog

    @ray.remote(num_cpus=1)
    class Worker:
        def work(self, log, steps: int) -> None:
            for step in range(steps):
                log.record.remote(
                    step=step,
                    pid=os.getpid(),
                    node=ray.get_runtime_context().get_node_id(),
                )
                time.sleep(0.2)

    log = ProgressLog.remote()
    killer = KillWhen(
        log, due=lambda rows: len(rows) >= 3, victim=lambda rows: rows[-1]
    )
    worker = Worker.remote()
    killer.start()
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(worker.work.remote(log, 100), timeout=60)
    killer.stop()
    steps = ray.get(log.read.remote())
    assert killer.killed["pid"] == steps[0]["pid"]
    assert 3 <= killer.killed["step"] + 1 <= len(steps) < 100
    cluster.wait_for_free_cpus(timeout_s=30)
    assert ray.available_resources()["CPU"] == ray.cluster_resources()["CPU"]
