"""Find CUDA GPUs the way Ray does, and fall back to the CPU when a notebook asks for
one that is not there.

Ray counts a node's NVIDIA GPUs with NVML and caps the count by ``CUDA_VISIBLE_DEVICES``
where it is set (``ray/_private/accelerators/nvidia_gpu.py`` and
``resource_and_label_spec.py``, Ray 2.60). We count the same way, without asking torch:
the book's environment holds torch's CPU build, which sees no GPU even where there is
one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuCount:
    """How many CUDA GPUs this process may use, and how that was found."""

    count: int
    source: str

    def __str__(self) -> str:
        return f"{self.count} CUDA GPU(s), by {self.source}"


def visible_gpus() -> GpuCount:
    """The CUDA GPUs this process may use: those NVML (else ``nvidia-smi``) finds,
    capped by ``CUDA_VISIBLE_DEVICES`` when it is set, as Ray caps them."""
    found = (
        _nvml_count() or _nvidia_smi_count() or GpuCount(0, "no NVIDIA driver found")
    )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return found
    allowed = 0 if visible in ("", "NoDevFiles") else len(visible.split(","))
    return GpuCount(
        min(found.count, allowed), f"{found.source}, CUDA_VISIBLE_DEVICES={visible!r}"
    )


def cuda_gpu_count() -> int:
    """How many CUDA GPUs this process may use (0 without a driver)."""
    return visible_gpus().count


def _nvml_count() -> GpuCount | None:
    try:
        import pynvml  # nvidia-ml-py, where installed
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        return GpuCount(pynvml.nvmlDeviceGetCount(), "NVML")
    finally:
        pynvml.nvmlShutdown()


def _nvidia_smi_count() -> GpuCount | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None
    if listing.returncode != 0:
        return None
    return GpuCount(
        sum(line.startswith("GPU ") for line in listing.stdout.splitlines()),
        "nvidia-smi",
    )


def gpus_to_use(use_gpu: bool) -> int:
    """GPUs a notebook should give each node: 1 if asked for and present, else 0.

    Asking for a GPU on a machine without one is not an error (the same
    notebook runs everywhere) but it is said out loud.
    """
    if not use_gpu:
        return 0
    if cuda_gpu_count() == 0:
        warnings.warn(
            "use_gpu=True but no CUDA GPU is visible: running on the CPU.", stacklevel=2
        )
        return 0
    return 1
