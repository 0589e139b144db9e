"""Prefect flows: prefect.yaml's deployments and schedule (= params.yaml's), DVC failure classes, the persistent work
directory of process workers, UI links in the summary; the tiny settings `TINY` of the end-to-end run with real
process workers (tests/integration/test_readme_prefect.py: the README's Prefect sequence)."""

from __future__ import annotations

import os
import tempfile

# Prefect reads its settings when imported: isolate it before anything imports it.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="readl-prefect-home-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import copy  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `flows` is a folder at the repository root

# Tiny settings over the repository's params.yaml: 112 px images, a few images per split, one GRPO step.
TINY = {
    "model": {"base": "tiny", "image_size": 112, "max_new_tokens": 8, "batch_size": 4},
    "curate": {
        "image_size": 112,
        "workers": 1,
        "train": [{"name": "hazelnut_toy", "layout": "mvtec", "root": "hazelnut_toy", "normal": 2, "anomalous": 2}],
        "calib": [{"name": "hazelnut_toy", "layout": "mvtec", "root": "hazelnut_toy", "normal": 2, "anomalous": 2}],
        "eval": [
            {
                "name": "mvtec_ad",
                "layout": "mvtec",
                "root": "mvtec_ad",
                "published_splits": ["test"],
                "normal": 2,
                "anomalous": 2,
            }
        ],
    },
    "train": {
        "max_steps": 1,
        "num_generations": 2,
        "per_device_train_batch_size": 4,
        "max_completion_length": 8,
        "save_steps": 100,
        "lora": {"r": 4, "alpha": 8},
        "consistency": {"quantile": 0.5, "delta1": 0.15, "delta2": 0.15, "require_format": False},
    },
    "warmup": {
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "save_steps": 100,
        "logging_steps": 1,
        "lr_scheduler_type": "constant",
    },  # 2 cosine steps would halve the little it learns
    "evaluate": {"gallery_per_dataset": 1, "bootstrap_resamples": 20},
    "register": {"model_name": "readl-flow"},
}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _dvc(args: list[str], cwd: Path) -> None:
    subprocess.run([str(BIN / "dvc"), *args], cwd=cwd, check=True, capture_output=True, text=True)


def test_prefect_yaml_matches_params_and_flows():
    """prefect.yaml: retrain on pool cpu with the cron of params.yaml register.schedule; train-on-gpu on pool gpu;
    inspect on cpu with its shards on gpu; entrypoints load."""
    from prefect.flows import load_flow_from_entrypoint

    from readl.config import load_params
    from readl.registry.registration import register_config

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deps = {d["name"]: d for d in spec["deployments"]}
    schedule = register_config(load_params(REPO / "params.yaml")).schedule
    (sched,) = deps["retrain"]["schedules"]
    assert (sched["cron"], sched["timezone"]) == (schedule.cron, schedule.timezone)
    assert deps["retrain"]["work_pool"]["name"] == "cpu" and deps["train-on-gpu"]["work_pool"]["name"] == "gpu"
    assert deps["retrain"]["parameters"]["gpu_deployment"] == "train-on-gpu/train-on-gpu"
    # process workers delete their clone after each run: the stages run in a persistent folder (checkpoints kept)
    trained = ("retrain", "train-on-gpu")
    assert {d: deps[d]["parameters"]["workdir"] for d in trained} == {d: f"~/.cache/readl/{d}" for d in trained}
    # production loop: the parent lists and waits on `cpu`, the shards predict on `gpu`
    assert deps["inspect"]["work_pool"]["name"] == "cpu" and deps["inspect-shard"]["work_pool"]["name"] == "gpu"
    assert deps["inspect"]["parameters"]["shard_deployment"] == "inspect-shard/inspect-shard"
    names = {}
    for d in deps.values():
        path, fn = d["entrypoint"].split(":")
        names[d["name"]] = load_flow_from_entrypoint(f"{REPO / path}:{fn}").name
    assert names == {d: d for d in ("retrain", "train-on-gpu", "inspect", "inspect-shard")}


