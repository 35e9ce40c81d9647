"""Start or join a live Ray cluster, and always clean it up.

One call, :func:`start_or_join`, gives every notebook its cluster:

* given an address (the notebook's ``ray_address``, else ``RAY_ADDRESS``), it
  connects to that cluster and starts nothing;
* otherwise it starts a local multi-node cluster with Ray's own
  ``ray.cluster_utils.Cluster``: a head and N worker nodes, each a real raylet
  with its own object store, all on this machine.

Clusters started here listen on 127.0.0.1 only, keep Ray's token
authentication on, and are shut down when the kernel exits, whether the
notebook finished or failed.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import socket
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import psutil
import ray
from ray.cluster_utils import Cluster

from helpers.internals import AuthenticationTokenLoader, Config, ray_constants
from helpers.network import is_loopback
from helpers.quiet import LOGGERS
from helpers.results import machine

LOOPBACK = "127.0.0.1"
# The driver's "ray" logger: warnings and errors, not "Connecting to existing Ray
# cluster".
QUIET = logging.WARNING
# How the driver connects. Besides its quiet logger, the workers' output (a library's
# chatter, its warnings, Ray's own lines from the worker processes) stays in the
# session's log files, under session_dir/logs, and is not copied onto the page. Ray
# still prints the errors it pushes to the driver (a worker that died, say).
CONNECT_QUIETLY = dict(logging_level=QUIET, log_to_driver=False)
# Ray's setting for the line a process prints each time a task it submitted failed and
# will be retried ("Task ... failed. There are infinite retries remaining ..."); Ray
# reads it from the environment when the process connects.
RETRY_REPORTS = "RAY_enable_output_error_log_if_still_retry"


class InfeasibleRequest(ValueError):
    """A resource request that no amount of waiting will satisfy."""


class MissingStorage(ValueError):
    """A joined cluster of several machines, and no folder that all of them share."""


class MissingDashboard(ValueError):
    """A chapter that reads Ray's state API, joined to a cluster without a dashboard."""


@dataclass(frozen=True)
class ClusterSpec:
    """The shape of a local cluster: a head node plus ``worker_nodes`` nodes."""

    worker_nodes: int = 2
    cpus_per_node: int = 1
    gpus_per_node: int = 0
    object_store_mb: int = 200
    dashboard: bool = False

    def __post_init__(self) -> None:
        if self.worker_nodes < 0 or self.cpus_per_node < 1 or self.gpus_per_node < 0:
            raise ValueError(f"Not a cluster shape: {self}")
        if self.object_store_mb < 80:
            raise ValueError("Ray needs an object store of at least 80 MB per node.")


@dataclass(frozen=True)
class Settings:
    """What this module changes outside the cluster, saved to be put back at shutdown.

    Ray's environment variables that start_or_join sets (the address to advertise,
    token authentication), the copy Ray took of one when it was imported, and the
    levels of the loggers that this module and :mod:`helpers.quiet` turn down.
    """

    environ: dict[str, str | None]
    enable_ray_cluster: bool
    log_levels: dict[str, int]

    VARIABLES = (
        ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR,
        "RAY_AUTH_MODE",
        "RAY_AUTH_TOKEN",
        RETRY_REPORTS,
    )

    @classmethod
    def save(cls) -> Settings:
        return cls(
            environ={name: os.environ.get(name) for name in cls.VARIABLES},
            enable_ray_cluster=ray_constants.ENABLE_RAY_CLUSTER,
            log_levels={name: logging.getLogger(name).level for name in LOGGERS},
        )

    def restore(self) -> None:
        for name, value in self.environ.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        ray_constants.ENABLE_RAY_CLUSTER = self.enable_ray_cluster
        for name, level in self.log_levels.items():
            logging.getLogger(name).setLevel(level)
        _reload_ray_settings()


@dataclass(frozen=True)
class NodeInfo:
    """One live node as Ray reports it."""

    node_id: str
    address: str
    is_head: bool
    cpus: float
    gpus: float
    object_store_mb: float


