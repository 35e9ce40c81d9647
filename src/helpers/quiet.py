"""Library chatter turned down where it is made, so that a page shows its own lines.

The cluster's side is in :mod:`helpers.cluster`: the driver connects with its "ray"
logger at warnings, and the workers' output stays in the cluster's log files. What
is left is the libraries' own output in the driver, which their settings turn down:

* :func:`quiet_ray_data`, for the chapters that run Ray Data in the driver
  (13_raydp, 35_xgboost, 50_libraries_together, 63_ray_data).

:meth:`helpers.LiveCluster.shutdown` puts the loggers' levels back.
"""

from __future__ import annotations

import logging

# The loggers this module turns down, which the cluster's shutdown restores.
LOGGERS = ("ray", "ray.data")


def quiet_ray_data() -> None:
    """No progress bars from Ray Data in this driver, and its logger at errors only.

    In a rendered page a progress bar is a frozen line, and Ray Data's logger writes
    several lines for every Dataset it executes ("Starting execution of Dataset ...").
    Its warnings go too: in Ray 2.60 the ones a chapter meets are about Ray Data's
    own defaults (``ray.data.from_spark`` warns that an argument nobody passed is
    deprecated). Ray Data configures its logger when it is imported, so this imports
    it first.
    """
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
