"""One set of exit codes for every command (readl.cli's docstring): 2 for bad input, 1 for a runtime failure, an
``error:`` line without a traceback, and the traceback with the global ``--debug``."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from readl.cli import EXIT_FAILURE, EXIT_USAGE, app, exit_code


def _bad_manifest(tmp_path):
    path = tmp_path / "split.parquet"
    pd.DataFrame({"image_path": ["a.png"], "label": [0]}).to_parquet(path)  # no source / category columns
    return path


@pytest.mark.parametrize("command", ["calibrate", "evaluate"])
def test_bad_manifest_is_usage_error_without_traceback(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = _bad_manifest(tmp_path)
    out = CliRunner().invoke(app, [command, "--manifest", str(bad)])
    assert out.exit_code == EXIT_USAGE == 2, out.output
    assert "split.parquet" in out.output and "lacks column(s) ['source', 'category']" in " ".join(out.output.split())
    assert "Traceback" not in out.output and out.output.lstrip().startswith("error:")

    debug = CliRunner().invoke(app, ["--debug", command, "--manifest", str(bad)])
    assert debug.exit_code == 2 and "Traceback (most recent call last)" in debug.output
    assert "read_manifest" in debug.output  # the frames of the failing call


@pytest.mark.parametrize("command", ["calibrate", "evaluate"])
def test_bad_params_is_usage_error(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("model:\n  image_size: 100\n")  # not a multiple of 28
    out = CliRunner().invoke(app, [command])
    assert out.exit_code == 2 and "image_size" in out.output and "Traceback" not in out.output


COMMANDS_WITH_PARAMS = ["curate", "warmup", "train", "calibrate", "evaluate", "register", "promote"]


@pytest.mark.parametrize("command", COMMANDS_WITH_PARAMS)
def test_a_missing_params_file_is_a_usage_error(command, tmp_path, monkeypatch):
    """Issue: `--params FILE` that does not exist ran the built-in defaults and exited 0."""
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(app, [command, "--params", "nope.yaml"])
    assert out.exit_code == 2 and "nope.yaml" in out.output and "file not found" in out.output, out.output
    assert "Traceback" not in out.output


@pytest.mark.parametrize("command", ["curate", "train", "evaluate", "promote"])
def test_a_misspelt_section_is_a_usage_error(command, tmp_path, monkeypatch):
    """Issue: `localisation:` / `modle:` were accepted and the defaults used."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("localisation:\n  alpha: 2.0\n")
    out = CliRunner().invoke(app, [command])
    assert out.exit_code == 2 and "localisation" in out.output and "Traceback" not in out.output, out.output


def test_register_bad_input_exit_code_and_debug_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "thresholds.json").write_text(json.dumps({"tau_t": {"value": 0.4}}))  # no tau_i
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    out = CliRunner().invoke(app, ["register"])
    assert out.exit_code == 2 and "thresholds.json" in out.output and "Traceback" not in out.output
    debug = CliRunner().invoke(app, ["--debug", "register"])
    assert debug.exit_code == 2 and "Traceback (most recent call last)" in debug.output
    assert not (tmp_path / "mlruns.db").exists()  # checked before anything is written


def test_missing_upstream_output_is_a_runtime_failure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(app, ["calibrate"])  # no data/curated/calib.parquet
    assert out.exit_code == EXIT_FAILURE == 1 and "readl curate" in out.output and "Traceback" not in out.output


def test_exit_code_rule():
    from readl.data.fetch import ManualDownloadRequired, UnknownSourceError
    from readl.registry import RegistryError

    assert exit_code(ValueError("x")) == 2 and exit_code(UnknownSourceError("nope")) == 2
    assert exit_code(ManualDownloadRequired("download by hand")) == 2
    assert exit_code(FileNotFoundError("x")) == 1 and exit_code(RegistryError("x")) == 1
    assert exit_code(TypeError("a bug")) == 1


def test_tables_and_log_lines_are_not_cut_outside_a_terminal(monkeypatch):
    """Piped or under a Prefect worker, rich assumes 80 columns and cut the summary tables ("mvtec…") and wrapped
    log lines; outside a terminal the CLI's consoles are 200 columns wide (COLUMNS still wins)."""
    import io

    from rich.table import Table

    from readl.stages.console import make_console

    monkeypatch.delenv("COLUMNS", raising=False)
    buf = io.StringIO()  # not a terminal
    monkeypatch.setattr("sys.stdout", buf)
    table = Table("dataset", "image.AUROC", "pixel.AUROC", "pixel.AUPR", "AUPRO", "decision ACC", "malformed answers")
    table.add_row("mvtec_ad_grid_and_hazelnut", "0.8123", "0.6751", "0.3012", "0.1500", "0.5000", "0 of 260")
    make_console().print(table)
    assert "mvtec_ad_grid_and_hazelnut" in buf.getvalue() and "malformed answers" in buf.getvalue(), buf.getvalue()
    monkeypatch.setenv("COLUMNS", "60")
    assert make_console().width == 60


