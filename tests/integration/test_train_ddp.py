"""``readl train`` as 2 DDP processes on CPU (gloo, ``torchrun --nproc_per_node 2``): 2 steps, one adapter,
one MLflow run (issue 15 item 6; on GPUs: ``accelerate launch --config_file .../accelerate_multi_gpu.yaml``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_process_ddp_train_saves_one_adapter(tiny_dir, sample_dir, tmp_path):
    images = [
        (sample_dir / "hazelnut_toy/hazelnut/test/colour/00.jpg", 1),
        (sample_dir / "hazelnut_toy/hazelnut/test/good/04.jpg", 0),
        (sample_dir / "mvtec_ad/grid/test/bent/000.png", 1),
        (sample_dir / "mvtec_ad/grid/test/good/000.png", 0),
    ]
    manifest = tmp_path / "train.parquet"
    pd.DataFrame([(str(p), y) for p, y in images], columns=["image_path", "label"]).assign(
        source="bundled", category="x"
    ).to_parquet(manifest)
    train = {
        "max_steps": 2,
        "num_generations": 4,
        "per_device_train_batch_size": 4,
        "max_completion_length": 8,
        "save_steps": 100,
        "lora": {"r": 8, "alpha": 16, "dropout": 0.05},
        "experiment": "readl-ddp",
        "consistency": {"quantile": 0.5, "delta1": 0.15, "delta2": 0.15, "require_format": False},
    }
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"model": {"base": "tiny", "image_size": 112}, "train": train}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        READL_TINY_DIR=str(tiny_dir),
        PYTHONPATH=str(REPO / "src"),
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlruns.db'}",
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        "-m",
        "readl.cli",
        "train",
        "--params",
        str(params),
        "--manifest",
        str(manifest),
        "--output",
        str(tmp_path / "models"),
    ]
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert (tmp_path / "models/adapter/adapter_model.safetensors").is_file()
    record = json.loads((tmp_path / "models/train_run.json").read_text())
    assert record["global_step"] == 2

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.get_experiment_by_name("readl-ddp")
    assert len(client.search_runs([exp.experiment_id])) == 1  # one run: the two processes are one DDP job
