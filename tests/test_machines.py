"""helpers.machines: nodes that share only a network and one folder, that refuse a wrong
token, and that are all gone when whoever started them dies."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap

import pytest
from conftest import ROOT, wait_until_gone

from helpers.cluster import _advertise_loopback, _require_token
from helpers.machines import SimulatedCluster, unavailable_reason

pytestmark = pytest.mark.skipif(
    unavailable_reason() is not None,
    reason=f"no simulated machines here: {unavailable_reason()}",
)

# On every node: its address, whether it sees a file the driver left in /tmp and one in
# the storage folder, whether it can write to the machine's own files, and the folder
# its tasks run in.
ON_EVERY_NODE = textwrap.dedent("""
    import json, os, sys
    import ray
    import helpers
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cluster = helpers.start_or_join(sys.argv[1], quiet=True)

    @ray.remote(num_cpus=0)
    def look(driver_file, shared_file):
        try:
            open("/usr/written-by-a-task", "w").close()
            image_writable = True
        except OSError:
            image_writable = False
        return {
            "address": ray.util.get_node_ip_address(),
            "driver_file": os.path.exists(driver_file),
            "shared_file": os.path.exists(shared_file),
            "image_writable": image_writable,
            "cwd": os.getcwd(),
        }

    seen = ray.get([
        look.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False)
        ).remote(sys.argv[2], sys.argv[3])
        for n in cluster.nodes()
    ])
    print(json.dumps({"seen": seen, "machines": cluster.machines()}))
    cluster.shutdown()
""")


@pytest.fixture(scope="module")
def machines():
    # As a local cluster started in this process leaves Ray's settings: none of it may
    # reach a node.
    _advertise_loopback(True)
    _require_token()
    storage = tempfile.mkdtemp(prefix="machines-test-", dir="/var/tmp")
    with SimulatedCluster(storage) as cluster:
        yield cluster, storage, cluster.spec.environment["RAY_AUTH_TOKEN"]
    shutil.rmtree(storage, ignore_errors=True)


def run_inside(
    cluster, code: str, *args: str, token: str | None
) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    if token is not None:
        environment["RAY_AUTH_TOKEN"] = token
    return cluster.run(
        [sys.executable, "-c", code, *args],
        env=environment,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_nodes_share_only_the_network_and_the_storage_folder(machines):
    cluster, storage, token = machines
    with (
        tempfile.NamedTemporaryFile(prefix="driver-", dir="/tmp") as driver_file,
        tempfile.NamedTemporaryFile(prefix="shared-", dir=storage) as shared_file,
    ):
        done = run_inside(
            cluster,
            ON_EVERY_NODE,
            cluster.address,
            driver_file.name,
            shared_file.name,
            token=token,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    by_address = {row["address"]: row for row in report["seen"]}
    assert (
        sorted(by_address)
        == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        == cluster.node_addresses
    )
    assert report["machines"] == 3
    head, *workers = (by_address[a] for a in sorted(by_address))
    assert head["driver_file"] and not any(w["driver_file"] for w in workers), (
        by_address
    )
    assert all(row["shared_file"] for row in by_address.values()), by_address
    assert not any(w["image_writable"] for w in workers), by_address
    assert all(w["cwd"] == "/tmp/work" for w in workers), by_address


@pytest.mark.parametrize("token", ["wrong", None], ids=["wrong-token", "no-token"])
def test_a_client_without_the_token_is_refused(machines, token):
    cluster, _, right = machines
    code = "import sys, helpers; helpers.start_or_join(sys.argv[1], quiet=True)"
    done = run_inside(
        cluster,
        code,
        cluster.address,
        token=None if token is None else secrets.token_hex(32),
    )
    assert done.returncode != 0
    assert "Authentication" in done.stderr or "auth" in done.stderr.lower(), (
        done.stderr[-2000:]
    )
    assert (
        cluster.status()["nodes"] == cluster.node_addresses
    )  # and the cluster is unharmed


# The jobs API: what the ShadowRay attacks used to run code on open clusters.
ASK_THE_DASHBOARD = textwrap.dedent("""
    import sys, urllib.error, urllib.request
    request = urllib.request.Request("http://127.0.0.1:8265/api/jobs/")
    if sys.argv[1]:
        request.add_header("Authorization", "Bearer " + sys.argv[1])
    try:
        print(urllib.request.urlopen(request, timeout=30).status)
    except urllib.error.HTTPError as error:
        print(error.code)
""")


def test_the_dashboard_answers_only_the_token(machines):
    cluster, _, token = machines
    answers = {}
    for name, given in {
        "none": "",
        "wrong": secrets.token_hex(32),
        "right": token,
    }.items():
        done = run_inside(cluster, ASK_THE_DASHBOARD, given, token=None)
        assert done.returncode == 0, done.stderr[-2000:]
        answers[name] = int(done.stdout.split()[-1])
    assert answers == {"none": 401, "wrong": 403, "right": 200}


def test_a_chapter_that_needs_storage_says_so_on_several_machines(machines):
    cluster, _, token = machines
    code = "import sys, helpers; helpers.start_or_join(sys.argv[1], quiet=True).storage"
    done = run_inside(cluster, code, cluster.address, token=token)
    assert done.returncode != 0 and "MissingStorage" in done.stderr
    assert "Set storage_path" in done.stderr


def test_every_process_ends_when_the_starter_is_killed(tmp_path):
    storage = tempfile.mkdtemp(prefix="machines-test-", dir="/var/tmp")
    starter = textwrap.dedent(f"""
        import json, sys, time
        from helpers.machines import SimulatedCluster
        cluster = SimulatedCluster({storage!r}, worker_cpus=(1,)).start()
        print(json.dumps(sorted(cluster.processes())), flush=True)
        time.sleep(600)
    """)
    process = subprocess.Popen(
        [sys.executable, "-c", starter], stdout=subprocess.PIPE, text=True
    )
    try:
        inside = set(json.loads(process.stdout.readline()))
        assert len(inside) >= 4, "expected the supervisor and two nodes' processes"
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert not wait_until_gone(inside, timeout=30), "processes outlived their starter"
    os.rmdir(storage)


def test_a_state_api_chapter_is_refused_by_a_cluster_without_a_dashboard():
    storage = tempfile.mkdtemp(prefix="machines-test-", dir="/var/tmp")
    with SimulatedCluster(storage, worker_cpus=(), dashboard=False) as cluster:
        code = (
            "import sys, helpers; "
            "helpers.start_or_join(sys.argv[1], dashboard=True, quiet=True)"
        )
        done = cluster.run(
            [sys.executable, "-c", code, cluster.address],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    os.rmdir(storage)
    assert done.returncode != 0 and "MissingDashboard" in done.stderr, done.stderr[
        -2000:
    ]
    assert "--include-dashboard=true" in done.stderr


def test_storage_under_a_private_folder_is_refused():
    with pytest.raises(ValueError, match="each node has of its own"):
        SimulatedCluster("/tmp")


def test_a_checkout_under_a_private_folder_is_refused_before_any_node_starts(
    monkeypatch,
):
    # A clone under /tmp: its environment would be hidden on every node by the node's
    # own /tmp.
    monkeypatch.setattr(sys, "prefix", "/tmp/a-clone/.venv")
    with (
        tempfile.TemporaryDirectory(dir="/var/tmp") as storage,
        pytest.raises(
            RuntimeError, match="Clone the book, and make its environment, elsewhere"
        ),
    ):
        SimulatedCluster(storage).start()