class LiveCluster:
    """A cluster this process is connected to; started here or joined.

    Use it as a context manager, or call :meth:`shutdown`. Shutting down a
    joined cluster only disconnects; a started one is stopped completely.
    """

    def __init__(
        self, address: str, spec: ClusterSpec | None, local: Cluster | None
    ) -> None:
        self.address = address
        self.spec = spec
        self._local = local
        self._storage_path: str | None = None  # start_or_join's storage_path
        self._own_storage: tempfile.TemporaryDirectory | None = None
        # Where Ray keeps this session's logs and state, once connected.
        self.session_dir = ""
        self._settings_before: Settings | None = None  # put back at shutdown

    @property
    def started_here(self) -> bool:
        """True when this process started the cluster (and so will stop it)."""
        return self._local is not None

    def nodes(self) -> list[NodeInfo]:
        """The cluster's live nodes, head first."""
        alive = [n for n in ray.nodes() if n["Alive"]]
        infos = [
            NodeInfo(
                node_id=n["NodeID"],
                address=n["NodeManagerAddress"],
                is_head=bool(n["Resources"].get("node:__internal_head__")),
                cpus=n["Resources"].get("CPU", 0.0),
                gpus=n["Resources"].get("GPU", 0.0),
                object_store_mb=n["Resources"].get("object_store_memory", 0.0) / 2**20,
            )
            for n in alive
        ]
        return sorted(infos, key=lambda node: not node.is_head)

    def machines(self) -> int:
        """How many machines the nodes run on, told apart by address."""
        return len({n.address for n in self.nodes()})

    @property
    def storage(self) -> str:
        """A folder that every node can read and write: for what crosses machines.

        Ray Train's and Tune's results, a file that tasks on several nodes
        read: on a real cluster that is an NFS mount or a bucket every node
        sees, and the reader names it (``storage_path``). Without one, a
        cluster on one machine gets a folder of its own, removed at shutdown;
        a joined cluster on several machines raises :class:`MissingStorage`.
        """
        if self._storage_path:
            return self._storage_path
        if self._own_storage is None:
            if not self.started_here and self.machines() > 1:
                raise MissingStorage(
                    "This chapter writes files that other nodes read, and the cluster "
                    f"at {self.address} spans {self.machines()} machines, which do not "
                    "share this machine's folders. Set storage_path to a folder every "
                    "node mounts at the "
                    "same path (NFS, say)."
                )
            self._own_storage = tempfile.TemporaryDirectory(
                prefix="ray-library-patterns-storage-"
            )
        return self._own_storage.name

    def node_names(self) -> dict[str, str]:
        """Short names for the live nodes by node id: "head", "worker 1", ..."""
        return {
            n.node_id: "head" if n.is_head else f"worker {i}"
            for i, n in enumerate(self.nodes())
        }

    def table(self) -> str:
        """The nodes as a small text table, with a total line."""
        rows = [
            (
                "head" if n.is_head else "worker",
                n.node_id[:8],
                n.address,
                f"{n.cpus:g}",
                f"{n.gpus:g}",
                f"{n.object_store_mb:.0f}",
            )
            for n in self.nodes()
        ]
        total = (
            "total",
            f"{len(rows)} nodes",
            "",
            f"{sum(float(r[3]) for r in rows):g}",
            f"{sum(float(r[4]) for r in rows):g}",
            f"{sum(float(r[5]) for r in rows):.0f}",
        )
        header = ("role", "node", "address", "CPUs", "GPUs", "object store (MB)")
        lines = [header, *rows, total]
        widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        return "\n".join(fmt.format(*line).rstrip() for line in lines)

    def require(
        self,
        *,
        workers: int = 1,
        cpus: float = 1,
        gpus: float = 0,
        spread: bool = False,
    ) -> None:
        """Fail now, with a clear message, if the cluster can never place the request.

        The request is ``workers`` bundles of ``cpus`` CPUs and ``gpus`` GPUs
        each; with ``spread=True`` every bundle must sit on a different node
        (a ``STRICT_SPREAD`` placement group). Ray itself would wait forever
        for a request like this, so we check the cluster's total resources
        first: if it fits here, it fits once other work finishes.
        """
        nodes = self.nodes()

        def fits_on(node: NodeInfo) -> int:
            by_cpu = node.cpus // cpus if cpus else workers
            by_gpu = node.gpus // gpus if gpus else workers
            return int(min(by_cpu, by_gpu))

        per_node = [fits_on(n) for n in nodes]
        capacity = sum(1 for k in per_node if k) if spread else sum(per_node)
        if capacity >= workers:
            return
        asked = f"{workers} worker(s) of {cpus:g} CPU and {gpus:g} GPU" + (
            " on separate nodes" if spread else ""
        )
        have = ", ".join(f"{n.cpus:g} CPU/{n.gpus:g} GPU" for n in nodes)
        raise InfeasibleRequest(
            f"Asked for {asked}, but the cluster can hold at most {capacity}: "
            f"it has {len(nodes)} node(s) with {have}. Ask for fewer or smaller "
            "workers, or start the cluster with more nodes (worker_nodes=...)."
        )

    def wait_for_free_cpus(self, timeout_s: float = 30) -> None:
        """Wait until every CPU of the cluster is free again (chapters 00, 20, 40).

        ``ray.kill`` and a finished task return before Ray frees their CPUs, and the
        scheduler places the next work on what it sees free: a node whose CPU still
        looks busy is skipped, and a timing would include the wait.
        """
        deadline = time.monotonic() + timeout_s
        while ray.available_resources().get("CPU", 0) < ray.cluster_resources().get(
            "CPU", 0
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"CPUs still busy after {timeout_s} s")
            time.sleep(0.05)

    def kill_node(self, node_id: str) -> None:
        """Kill every process of a worker node, as a crashed machine would lose them.

        Only for a cluster started here: the notebooks never kill a node of
        a cluster they joined.
        """
        if self._local is None:
            raise InfeasibleRequest(
                "kill_node works only on a cluster this process started, "
                "not on one it joined."
            )
        node = next((n for n in self._local.worker_nodes if n.node_id == node_id), None)
        if node is None:
            raise ValueError(f"{node_id[:8]} is not a live worker node of this cluster")
        self._local.remove_node(node, allow_graceful=False)

    def shutdown(self) -> None:
        """Disconnect; if this process started the cluster, stop all its processes."""
        global _current
        ray.shutdown()
        if self._own_storage is not None:
            self._own_storage.cleanup()
            self._own_storage = None
        if self._local is not None:
            raylets = _raylet_pids()
            self._local.shutdown()
            remove_channel_semaphores(raylets)
            self._local = None
        if self._settings_before is not None:
            self._settings_before.restore()
            self._settings_before = None
        if _current is self:
            _current = None

    def __enter__(self) -> LiveCluster:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        how = "started here" if self.started_here else "joined"
        return f"LiveCluster({self.address}, {how})"