@pytest.mark.parametrize("command", ["calibrate", "evaluate"])
@pytest.mark.parametrize("where", ["absolute", "dotdot"])
def test_a_manifest_path_outside_the_project_is_refused(command, where, tmp_path, monkeypatch):
    """Issue (read what should not be read): an absolute path outside the repository was evaluated silently."""
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(b"x")
    path = str(outside) if where == "absolute" else "../elsewhere.png"
    manifest = project / "split.parquet"
    pd.DataFrame(
        {"source": ["s"], "category": ["c"], "label": [0], "image_path": [path], "mask_path": [None]}
    ).to_parquet(manifest)
    out = CliRunner().invoke(app, [command, "--manifest", str(manifest)])
    assert out.exit_code == 2 and "lies outside the project" in out.output and "row 0" in out.output, out.output


@pytest.mark.parametrize("command", ["calibrate", "evaluate"])
@pytest.mark.parametrize(
    ("fault", "says"),
    [
        ("duplicate", "unique"),
        ("good_anomaly", "'good' exactly when label == 0"),
        ("label_2", "isin"),
        ("label_nan", "label"),
        ("null_path", "image_path"),
    ],
)
def test_a_manifest_that_breaks_the_schema_is_refused_before_the_model_loads(
    command, fault, says, tmp_path, monkeypatch
):
    """Issue (silently wrong): duplicated rows changed the metrics, label 1 with defect type `good` passed, and label 2
    / NaN / a null image_path failed only after the model ran, naming no file. The curate schema now runs first."""
    monkeypatch.chdir(tmp_path)
    rows = {
        "source": ["s"] * 3,
        "category": ["c"] * 3,
        "label": [0, 1, 1],
        "defect_type": ["good", "crack", "hole"],
        "image_path": ["a.png", "b.png", "c.png"],
        "mask_path": [None, "mb.png", "mc.png"],
    }
    df = pd.DataFrame(rows)
    if fault == "duplicate":
        df = pd.concat([df, df.iloc[[1]]], ignore_index=True)
    elif fault == "good_anomaly":
        df.loc[1, "defect_type"] = "good"
    elif fault == "label_2":
        df.loc[1, "label"] = 2
    elif fault == "label_nan":
        df["label"] = df["label"].astype(float).where(df.index != 1)
    else:
        df.loc[1, "image_path"] = None
    df.to_parquet("split.parquet")
    out = CliRunner().invoke(app, [command, "--manifest", "split.parquet"])
    assert out.exit_code == 2 and "split.parquet" in out.output and says in out.output, out.output
    assert "failed validation" in out.output and "row 1" in out.output, out.output


def test_promote_without_a_registry_creates_none(tmp_path, monkeypatch):
    """Issue: `readl promote` against a missing registry created an empty mlruns.db as a side effect."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = CliRunner().invoke(app, ["promote"])
    assert out.exit_code == 1 and "no MLflow registry" in out.output, out.output
    assert not list(tmp_path.iterdir()), "neither mlruns.db nor its lock is created"


@pytest.mark.parametrize("command", ["calibrate", "evaluate"])
def test_a_stage_run_before_its_inputs_exist_says_which_and_writes_nothing(command, sample_dir, tmp_path, monkeypatch):
    """Issue (new user): `readl calibrate` before warmup/train only warned, then wrote thresholds.json for the random
    base model; `evaluate` without thresholds said "omit it" without saying what to omit."""
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copy(sample_dir / "mvtec_ad/grid/test/good/000.png", tmp_path / "a.png")
    pd.DataFrame(
        {"source": ["s"], "category": ["c"], "label": [0], "image_path": ["a.png"], "mask_path": [None]}
    ).to_parquet("split.parquet")
    out = CliRunner().invoke(
        app,
        [command, "--manifest", "split.parquet", "--thresholds", "models/thresholds.json"]
        if command == "evaluate"
        else [command, "--manifest", "split.parquet"],
    )
    assert out.exit_code == 1, out.output
    if command == "evaluate":
        assert "models/thresholds.json" in out.output and "--thresholds none" in out.output, out.output
    else:
        assert "models/adapter" in out.output and "--adapter none" in out.output, out.output
    assert not (tmp_path / "models").exists() and not (tmp_path / "metrics.json").exists()


@pytest.mark.slow  # 4 interpreters per stage, each importing torch: ~10 s a stage
@pytest.mark.parametrize("stage", ["curate", "warmup", "train", "calibrate", "evaluate", "register"])
def test_the_stage_modules_dvc_runs_give_the_same_exit_codes(stage, tmp_path):
    """dvc.yaml runs ``python -m readl.stages.<stage>`` (not the CLI): same error line and exit codes as ``readl``."""
    import subprocess
    import sys

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", f"readl.stages.{stage}", *args],
            cwd=tmp_path,
            text=True,
            capture_output=True,
            timeout=300,
        )

    missing = run("--params", "nope.yaml")
    assert missing.returncode == EXIT_USAGE and "nope.yaml: file not found" in missing.stderr, missing.stderr
    assert "Traceback" not in missing.stderr
    (tmp_path / "params.yaml").write_text("localisation:\n  alpha: 2.0\n")
    assert run().returncode == EXIT_USAGE
    assert "Traceback (most recent call last)" in run("--debug").stderr
    assert run("--no-such-option").returncode == EXIT_USAGE  # argparse's usage error
