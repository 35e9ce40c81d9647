"""Record what a notebook measured and what it claims, where tests can read it back.

Each record is displayed as an output with its own MIME type, holding JSON,
beside a plain-text line for people. The executed notebook therefore carries
its own results: the tests, the benchmark script and the results ledger all
read them from there, with :func:`records_in`.
"""

from __future__ import annotations

import json
import math
from typing import Any

MIME_TYPE = "application/vnd.ray-library-patterns.record+json"


class ClaimFailed(AssertionError):
    """A claim the notebook makes did not hold on this run."""


def measure(name: str, value: float, unit: str, *, note: str = "", compared_to: str = "") -> None:
    """Record a named measurement and show it.

    ``compared_to`` names the reference it is set against, where there is one:
    another measurement of the same run ("memcpy throughput"), or a baseline
    ("pandas"). The results ledger shows it beside the value.
    """
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"Measurement {name!r} is not a finite number: {value}")
    text = (f"measured  {name} = {value:.4g} {unit}" + (f"  ({note})" if note else "")
            + (f"  [against {compared_to}]" if compared_to else ""))
    _emit({"kind": "measurement", "name": name, "value": value, "unit": unit,
           "note": note, "compared_to": compared_to}, text)


def machine(*, cpus: int, memory_gib: float, gpus: float, ray_version: str, cluster: str) -> None:
    """Record what the notebook ran on: the machine, and the cluster it started or joined."""
    text = (f"machine  {cpus} CPUs, {memory_gib:.1f} GiB, Ray {ray_version}; "
            f"cluster {cluster}, {gpus:g} GPUs")
    _emit({"kind": "machine", "cpus": cpus, "memory_gib": memory_gib, "gpus": gpus,
           "ray_version": ray_version, "cluster": cluster}, text)


def claim(name: str, holds: bool, detail: str) -> None:
    """Record a named claim; raise :class:`ClaimFailed` if it does not hold.

    ``detail`` says what was compared, with the numbers, so that a failure
    explains itself: "3 of 3 nodes ran a task", "get took 0.4 ms at 1 GiB".
    """
    holds = bool(holds)
    _emit({"kind": "claim", "name": name, "holds": holds, "detail": detail},
          f"{'claim holds' if holds else 'CLAIM FAILED'}  {name}: {detail}")
    if not holds:
        raise ClaimFailed(f"{name}: {detail}")


def records_in(notebook: dict) -> list[dict[str, Any]]:
    """Every record in an executed notebook (as parsed JSON), in cell order."""
    found = []
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            payload = output.get("data", {}).get(MIME_TYPE)
            if payload is not None:
                found.append(json.loads(payload) if isinstance(payload, str) else payload)
    return found


def _emit(record: dict[str, Any], text: str) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        get_ipython = None  # noqa: N806
    if get_ipython is not None and get_ipython() is not None:
        display({MIME_TYPE: record, "text/plain": text}, raw=True)
    else:
        print(text)