_current: LiveCluster | None = None


def start_or_join(
    ray_address: str | None = None,
    *,
    worker_nodes: int = 2,
    cpus_per_node: int = 1,
    gpus_per_node: int = 0,
    object_store_mb: int = 200,
    dashboard: bool = False,
    runtime_env: dict[str, Any] | None = None,
    storage_path: str | None = None,
    quiet: bool = False,
    report_retries: bool = True,
) -> LiveCluster:
    """Connect this process to a Ray cluster, print what it has and record the machine.

    The machine record (CPUs, memory, GPUs, Ray's version, started or joined)
    is what the results ledger shows beside the notebook's figures; ``quiet``
    leaves out both the printout and the record.

    With ``ray_address`` (or ``RAY_ADDRESS`` in the environment) it joins that
    cluster; the sizing arguments are then ignored. Otherwise it starts a
    local cluster of a head and ``worker_nodes`` worker nodes, each with
    ``cpus_per_node`` CPUs, ``gpus_per_node`` GPUs and an object store of
    ``object_store_mb`` MB, listening on 127.0.0.1 only.

    ``runtime_env`` is Ray's, for what this notebook's workers need that the
    cluster's own set-up may lack (a Python environment of their own, say).
    ``storage_path`` is a folder every node shares (see :attr:`LiveCluster.storage`).
    ``dashboard`` says that the chapter reads Ray's state API: a cluster started
    here runs the dashboard, and a joined one without it is refused at once.
    ``report_retries=False`` stops this driver from printing a line for each task it
    submitted that failed and will be retried. Serve's shutdown makes two such lines
    (chapters 24 and 36): it ends by killing its controller while the driver still
    waits on two of the controller's calls, which Serve gave infinite retries.

    Calling it again with the same arguments returns the cluster already
    running (a setup cell may be re-run); with other arguments it stops that
    one first.
    """
    global _current
    address = ray_address or os.environ.get("RAY_ADDRESS") or None
    spec = (
        None
        if address
        else ClusterSpec(
            worker_nodes, cpus_per_node, gpus_per_node, object_store_mb, dashboard
        )
    )

    if _current is not None:
        same = _current.spec == spec and (
            spec is not None or _current.address == address
        )
        if same and ray.is_initialized():
            if not quiet:
                print(f"Reusing {_current!r}.\n{_current.table()}")
            return _current
        _current.shutdown()

    if spec and not quiet:
        # The reader's first wait in every notebook: say what it is.
        print(
            f"Starting a head node and {spec.worker_nodes} worker node(s) "
            f"on {LOOPBACK}; "
            "their table follows once every node is up.",
            flush=True,
        )
    settings_before = Settings.save()
    try:
        if address:
            cluster = _join(address, runtime_env, report_retries)
        else:
            cluster = _start(spec, runtime_env, report_retries)
    except BaseException:
        settings_before.restore()
        raise
    cluster._settings_before = settings_before
    cluster._storage_path = storage_path
    if dashboard and not cluster.started_here and not _dashboard_runs(address):
        cluster.shutdown()
        raise MissingDashboard(
            "This chapter reads Ray's state API, which the dashboard serves, and the "
            f"cluster at {address} runs without one. Start its head node with "
            "--include-dashboard=true."
        )
    _current = cluster
    if not quiet:
        print(f"{cluster!r}\n{cluster.table()}")
        nodes = cluster.nodes()
        how_connected = "started here" if cluster.started_here else "joined"
        machine(
            cpus=os.cpu_count() or 0,
            memory_gib=psutil.virtual_memory().total / 2**30,
            gpus=sum(n.gpus for n in nodes),
            ray_version=ray.__version__,
            cluster=f"{how_connected}, {len(nodes)} nodes",
        )
    return cluster


