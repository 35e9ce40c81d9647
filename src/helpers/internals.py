"""The private and experimental APIs of Ray (and one of Spark) that the book uses, in
one place.

Each is here because no public API serves, and says so. All were checked against
Ray 2.60.0 (``CHECKED_AGAINST``) and RayDP 1.6.5's Spark 3.5. When an upgrade moves
one, importing this module fails, and ``tests/test_internals.py`` names what moved,
rather than a chapter failing halfway through. Nothing else in ``helpers``, the
notebooks or the tests reaches into ``ray._private``, ``ray._raylet``, the core worker,
``ray.experimental`` or Spark's Java handle; the same test holds them to that. Two
chapters are the exception, because an experimental API is their subject: 60 and 61
call ``ray.experimental.collective`` and direct transport by their own names.

Chapters 13, 20, 32, 33, 34 and 35 import from it directly; the rest of ``helpers``
uses it for them.
"""

from __future__ import annotations

from typing import Any

import ray

# The cluster helper (cluster.py): Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER into a
# module constant when it is imported, and caches its auth settings and token from the
# environment; no public call makes it read them again.
from ray._private import ray_constants

# The store's counters per node, spilling among them (store.py): Ray's public route to
# them is its metrics, served in Prometheus' format by each node's agent. A raylet
# reports them every 10 s (metrics_report_interval_ms), too seldom to count what one
# step created or spilled; the raylets answer these calls at once.
from ray._private.internal_api import (
    get_memory_info_reply,
    get_state_from_address,
    memory_summary,
    node_stats,
)

# Ray's view of a cluster without its dashboard (machines.py: the simulated machines run
# none).
from ray._private.state import GlobalState
from ray._private.worker import global_worker
from ray._raylet import (
    AuthenticationMode,
    AuthenticationTokenLoader,
    Config,
    GcsClientOptions,
    get_authentication_mode,
)
from ray.core.generated import common_pb2

CHECKED_AGAINST = "2.60.0"

__all__ = [
    "CHECKED_AGAINST",
    "AuthenticationMode",
    "AuthenticationTokenLoader",
    "Config",
    "GcsClientOptions",
    "GlobalState",
    "get_authentication_mode",
    "get_memory_info_reply",
    "get_state_from_address",
    "memory_summary",
    "node_stats",
    "object_locations",
    "processes_of_ray",
    "ray_benchmarks",
    "ray_constants",
    "reference_counts",
    "spark_scala_context",
]


def reference_counts() -> dict[str, Any]:
    """The references this process holds, by object ID (store.py: counting objects).

    The public route, ``ray.util.state.list_objects``, needs the dashboard's state
    module, which Ray does not load when the dashboard is off (``include_dashboard``,
    ``services.start_api_server``), as on the book's clusters and the simulated
    machines; the core worker knows at once, and without one, what this driver holds.
    """
    return global_worker.core_worker.get_all_reference_counts()


def object_locations(refs: list[ray.ObjectRef]) -> dict[ray.ObjectRef, dict[str, Any]]:
    """Each object's size and the nodes whose stores hold a copy (``ray.experimental``).

    The state API (``ray.util.state.list_objects``) needs the dashboard, and lists where
    each reference is held, not which stores hold a copy.
    """
    return ray.experimental.get_object_locations(refs)


def processes_of_ray(address: str, port: int) -> list[tuple[str, int, int, bool]]:
    """Each worker process and driver that the raylet at ``address:port`` knows: the
    address of its RPC server, its pid, and whether it is a driver (traffic.py).

    The state API (``ray.util.state.list_workers``) needs the dashboard, which the
    simulated machines do not run; the raylet answers without one.
    """
    stats = node_stats(address, port, include_memory_info=False)
    return [
        (w.ip_address, w.port, w.pid, w.worker_type == common_pb2.DRIVER)
        for w in stats.core_workers_stats
    ]


def ray_benchmarks():
    """Ray's own microbenchmarks: their task and actor, and their timing loop
    (chapter 20).

    Private: Ray runs them in its release tests and does not export them.
    """
    from ray._private import ray_perf
    from ray._private.ray_microbenchmark_helpers import timeit

    return ray_perf, timeit


def spark_scala_context(spark) -> Any:
    """The Scala ``SparkContext`` behind a PySpark session (chapter 13, network.py).

    Through PySpark's private Java handle (``_jsc``): PySpark has no public call that
    lists the executors a session registered, or the address each serves on.
    """
    return spark.sparkContext._jsc.sc()
