"""Kill a worker process mid-run, when its progress says so (chapter 11).

A fault-tolerance claim needs a failure at a known point: after epoch 4 is committed,
say, not before the workers have started or after they have finished. The workers
report their progress to a :class:`ProgressLog` actor; a :class:`KillWhen` thread in
the driver reads the log and, once the condition holds, kills the chosen worker's
process with a task pinned to that worker's node: on a real cluster the process runs
on another machine, where the driver cannot signal it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

Rows = list[dict[str, Any]]


@ray.remote(num_cpus=0)
class ProgressLog:
    """Rows of progress, one per call of ``record``, in the order they came."""

    def __init__(self) -> None:
        self.rows: Rows = []

    def record(self, **row: Any) -> None:
        self.rows.append(row)

    def read(self) -> Rows:
        return self.rows


@ray.remote(num_cpus=0)
def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)  # runs on the victim's node: a pid is per machine


def kill_process(node_id: str, pid: int) -> None:
    """SIGKILL process ``pid`` on node ``node_id``, as a crash would end it."""
    on_its_node = NodeAffinitySchedulingStrategy(node_id, soft=False)
    ray.get(_kill.options(scheduling_strategy=on_its_node).remote(pid))


class KillWhen(threading.Thread):
    """A daemon thread that kills one worker once ``due(rows)`` holds.

    ``victim(rows)`` picks the row of the worker to kill; that row must carry the
    worker's ``node`` and ``pid``. After the kill, ``killed`` is that row with the
    kill's ``time`` (``time.time()``) added. Call ``stop`` when the run is over: a
    condition that never came true stops being polled.
    """

    def __init__(
        self,
        log: ray.actor.ActorHandle,
        due: Callable[[Rows], bool],
        victim: Callable[[Rows], dict[str, Any]],
        poll_s: float = 0.1,
    ) -> None:
        super().__init__(daemon=True)
        self.log, self.due, self.victim, self.poll_s = log, due, victim, poll_s
        self.killed: dict[str, Any] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            rows = ray.get(self.log.read.remote())
            if self.due(rows):
                chosen = self.victim(rows)
                kill_process(chosen["node"], chosen["pid"])
                self.killed.update(chosen, time=time.time())
                return
            self.stopped.wait(self.poll_s)

    def stop(self) -> None:
        self.stopped.set()
        self.join()