def _join(
    address: str, runtime_env: dict[str, Any] | None, report_retries: bool
) -> LiveCluster:
    if address.startswith("ray://"):
        raise ValueError(
            f"{address!r} is a Ray Client address. The chapters need a driver on a "
            "node of the cluster: submit the notebook with `ray job submit`, or run it "
            "on the head node with ray_address=127.0.0.1:6379 (book/real_cluster.md, "
            "'Where the driver runs')."
        )
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError) as error:
        # ray.init would retry for many minutes before giving up.
        raise ConnectionError(
            f"No Ray cluster answers at {address!r} ({error}). Give the head node's "
            "GCS address as host:port, e.g. 10.0.0.5:6379, or leave ray_address "
            "and RAY_ADDRESS empty to start a local cluster."
        ) from None
    _advertise_loopback(is_loopback(host))
    _reload_ray_settings()  # RAY_AUTH_* may have been set after ray was imported
    if (
        "RAY_AUTH_MODE" not in os.environ
        and AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True)
    ):
        # A reader who gives a token means to use it: Ray sends none unless the mode
        # says so.
        os.environ["RAY_AUTH_MODE"] = "token"
        _reload_ray_settings()
    _report_retries(report_retries)
    # An explicit address, always: with none, ray.init attaches to whatever
    # cluster was started last on this machine.
    context = ray.init(address=address, runtime_env=runtime_env, **CONNECT_QUIETLY)
    cluster = LiveCluster(address, spec=None, local=None)
    cluster.session_dir = context.address_info["session_dir"]
    return cluster


