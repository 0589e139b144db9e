"""The DVC stages' parameter dependencies: an evaluation-side change (the top-level ``localization:``, e.g. a
supplement Table 5 threshold rule) re-runs calibrate and evaluate on the SAME trained model; the train-time token
selection (``train.localization``) re-trains. Checked with ``dvc status`` on a stand-in pipeline that has the real
stages' ``params`` and dependency chain and cheap commands."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DVC = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))


def _dvc(root: Path, *args: str) -> str:
    return subprocess.run([DVC, *args], cwd=root, check=True, capture_output=True, text=True).stdout


def _stand_in(root: Path) -> None:
    real = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    chain = [
        ("train", None, "trained"),
        ("calibrate", "trained", "calibrated"),
        ("evaluate", "calibrated", "evaluated"),
    ]
    stages = {}
    for name, dep, out in chain:
        stages[name] = {
            "cmd": f"echo {name} > {out}",
            "params": real[name]["params"],
            "outs": [out],
            **({"deps": [dep]} if dep else {}),
        }
    root.mkdir()
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    shutil.copy2(REPO / "params.yaml", root / "params.yaml")
    _dvc(root, "init", "--no-scm", "-q")
    _dvc(root, "config", "core.analytics", "false")
    _dvc(root, "repro", "-q")


def _set(root: Path, dotted: str, value) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    *path, last = dotted.split(".")
    node = params
    for k in path:
        node = node[k]
    node[last] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _changed(root: Path) -> set[str]:
    return set(json.loads(_dvc(root, "status", "--json") or "{}"))


def test_evaluation_side_threshold_rule_reruns_calibrate_and_evaluate_only(tmp_path):
    root = tmp_path / "repo"
    _stand_in(root)
    assert _changed(root) == set()
    _set(root, "localization.tau_i", {"rule": "median"})  # supplement Table 5, a row
    assert _changed(root) == {"calibrate", "evaluate"}
    _dvc(root, "repro", "-q")
    _set(root, "train.localization.tau_i", {"rule": "median"})  # the consistency reward's own selection
    assert _changed(root) == {"train"}  # dvc status lists the stage whose own params changed; the rest follow it
