"""Ray's joblib backend, with its pool of actors stopped in order (chapter 21).

joblib stops a backend's pool after every ``Parallel`` call, a grid search's included,
with ``close()`` and then ``terminate()``. Ray's pool
(``ray.util.multiprocessing.Pool``, checked against Ray 2.60.0) answers ``close()`` by
asking each actor to exit and ``terminate()`` by killing it, right after. Now and then
the kill lands while an actor is exiting: its log shows the exit begin, then "Force
kill actor request has received", and Ray prints "A worker died or was killed while
executing a task by an unexpected system error" into the notebook (here about once in
thirty searches). Nothing the search computed is lost, but the line reads as a crash.

:func:`register_ray_stopping_in_order` registers Ray's backend under the same name with
one change: the actors finish exiting before anything kills them. (When a search fails,
joblib stops the pool the same way, so the actors first finish the batches already sent
to them.) A pool used directly does the same with ``close()`` and ``join()`` before it
is terminated.
"""

from __future__ import annotations

from joblib import register_parallel_backend
from ray.util.joblib.ray_backend import RayBackend


class RayBackendStoppingInOrder(RayBackend):
    def terminate(self) -> None:
        pool = self._pool  # joblib's attribute for the backend's pool
        if pool is not None:
            pool.close()  # ask every actor to exit,
            pool.join()  # and wait until they have
        super().terminate()  # Ray's close and kill find no live actor to race


def register_ray_stopping_in_order() -> None:
    """Register Ray's joblib backend as ``"ray"``, as ``ray.util.joblib.register_ray``
    does, with its pool stopped in order."""
    register_parallel_backend("ray", RayBackendStoppingInOrder)
