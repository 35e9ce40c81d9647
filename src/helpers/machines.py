"""A Ray cluster of simulated machines: nodes that share nothing but a network and one
folder.

Every node of :func:`helpers.start_or_join`'s local cluster sees the same
``/tmp``, ``/dev/shm`` and working directory, so a chapter that writes a file
in the driver's temp folder and reads it in a task passes there, and fails on
the reader's real cluster. This cluster is shaped like a real one instead:

* the head node, and the driver beside it, are this machine's files, with a
  ``/dev/shm`` and a Ray temp folder of their own;
* each worker node has its own address (127.0.0.2, 127.0.0.3, ...), its own
  ``/tmp``, ``/dev/shm`` and home, and sees the rest of the machine's files
  read-only, as a node sees its image;
* one folder, ``storage``, is shared and writable everywhere: it stands for the
  NFS mount or bucket a real cluster's nodes share;
* nodes differ in size (by default a 2-CPU head and 1-CPU workers), so that
  where work lands is the placement strategy's doing, not the shape's.

It all runs in private Linux namespaces (user, network, mount and process; no
root needed): nothing outside can reach its addresses, and when the
namespace's first process dies, the kernel ends every process in it, also if
the test run that started it is killed.

    # not under /tmp: each node has its own
    with SimulatedCluster("/var/tmp/shared") as machines:
        machines.run([sys.executable, "-m", "booktools.run", "notebooks/33_modin.ipynb",
                      "-p", "ray_address", machines.address,
                      "-p", "storage_path", "/var/tmp/shared"])

The tests run every notebook this way. Run as ``python -m helpers.machines
SPEC``, this module is the namespace's first process (see :func:`_supervise`).
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HEAD_ADDRESS = "127.0.0.1"
GCS_PORT = 6379
DASHBOARD_PORT = 8265
NAMESPACES = [
    "unshare",
    "--user",
    "--map-root-user",
    "--net",
    "--pid",
    "--fork",
    "--kill-child",
    "--mount-proc",
]
# A folder under these would be hidden on the worker nodes by their own /tmp and
# /dev/shm.
PRIVATE_TO_EACH_NODE = ("/tmp", "/dev/shm")


@dataclass(frozen=True)
class MachinesSpec:
    """The cluster's shape: a head of ``head_cpus`` CPUs and one worker node per entry
    of ``worker_cpus``."""

    storage: str
    head_cpus: int = 2
    worker_cpus: tuple[int, ...] = (1, 1)
    object_store_mb: int = 200
    dashboard: bool = True
    environment: dict[str, str] = field(
        default_factory=dict
    )  # for every node: the token, say

    def __post_init__(self) -> None:
        storage = os.path.realpath(self.storage)
        if hidden_on_the_nodes(storage):
            raise ValueError(
                f"The shared storage folder {self.storage!r} lies under "
                f"{' or '.join(PRIVATE_TO_EACH_NODE)}, which each node has of its own. "
                "Choose a folder elsewhere, e.g. under /var/tmp."
            )
        if not os.path.isdir(storage):
            raise ValueError(
                f"The shared storage folder {self.storage!r} does not exist."
            )
        if (
            self.head_cpus < 1
            or any(c < 1 for c in self.worker_cpus)
            or self.object_store_mb < 80
        ):
            raise ValueError(f"Not a cluster shape: {self}")

    @property
    def worker_addresses(self) -> list[str]:
        return [f"127.0.0.{i}" for i in range(2, 2 + len(self.worker_cpus))]


def hidden_on_the_nodes(path: str | Path) -> bool:
    """Whether a folder lies under one that every node has of its own
    (/tmp, /dev/shm)."""
    path = os.path.realpath(path)
    return any(
        path == private or path.startswith(private + "/")
        for private in PRIVATE_TO_EACH_NODE
    )


def unavailable_reason() -> str | None:
    """Why this machine cannot run simulated machines, or None when it can."""
    if sys.platform != "linux":
        return "it needs Linux namespaces"
    for tool in ("unshare", "nsenter", "ip", "mount"):
        if shutil.which(tool) is None:
            return f"the `{tool}` command is not installed"
    probe = subprocess.run([*NAMESPACES, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"this machine refuses private namespaces ({probe.stderr.strip()})"
    return None


class SimulatedCluster:
    """A head and worker nodes in private namespaces, from :meth:`start` until
    :meth:`stop`.

    ``address`` is the head's GCS address; commands given to :meth:`run` run
    inside, as a driver on the head node would.
    """

    def __init__(
        self,
        storage: str | Path,
        *,
        head_cpus: int = 2,
        worker_cpus: tuple[int, ...] = (1, 1),
        object_store_mb: int = 200,
        dashboard: bool = True,
        environment: dict[str, str] | None = None,
    ) -> None:
        # Token authentication always: the given token, or a fresh one for this cluster.
        environment = {"RAY_AUTH_TOKEN": secrets.token_hex(32), **(environment or {})}
        self.spec = MachinesSpec(
            str(storage),
            head_cpus,
            tuple(worker_cpus),
            object_store_mb,
            dashboard,
            environment,
        )
        self._supervisor: subprocess.Popen | None = None
        # The namespaces' first process, as this machine numbers it.
        self._inside_pid = 0
        self.address = f"{HEAD_ADDRESS}:{GCS_PORT}"
        self.node_addresses: list[str] = []
        self.start_s = 0.0

    def start(self, timeout_s: float = 90) -> SimulatedCluster:
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(f"Cannot simulate separate machines here: {reason}.")
        for needed in (
            sys.prefix,
            Path(__file__).parent,
        ):  # the nodes run this Python and these helpers
            if hidden_on_the_nodes(needed):
                raise RuntimeError(
                    f"Cannot simulate separate machines from {needed}: it lies under "
                    f"{' or '.join(PRIVATE_TO_EACH_NODE)}, "
                    "which each node has of its own, "
                    "so the nodes would not find it. Clone the book, and make its "
                    "environment, elsewhere."
                )
        began = time.perf_counter()
        self._supervisor = subprocess.Popen(
            [
                *NAMESPACES,
                sys.executable,
                "-m",
                "helpers.machines",
                json.dumps(asdict(self.spec)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_without_ray_settings(),
            # Its GCS client logs each retry; what went wrong comes back in its answer
            # instead.
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        ready = _read_line(self._supervisor, timeout_s)
        if not ready.get("address"):
            self.stop()
            raise RuntimeError(
                f"The simulated cluster did not start: {ready.get('error', ready)}"
            )
        self._inside_pid = _only_child(self._supervisor.pid)
        self.node_addresses = ready["nodes"]
        self.start_s = time.perf_counter() - began
        return self

    def command(self, args: list[str], cwd: str | Path | None = None) -> list[str]:
        """``args`` as a command that runs inside, on the head node, in ``cwd``
        (default: ours)."""
        return [
            "nsenter",
            "--target",
            str(self._inside_pid),
            "--user",
            "--net",
            "--mount",
            "--pid",
            f"--wd={cwd or os.getcwd()}",
            "--",
            *args,
        ]

    def driver_environment(self) -> dict[str, str]:
        """Ours, with the cluster's token instead of our Ray settings: for a driver to
        run inside."""
        return {
            **_without_ray_settings(),
            "RAY_AUTH_TOKEN": self.spec.environment["RAY_AUTH_TOKEN"],
        }

    def run(self, args: list[str], **options: Any) -> subprocess.CompletedProcess:
        """Run a command inside (see :meth:`command`), by default with
        :meth:`driver_environment`.

        ``options`` are :func:`subprocess.run`'s.
        """
        options.setdefault("env", self.driver_environment())
        return subprocess.run(self.command(args, options.pop("cwd", None)), **options)

    def processes(self) -> set[int]:
        """The pids, as this machine numbers them, of every process running inside."""
        import psutil

        if self._supervisor is None:
            return set()
        try:
            return {
                p.pid
                for p in psutil.Process(self._supervisor.pid).children(recursive=True)
            }
        except psutil.NoSuchProcess:
            return set()

    def status(self) -> dict[str, Any]:
        """What the cluster holds now: live nodes, and resources, actors and placement
        groups in use."""
        self._supervisor.stdin.write("status\n")
        self._supervisor.stdin.flush()
        return _read_line(self._supervisor, 30)

    def wait_until_idle(self, timeout_s: float = 30) -> dict[str, Any]:
        """Wait for every resource to be free again, and return the last status (idle or
        not)."""
        deadline = time.monotonic() + timeout_s
        while True:
            now = self.status()
            if now["idle"] or time.monotonic() > deadline:
                return now
            time.sleep(1)

    def stop(self) -> None:
        """Stop every node; whatever is left in the namespaces then ends with them."""
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is None:
            return
        try:
            supervisor.stdin.close()
            supervisor.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            supervisor.kill()
            supervisor.wait()

    def __enter__(self) -> SimulatedCluster:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


def _without_ray_settings() -> dict[str, str]:
    """Our environment less every RAY_ variable: what a machine's image has.

    This process's Ray settings are not a node's: a cluster started here sets
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, for one, and a node at 127.0.0.2
    that inherits it cannot start.
    """
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}


def _die_with_parent() -> None:
    """In the child, before it runs: be killed when the process that started us dies."""
    PR_SET_PDEATHSIG = 1  # noqa: N806, from <linux/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _only_child(pid: int) -> int:
    """The pid of ``unshare``'s one child: the first process inside the namespaces."""
    import psutil

    children = psutil.Process(pid).children()
    if len(children) != 1:
        raise RuntimeError(
            f"expected one process inside the namespaces, found {children}"
        )
    return children[0].pid


