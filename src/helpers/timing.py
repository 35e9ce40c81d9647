"""Time a piece of work several times and keep every sample.

A single timing on a shared two-core machine says little; the median of a
few, with the spread beside it, says how long the work takes and how sure we
are of it.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Timing:
    """Wall-clock samples of one piece of work, in seconds."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        """The middle sample: what a typical run takes."""
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        """The fastest sample: the work with the least interference."""
        return min(self.samples)

    @property
    def max(self) -> float:
        """The slowest sample."""
        return max(self.samples)

    def __str__(self) -> str:
        return (
            f"median {_human(self.median)} (min {_human(self.min)}, "
            f"max {_human(self.max)}, {len(self.samples)} runs)"
        )


def time_it(work: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> Timing:
    """Run ``work()`` ``warmup`` times untimed, then ``repeats`` times timed."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    for _ in range(warmup):
        work()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        samples.append(time.perf_counter() - start)
    return Timing(tuple(samples))


def within(
    seconds: float, what: str, work: Callable[..., Any], *args: Any, **kwargs: Any
) -> Any:
    """Return ``work(*args, **kwargs)``, or raise TimeoutError once ``seconds`` have
    passed.

    For calls that can wait forever: a JVM that died before it answered, a job
    waiting for executors that never come. The call is not stopped (Python
    cannot stop a thread); it is left in a daemon thread, which ends with the
    process, and the error names ``what`` so the reader knows where it stuck.
    """
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["value"] = work(*args, **kwargs)
        except BaseException as error:  # handed to the caller below
            outcome["error"] = error

    worker = threading.Thread(target=call, name=f"within: {what}", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TimeoutError(f"{what} did not finish within {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _human(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"
