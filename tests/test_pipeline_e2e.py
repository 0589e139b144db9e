"""The whole pipeline, as a new user runs it: `dvc pull` + `dvc repro` on a fresh copy of the repository
(tiny model, bundled real sample, no network), ending with a champion in the local MLflow registry."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = ["curate", "warmup", "train", "calibrate", "evaluate", "register"]
# The suite runs the default pipeline with fewer steps and images (`make repro` keeps the defaults); each
# replacement must hit params.yaml exactly once, so a changed default fails here rather than going unnoticed.
FEWER = {
    "  max_steps: 600             # optimizer steps": "  max_steps: 40              # optimizer steps",
    "  max_steps: 30              # optimizer steps": "  max_steps: 4               # optimizer steps",
    "per_image: 40, seed: 0": "per_image: 2, seed: 0",
}


def _run(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def _dry_run_stages(cwd: Path, env: dict) -> set[str]:
    out = _run(["dvc", "repro", "--dry"], cwd, env)
    return {s for s in STAGES if f"Running stage '{s}'" in out}


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory, tiny_dir) -> tuple[Path, dict]:
    """The repository's files (tracked and untracked, not ignored) in a new git repo, data not pulled."""
    dst = tmp_path_factory.mktemp("clone") / "readl"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()  # fmt: skip
    for rel in files:
        if (REPO / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dst / rel)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("MLFLOW_TRACKING_URI", None)  # the default: sqlite:///mlruns.db in the working copy
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@t",
                                                                  "commit", "-qm", "copy"]):  # fmt: skip
        _run(cmd, dst, env)
    assert not (dst / "data/raw").exists()
    params = (dst / "params.yaml").read_text()
    for old, new in FEWER.items():
        assert params.count(old) == 1, old
        params = params.replace(old, new)
    (dst / "params.yaml").write_text(params)
    return dst, env


@pytest.mark.slow
def test_dvc_repro_from_a_fresh_copy(fresh_copy):
    work, env = fresh_copy
    _run(["dvc", "pull", "-q", "data.dvc"], work, env)  # the bundled sample, from the DVC remote inside the repository
    assert (work / "data/raw/SOURCES.md").is_file()
    out = _run(["dvc", "repro"], work, env)
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
    assert (work / "reports/gallery/index.html").is_file() and list((work / "reports/gallery").glob("*.png"))
    # the final metrics table is printed at the end of `dvc repro`, its AVG row with metrics.json's image AUROC
    auroc = metrics["image"]["AUROC"]
    shown = "n/a" if auroc is None or auroc != auroc else f"{100 * auroc:.1f}"
    assert re.search(rf"AVG\W+{re.escape(shown)}\W", out), out[-3000:]

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
    (work / "params.yaml").write_text(params.replace("rewards: [format, accuracy, consistency]",
                                                     "rewards: [format, accuracy]"))  # fmt: skip
    out = _run(["dvc", "repro"], work, env)
    ran = {s for s in STAGES if f"Running stage '{s}'" in out}
    assert ran == {"train", "calibrate", "evaluate", "register"}
    assert json.loads((work / "models/train_run.json").read_text())["rewards"] == ["format", "accuracy"]