def test_no_flow_module_shadows_the_standard_library():
    """Prefect loads a deployment's entrypoint by file path and puts flows/ on sys.path for the rest of the process:
    a flows/inspect.py then replaced the standard library's `inspect` in every later import and spawned worker
    (curate's decoding processes died with "partially initialized module 'inspect'")."""
    shadowing = {p.stem for p in (REPO / "flows").glob("*.py")} & set(sys.stdlib_module_names)
    assert not shadowing, f"flows/ modules named like standard-library modules: {sorted(shadowing)}"


def test_dvc_failures_are_classified(tmp_path):
    from flows.stages import StageError, TransientStageError, run_dvc, workdir_of

    with pytest.raises(StageError, match="no dvc.yaml"):
        workdir_of(str(tmp_path))
    _dvc(["init", "--no-scm", "-q"], tmp_path)
    (tmp_path / "dvc.yaml").write_text('stages:\n  boom:\n    cmd: python -c "raise SystemExit(3)"\n')
    with pytest.raises(StageError, match=r"(?s)failed \(exit \d+\).*exited with 3") as exc:
        run_dvc(["repro", "-s", "boom"], tmp_path)
    assert not isinstance(exc.value, TransientStageError)
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  flaky:\n    cmd: python -c \"import sys; print('Connection refused'); sys.exit(1)\"\n"
    )
    with pytest.raises(TransientStageError):
        run_dvc(["repro", "-s", "flaky"], tmp_path)
    (tmp_path / "dvc.yaml").write_text('stages:\n  slow:\n    cmd: python -c "import time; time.sleep(60)"\n')
    # stopped, not finished: a stage that ran its 60 s would exit 0 and raise nothing
    with pytest.raises(StageError, match="started \"Running stage 'slow'\" on this worker and was stopped"):
        run_dvc(["repro", "-s", "slow"], tmp_path, stop_on="Running stage 'slow'")


def test_train_stage_is_run_cacheable():
    """The train stage runs on the GPU worker and returns through DVC's run cache, which DVC only keeps for stages
    whose outputs are all cached (or metrics/plots): no `cache: false` / `persist` on the train stage's outs."""
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]
    bad = [
        o
        for o in stage.get("outs", [])
        if isinstance(o, dict) and any((v or {}).get("cache") is False or (v or {}).get("persist") for v in o.values())
    ]
    assert not bad, f"dvc.yaml stage train: make these outputs cached (drop `cache: false` / `persist`): {bad}"


def _git(args: list[str], cwd: Path) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def test_workdir_is_a_persistent_checkout_of_the_clone(tmp_path, monkeypatch):
    """A process worker's clone is deleted after the run: the stages run in `workdir`, kept up to date with the
    clone's commit, keeping what git does not track (checkpoints, DVC cache, config.local); `dvc_remote` becomes
    the checkout's default remote."""
    import flows.stages as stages

    clone = tmp_path / "clone"
    clone.mkdir()
    _git(["init", "-q"], clone)
    _dvc(["init", "-q"], clone)
    _dvc(["remote", "add", "s3", "s3://readl-data/raw"], clone)
    (clone / "dvc.yaml").write_text("stages: {}\n")
    (clone / "params.yaml").write_text("a: 1\n")
    _git(["add", "-A"], clone)
    _git(["commit", "-qm", "one"], clone)
    monkeypatch.setattr(stages, "code_checkout", lambda: clone)
    monkeypatch.delenv("READL_DVC_REMOTE", raising=False)

    wd = stages.prepare_workdir(str(tmp_path / "work"), dvc_remote="s3")
    assert wd == (tmp_path / "work").resolve() and (wd / "params.yaml").read_text() == "a: 1\n"
    assert "remote = s3" in (wd / ".dvc/config.local").read_text()
    (wd / "models/checkpoints/checkpoint-2").mkdir(parents=True)
    (wd / "params.yaml").write_text("a: 99\n")  # a stray local edit of a tracked file is reset
    (clone / "params.yaml").write_text("a: 2\n")
    _git(["commit", "-qam", "two"], clone)

    assert stages.prepare_workdir(str(tmp_path / "work")) == wd
    assert (wd / "params.yaml").read_text() == "a: 2\n" and _git(["rev-parse", "HEAD"], wd) == _git(
        ["rev-parse", "HEAD"], clone
    )
    assert (wd / "models/checkpoints/checkpoint-2").is_dir() and "remote = s3" in (wd / ".dvc/config.local").read_text()
    with pytest.raises(stages.StageError, match="default remote must be present"):
        stages.prepare_workdir(str(wd), dvc_remote="nosuch")
    monkeypatch.setattr(stages, "code_checkout", lambda: tmp_path / "not-git")
    with pytest.raises(stages.StageError, match="not a git checkout"):
        stages.prepare_workdir(str(tmp_path / "other"))


