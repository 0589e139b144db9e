"""Smoke test of benchmarks/gpu_check.py in its small CPU mode (the CUDA run is manual; CI never has a GPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_runs_in_small_cpu_mode(tiny_dir):
    env = dict(
        os.environ,
        READL_TINY_DIR=str(tiny_dir),
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    )
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/gpu_check.py"), "--layers", "2", "--device", "cpu"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    for header in ("1. teacher-forced forward", "2. generate", "3. one GRPO step with LoRA", "4. the pipeline on 16"):
        assert header in text
    rows = [line.split() for line in text.splitlines()]
    forward = {(r[0], r[1]) for r in rows if len(r) == 5 and r[1] in ("plain", "capture", "eager")}
    assert forward == {(s, v) for s in ("48", "80") for v in ("plain", "capture", "eager")}
    assert {r[0] for r in rows if len(r) == 4 and r[0] in ("1", "8")} == {"1", "8"}  # tokens/s at batch 1 and 8
    assert {r[0] for r in rows if len(r) == 3 and r[0] in ("CGRO", "R1")} == {"CGRO", "R1"}
    # 4. the pipeline: one row per phase (phase, s, images/s, peak MiB "-" on CPU), then AUROCs and malformed count
    phases = {" ".join(r[:-3]): r[-3:] for r in rows if len(r) >= 4 and r[-1] == "-"}
    for phase in ("generate+capture (calib)", "calibrate", "generate+capture (eval)", "evaluate"):
        assert phase in phases, text
        assert float(phases[phase][0]) > 0 and float(phases[phase][1]) > 0
    summary = next(line for line in text.splitlines() if line.startswith("evaluation: image AUROC"))
    assert "pixel AUROC" in summary and "malformed answers" in summary and "/8 " in summary
    assert "vLLM: not installed, skipped" in text or "vLLM: installed" in text


def test_gpu_check_without_a_gpu_fails_with_one_clear_line():
    """The README's GPU smoke command on a machine without CUDA: exit 1, one line naming the CPU mode."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/gpu_check.py")], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 1 and "no CUDA device here" in out.stderr + out.stdout
    assert "Traceback" not in out.stderr
