"""The kit that runs the GPU chapters on a machine with a GPU, no Ray and no registry
(scripts/gpu-kit, scripts/gpu-check): it builds under the 64 MiB a command may carry
there, and its check runs to the end here, on the CPU, as a dry run."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

LIMIT = 64 * 2**20


def test_the_gpu_kit_builds_under_the_limit_and_its_check_runs_dry(tmp_path):
    kit, out = tmp_path / "kit", tmp_path / "out"
    built = subprocess.run(
        [sys.executable, ROOT / "scripts" / "gpu-kit", kit],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    size = sum(path.stat().st_size for path in kit.rglob("*") if path.is_file())
    assert size < LIMIT, f"the kit is {size / 2**20:.1f} MiB"
    assert not list(kit.rglob("*.jar")), "Ray's Java jars travel in the kit"

    checked = subprocess.run(
        [sys.executable, kit / "gpu-check", "--dry-run", kit, out],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    report = json.loads((out / "gpu-run.json").read_text())
    declared = sorted(
        path.name
        for path in (ROOT / "notebooks").glob("*.ipynb")
        if json.loads(path.read_text())["metadata"]["ray_library_patterns"].get("gpu")
    )
    assert (
        report["dry_run"] and report["chapters"] == declared and not report["problems"]
    )
    assert any(wheel.startswith("ray-2.60.0-cp312-") for wheel in report["wheels"])