def test_summary_links_to_the_prefect_ui(tmp_path):
    from prefect.settings import PREFECT_UI_URL, temporary_settings

    from flows.retrain import _summary

    gpu = {"flow_run_id": "0b6f3a52-0000-4000-8000-000000000001", "flow_run_name": "brave-fox", "state": "Completed"}
    with temporary_settings(updates={PREFECT_UI_URL: "http://prefect.example:4200"}):
        md, _ = _summary(tmp_path, [], gpu, None, 1.0)
    assert f"[brave-fox](http://prefect.example:4200/runs/flow-run/{gpu['flow_run_id']})" in md, md


def test_the_summary_counts_the_inspectors_labels_new_since_the_last_run(tmp_path):
    """Issue 26 item 3: the retrain summary says how many inspectors' labels train used, and how many are new."""
    from flows.retrain import _summary, feedback_labels

    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    assert feedback_labels(tmp_path) is None  # no feedback source listed
    from readl.production.feedback import add_source

    add_source(tmp_path / "params.yaml")
    curated = tmp_path / "data/curated"
    curated.mkdir(parents=True)
    (tmp_path / "data/raw/feedback").mkdir(parents=True)
    (tmp_path / "data/raw/feedback/export.json").write_text('{"exported_at": "2026-12-07T10:00:00"}')
    sources = {"feedback": {"normal": 3, "anomalous": 2}, "bottle": {"normal": 14, "anomalous": 0}}
    (curated / "summary.json").write_text(json.dumps({"splits": {"train": {"sources": sources}}}))
    after = feedback_labels(tmp_path)
    assert after == {"images": 5, "exported_at": "2026-12-07T10:00:00"}
    md, _ = _summary(tmp_path, [], None, None, 1.0, ({"images": 2, "exported_at": None}, after))
    assert "5 images labelled by inspectors in train (feedback export of 2026-12-07T10:00:00): **+3**" in md, md


def test_local_run_sends_no_telemetry_unless_asked(monkeypatch, capsys):
    """`python -m flows.retrain --local` starts Prefect's ephemeral server, whose telemetry service logged
    "ERROR ... Failed to send telemetry" on every offline run: the run has analytics off unless
    PREFECT_SERVER_ANALYTICS_ENABLED says otherwise."""
    from prefect.settings import get_current_settings

    import flows.retrain as retrain_mod

    seen = []

    def fake_retrain(**kw):
        seen.append(get_current_settings().server.analytics_enabled)
        return {"stages": [], "promotion": None, "registered": None}

    from prefect.settings import PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings

    monkeypatch.setattr(retrain_mod, "retrain", fake_retrain)
    monkeypatch.delenv("PREFECT_SERVER_ANALYTICS_ENABLED")
    with temporary_settings({PREFECT_SERVER_ANALYTICS_ENABLED: True}):  # Prefect's default for a user
        assert retrain_mod.main(["--no-pull"]) == 0
        monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "true")  # asked for: left to Prefect
        assert retrain_mod.main(["--no-pull"]) == 0
    assert seen == [False, True]
