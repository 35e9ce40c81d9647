"""Helpers shared by every notebook of Ray Library Patterns.

What builds and tests the book (the runner, the Sphinx hooks, the ledger, line
counting) is in :mod:`booktools`, apart.

* :mod:`helpers.cluster`: start or join a live cluster, check a request fits.
* :mod:`helpers.results`: record measurements and claims for the tests.
* :mod:`helpers.checks`: the checks behind each chapter's central claim, which the
  negative controls in tests/test_controls.py run with the mechanism switched off.
* :mod:`helpers.timing`: repeat, median, spread; bound a call that may hang.
* :mod:`helpers.store`: count the objects that calls put into the store, and what each
  node's store takes in while a step runs.
* :mod:`helpers.traffic`: who carried an exchange's bytes: Ray's connections, the
  library's own, or the object store (chapters 10, 20, 30 and the level pages).
* :mod:`helpers.joblib_ray`: Ray's joblib backend, its pool stopped in order (chapter
  21).
* :mod:`helpers.faults`: kill a worker mid-run, when its progress says so (chapter 11).
* :mod:`helpers.disk`: what each stage of a pipeline wrote to files (chapter 50).
* :mod:`helpers.dask_objects`: the Ray objects a Dask computation made (chapter 34).
* :mod:`helpers.network`: which addresses a process listens on.
* :mod:`helpers.torch_group`: a ``torch.distributed`` group among Ray actors.
* :mod:`helpers.isolated`: a multi-address cluster in a private network.
* :mod:`helpers.machines`: a cluster of simulated machines, which share only a network
  and one storage folder (the tests run every notebook on one).
* :mod:`helpers.quiet`: library chatter turned down where it is made.
* :mod:`helpers.plots`: one figure style, titles and units required.
* :mod:`helpers.gpu`: find a CUDA GPU, fall back to the CPU.
* :mod:`helpers.internals`: the private and experimental APIs of Ray the book uses, the
  only module that reaches them (tests/test_internals.py checks both).
"""

from helpers.cluster import (
    InfeasibleRequest,
    LiveCluster,
    MissingDashboard,
    MissingStorage,
    start_or_join,
)
from helpers.gpu import cuda_gpu_count, gpus_to_use
from helpers.plots import figure
from helpers.quiet import quiet_ray_data
from helpers.results import ClaimFailed, claim, measure, not_checked
from helpers.timing import Timing, time_it, within

__all__ = [
    "ClaimFailed",
    "InfeasibleRequest",
    "LiveCluster",
    "MissingDashboard",
    "MissingStorage",
    "Timing",
    "claim",
    "cuda_gpu_count",
    "figure",
    "gpus_to_use",
    "measure",
    "not_checked",
    "quiet_ray_data",
    "start_or_join",
    "time_it",
    "within",
]
