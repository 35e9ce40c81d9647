"""Find CUDA GPUs, and fall back to the CPU when a notebook asks for one that is not there."""

from __future__ import annotations

import shutil
import subprocess
import warnings


def cuda_gpu_count() -> int:
    """How many CUDA GPUs this machine shows (0 without a driver)."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if shutil.which("nvidia-smi") is None:
        return 0
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                             timeout=30, check=False)
    return sum(line.startswith("GPU ") for line in listing.stdout.splitlines())


def gpus_to_use(use_gpu: bool) -> int:
    """GPUs a notebook should give each node: 1 if asked for and present, else 0.

    Asking for a GPU on a machine without one is not an error (the same
    notebook runs everywhere) but it is said out loud.
    """
    if not use_gpu:
        return 0
    if cuda_gpu_count() == 0:
        warnings.warn("use_gpu=True but no CUDA GPU is visible: running on the CPU.",
                      stacklevel=2)
        return 0
    return 1