def _read_line(process: subprocess.Popen, timeout_s: float) -> dict[str, Any]:
    """One JSON line from the supervisor, or an error when it says nothing in time."""
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            return {"error": f"no answer in {timeout_s:.0f} s"}
    line = process.stdout.readline()
    return (
        json.loads(line)
        if line.strip()
        else {"error": f"it exited (code {process.poll()})"}
    )


# Inside the namespaces ----------------------------------------------------------------

# A worker node's own machine: a private /tmp, /dev/shm and home, the shared folder
# writable, everything else read-only; then the Ray node, in its own working directory.
NODE_SCRIPT = """set -e
mount -t tmpfs node-tmp /tmp
mount -t tmpfs node-shm /dev/shm
mount --bind "$STORAGE" "$STORAGE"
mount -o remount,bind,ro /
mkdir -p /tmp/home /tmp/work
cd /tmp/work
exec "$@"
"""


def _ray_start(*options: str) -> list[str]:
    return [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--block",
        "--disable-usage-stats",
        *options,
    ]


def _start_nodes(spec: MachinesSpec) -> list[subprocess.Popen]:
    """Start the head, then every worker node side by side; return their ``ray start``
    processes."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    # The head's /dev/shm and Ray folder are its own too; the driver shares them, as on
    # a head node.
    subprocess.run(["mount", "-t", "tmpfs", "head-shm", "/dev/shm"], check=True)
    environment = {**os.environ, **spec.environment, "RAY_AUTH_MODE": "token"}
    store = f"--object-store-memory={spec.object_store_mb * 2**20}"
    head = subprocess.Popen(
        _ray_start(
            "--head",
            f"--node-ip-address={HEAD_ADDRESS}",
            f"--port={GCS_PORT}",
            f"--num-cpus={spec.head_cpus}",
            "--num-gpus=0",
            store,
            "--temp-dir=/dev/shm/ray",
            f"--include-dashboard={spec.dashboard}",
            f"--dashboard-host={HEAD_ADDRESS}",
            f"--dashboard-port={DASHBOARD_PORT}",
        ),
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Worker nodes wait for the head's GCS themselves: start them all at once.
    node_environment = {
        **environment,
        "STORAGE": os.path.realpath(spec.storage),
        "HOME": "/tmp/home",
    }
    workers = [
        subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                NODE_SCRIPT,
                "node",
                *_ray_start(
                    f"--address={HEAD_ADDRESS}:{GCS_PORT}",
                    f"--node-ip-address={address}",
                    f"--num-cpus={cpus}",
                    "--num-gpus=0",
                    store,
                ),
            ],
            env=node_environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for address, cpus in zip(spec.worker_addresses, spec.worker_cpus, strict=True)
    ]
    _wait_for_nodes(1 + len(workers), head, *workers)
    return [head, *workers]


# Detached actors that Ray Data creates once per cluster (Ray 2.60, under
# ray/data/_internal/): its statistics (stats.py), actor locations
# (execution/node_trackers/actor_location.py), the autoscaling coordinator
# (cluster_autoscaler/) and its usage collector (usage/actor.py).
RAY_SINGLETONS = {
    "_StatsActor",
    "ActorLocationTracker",
    "_AutoscalingCoordinatorActor",
    "_UsageCollectionActor",
}

_state = None


def _global_state():
    """Ray's own view of the cluster (private: the public state API needs the
    dashboard)."""
    global _state
    if _state is None:
        from helpers.cluster import _reload_ray_settings
        from helpers.internals import GcsClientOptions, GlobalState

        # Ray reads its token from the environment once: read it again
        _reload_ray_settings()
        _state = GlobalState()
        _state._initialize_global_state(
            GcsClientOptions.create(
                f"{HEAD_ADDRESS}:{GCS_PORT}",
                None,
                allow_cluster_id_nil=True,
                fetch_cluster_id_if_nil=False,
            )
        )
    return _state


def _wait_for_nodes(
    count: int, *starters: subprocess.Popen, timeout_s: float = 60
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        exited = [p.args for p in starters if p.poll() is not None]
        if exited:
            raise RuntimeError(f"a node's `ray start` exited: {exited[0]}")
        if _gcs_listens() and len(_live_nodes()) >= count:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{count} node(s) did not register within {timeout_s:.0f} s")


def _gcs_listens() -> bool:
    try:
        socket.create_connection((HEAD_ADDRESS, GCS_PORT), timeout=1).close()
        return True
    except OSError:
        return False


def _live_nodes() -> list[dict]:
    return [n for n in _global_state().node_table() if n["Alive"]]


def _status() -> dict[str, Any]:
    state = _global_state()
    total, available = state.cluster_resources(), state.available_resources()
    in_use = {
        k: total[k] - available.get(k, 0.0)
        for k in total
        if k in ("CPU", "GPU") and total[k] - available.get(k, 0.0) > 1e-9
    }
    alive = [a for a in state.actor_table(None).values() if a["State"] == "ALIVE"]
    # Ray's libraries keep these detached actors for the cluster's life, on any cluster;
    # they hold no CPU. Anything else alive was left behind.
    actors = [
        a
        for a in alive
        if not (a["IsDetached"] and a["ActorClassName"] in RAY_SINGLETONS)
    ]
    groups = [
        g for g in state.placement_group_table().values() if g["state"] != "REMOVED"
    ]
    return {
        "nodes": sorted(n["NodeManagerAddress"] for n in _live_nodes()),
        "in_use": in_use,
        "actors": sorted(
            f"{a['ActorClassName']} ({a['Name'] or 'unnamed'})" for a in actors
        ),
        "ray_singletons": sorted(a["ActorClassName"] for a in alive if a not in actors),
        "placement_groups": sorted(
            f"{g['name'] or g['placement_group_id'][:8]} ({g['state']})" for g in groups
        ),
        "idle": not in_use and not actors and not groups,
    }


def _supervise(spec: MachinesSpec) -> None:
    """The namespaces' first process: start the nodes, answer ``status``, stop at end of
    input."""
    os.environ.update(
        spec.environment, RAY_AUTH_MODE="token"
    )  # our own GCS client's token too
    starters: list[subprocess.Popen] = []
    try:
        starters = _start_nodes(spec)
        threading.Thread(target=_reap_orphans, args=(starters,), daemon=True).start()
        _answer(
            {
                "address": f"{HEAD_ADDRESS}:{GCS_PORT}",
                "nodes": sorted(n["NodeManagerAddress"] for n in _live_nodes()),
            }
        )
        for line in sys.stdin:
            if line.strip() == "status":
                _answer(_status())
    except Exception as error:
        _answer({"error": f"{type(error).__name__}: {error}"})
    finally:
        for starter in starters:  # `ray start --block` stops its node on SIGTERM
            starter.terminate()
        for starter in starters:
            try:
                starter.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
    # Returning ends process 1 of the namespace: the kernel kills whatever is still
    # running.


def _reap_orphans(starters: list[subprocess.Popen]) -> None:
    """As process 1 of the namespace we inherit every orphan: collect those that
    exit."""
    import psutil

    ours = {p.pid for p in starters}
    while True:
        for child in psutil.Process().children():
            try:
                if child.pid not in ours and child.status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(child.pid, os.WNOHANG)
            except (psutil.NoSuchProcess, ChildProcessError):
                pass
        time.sleep(2)


def _answer(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


if __name__ == "__main__":
    arguments = json.loads(sys.argv[1])
    arguments["worker_cpus"] = tuple(arguments["worker_cpus"])
    _supervise(MachinesSpec(**arguments))