def _start(
    spec: ClusterSpec, runtime_env: dict[str, Any] | None, report_retries: bool
) -> LiveCluster:
    # Before ray.init too: starting the nodes logs.
    logging.getLogger("ray").setLevel(QUIET)
    _advertise_loopback(True)
    _require_token()
    node_args = dict(
        node_ip_address=LOOPBACK,
        num_cpus=spec.cpus_per_node,
        num_gpus=spec.gpus_per_node,
        object_store_memory=spec.object_store_mb * 2**20,
    )
    local = Cluster(
        initialize_head=True,
        head_node_args=dict(
            node_args,
            include_dashboard=spec.dashboard,
            dashboard_host=LOOPBACK,
        ),
        shutdown_at_exit=True,
    )
    cluster = LiveCluster(local.address, spec, local)
    try:
        for _ in range(spec.worker_nodes):
            local.add_node(wait=False, **node_args)  # start them side by side
        local.wait_for_nodes()
        _report_retries(report_retries)  # after the nodes start: this driver's only
        context = ray.init(
            address=local.address,
            _node_ip_address=LOOPBACK,
            runtime_env=runtime_env,
            **CONNECT_QUIETLY,
        )
        cluster.session_dir = context.address_info["session_dir"]
    except BaseException:
        cluster.shutdown()
        raise
    return cluster


def _report_retries(report: bool) -> None:
    if not report:
        os.environ[RETRY_REPORTS] = "0"


def _dashboard_runs(address: str) -> bool:
    """Whether the joined cluster answers Ray's state API (its dashboard serves it)."""
    from ray.util.state import list_nodes
    from ray.util.state.exception import ServerUnavailable

    try:
        list_nodes(address=address, limit=1, timeout=30)
    except ServerUnavailable:  # it fails at once without a dashboard
        return False
    return True


def _advertise_loopback(loopback: bool) -> None:
    """Choose the address this process, and the Ray processes it starts, advertise.

    Ray binds its servers to the address a node advertises. On Linux that is
    the machine's network address, unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER is
    0, when it is 127.0.0.1 (the macOS and Windows default). Children read the
    variable when they start; this process read it when ray was imported, so
    we set Ray's copy too. A driver joining a remote cluster must advertise its
    network address, or the cluster's workers could not reach it.
    """
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0" if loopback else "1"
    ray_constants.ENABLE_RAY_CLUSTER = not loopback


def _require_token() -> None:
    """Turn on token authentication for the clusters this process starts.

    The variables stay set until the cluster shuts down (see :class:`Settings`).
    """
    os.environ["RAY_AUTH_MODE"] = "token"
    _reload_ray_settings()
    if not AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
        # No token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token:
        # a fresh one for this process's clusters, in the form Ray makes them.
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        _reload_ray_settings()


def _reload_ray_settings() -> None:
    """Make Ray re-read its settings and token, which it caches from the environment."""
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _raylet_pids() -> list[int]:
    """The pids of the raylets this process started, the nodes of its local cluster."""
    pids = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.name() == "raylet":
                pids.append(child.pid)
        except psutil.NoSuchProcess:  # it exited after it was listed
            pass
    return pids


def remove_channel_semaphores(raylet_pids: list[int]) -> None:
    """Remove the named semaphores a node's object store leaves in /dev/shm.

    Checked against Ray 2.60: a compiled graph's channels (chapter 62) are mutable
    objects, and the raylet that holds one creates two POSIX semaphores for it
    (``sem.hdr<raylet pid>-<n>``, ``sem.obj<raylet pid>-<n>``) that nothing unlinks,
    not even the raylet's exit. Called with the stopped raylets' pids, it removes
    theirs only.
    """
    prefixes = tuple(
        f"sem.{kind}{pid}-" for pid in raylet_pids for kind in ("hdr", "obj")
    )
    for name in (
        os.listdir("/dev/shm") if prefixes and os.path.isdir("/dev/shm") else []
    ):
        if name.startswith(prefixes):
            os.remove(os.path.join("/dev/shm", name))


def shutdown() -> None:
    """Stop (or leave) the cluster :func:`start_or_join` gave this process, if any."""
    if _current is not None:
        _current.shutdown()


# The kernel exiting, normally or after a failed cell, stops what we started.
atexit.register(shutdown)
