"""evaluate across processes (issue 15 item 6): ``torchrun --nproc_per_node 2 -m readl.cli evaluate`` (gloo on
CPU; ``accelerate launch --num_processes N`` on GPUs) shards the eval manifest, each process predicts its rows
into the shared per-image cache, and the main process merges them: the metrics equal one process's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from support import free_port as _free_port
from typer.testing import CliRunner

from readl.cli import app

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_processes_give_the_metrics_of_one(tiny_dir, sample_dir, tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "data" / "raw").symlink_to(sample_dir)
    (work / "params.yaml").write_text(
        (REPO / "params.yaml").read_text().replace("max_new_tokens: 256", "max_new_tokens: 12")
    )
    monkeypatch.chdir(work)
    runner = CliRunner()
    for cmd in (["curate"], ["calibrate", "--adapter", "none"], ["evaluate", "--adapter", "none"]):  # the base model
        out = runner.invoke(app, cmd)
        assert out.exit_code == 0, out.output
    one = json.loads((work / "metrics.json").read_text())
    shutil.rmtree(work / "reports" / "predictions" / "eval")  # the 2-process run predicts everything again
    (work / "metrics.json").unlink()
    env = dict(os.environ, OMP_NUM_THREADS="1", READL_TINY_DIR=str(tiny_dir), PYTHONPATH=str(REPO / "src"))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        "-m",
        "readl.cli",
        "evaluate",
        "--adapter",
        "none",
    ]
    run = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    log = run.stdout + run.stderr
    n = len(pd.read_parquet(work / "data/curated/eval.parquet"))
    half = f"{n // 2 + n % 2} of {n} images", f"{n // 2} of {n} images"
    assert f"process 0/2: {half[0]}" in log and f"process 1/2: {half[1]}" in log
    assert len(list((work / "reports" / "predictions" / "eval").glob("*.npz"))) == n  # every eval image, once
    two = json.loads((work / "metrics.json").read_text())
    assert two == one
