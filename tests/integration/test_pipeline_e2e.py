"""The whole pipeline, as a new user runs it: the README's `make repro` on a fresh copy of the repository
(tiny model, bundled real sample, no network), ending with a champion in the local MLflow registry."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from readme_blocks import reproduced_copy, user_env

STAGES = ["curate", "warmup", "train", "calibrate", "evaluate", "register"]


def _run(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def _dry_run_stages(cwd: Path, env: dict) -> set[str]:
    out = _run(["dvc", "repro", "--dry"], cwd, env)
    return {s for s in STAGES if f"Running stage '{s}'" in out}


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory, tiny_dir) -> tuple[Path, dict, str]:
    """A fresh copy of the repository (data not pulled) after the README's `make repro` block, run verbatim with
    fewer steps in params.yaml (tests/readme_blocks.py: shared with tests/integration/test_readme.py, run once)."""
    work, ran = reproduced_copy(tmp_path_factory)
    return work, user_env(work), ran.stdout + ran.stderr


@pytest.mark.slow
def test_dvc_repro_from_a_fresh_copy(reproduced):
    work, env, out = reproduced  # `make repro`: the bundled sample pulled from the DVC remote inside the repository
    assert (work / "data/raw/SOURCES.md").is_file()
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out

    # every stage's outputs
    for split in ("train", "calib", "eval"):
        assert len(pd.read_parquet(work / f"data/curated/{split}.parquet")) > 0
    assert (work / "models/adapter/adapter_config.json").is_file()
    assert (work / "models/warmup/config.json").is_file()  # the warm-started base of train and what follows
    assert json.loads((work / "models/train_run.json").read_text())["base"] == "models/warmup"
    run = json.loads((work / "models/train_run.json").read_text())
    thresholds = json.loads((work / "models/thresholds.json").read_text())
    assert {"tau_t", "tau_i"} <= set(thresholds)
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["n_images"] == len(pd.read_parquet(work / "data/curated/eval.parquet"))
    # what the numbers depend on besides the data: the seeds and the floating-point path of each learning stage
    rt = metrics["runtime"]
    assert rt["threads"] == 2 and rt["deterministic"] and rt["bootstrap_seed"] == 0
    assert rt["train"] == {"seed": 0, "runtime": run["runtime"]} and rt["warmup"]["runtime"]["threads"] == 2
    assert (work / "reports/gallery/index.html").is_file() and list((work / "reports/gallery").glob("*.png"))
    # the final metrics table is printed at the end of `dvc repro`, its AVG row with metrics.json's image AUROC
    auroc = metrics["image"]["AUROC"]
    shown = "n/a" if auroc is None or auroc != auroc else f"{100 * auroc:.1f}"
    assert re.search(rf"AVG\W+{re.escape(shown)}\W", out), out[-3000:]

    # `dvc metrics show`: flat, short files (the nested record is metrics.json / summary.json, plain outputs)
    shown = subprocess.run(["dvc", "metrics", "show", "--json"], cwd=work, env=env, capture_output=True, text=True)
    shown = json.loads(shown.stdout)
    files = {f: v["data"] for rev in shown.values() for f, v in rev["data"].items()}
    assert set(files) == {"data/curated/counts.json", "reports/headline.json"}, sorted(files)
    for f, data in files.items():
        assert len(data) <= 40 and all(isinstance(v, (int, float, type(None))) for v in data.values()), (f, data)
    assert files["reports/headline.json"]["image.AUROC"] == metrics["image"]["AUROC"]
    table = _run(["dvc", "metrics", "show"], work, env)
    assert max(map(len, table.splitlines())) < 2000, "one metrics row per file, a screen or two wide"

    # the champion in the local MLflow registry, logged in the training run
    from mlflow import MlflowClient

    db = f"sqlite:///{work / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=db, registry_uri=db)  # explicit: other tests may set mlflow's globals
    champion = client.get_model_version_by_alias("readl", "champion")
    assert champion.run_id == run["run_id"]

    # a second `dvc repro` is a no-op
    assert _dry_run_stages(work, env) == set()
    assert _run(["dvc", "status"], work, env).strip().endswith("Data and pipelines are up to date.")

    # changing train.rewards re-runs train and everything after it, and only that
    params = (work / "params.yaml").read_text()
    assert "rewards: [format, accuracy, consistency]" in params
    (work / "params.yaml").write_text(
        params.replace("rewards: [format, accuracy, consistency]", "rewards: [format, accuracy]")
    )
    out = _run(["dvc", "repro"], work, env)
    ran = {s for s in STAGES if f"Running stage '{s}'" in out}
    assert ran == {"train", "calibrate", "evaluate", "register"}
    assert json.loads((work / "models/train_run.json").read_text())["rewards"] == ["format", "accuracy"]
