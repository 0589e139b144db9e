"""The README's command blocks run verbatim (bash) in a fresh copy of the repository after its `repro` block
(`make repro`, with fewer steps in the copy's params.yaml: tests/readme_blocks.py FEWER): `test`, `predict`,
`serve` + one request, `mlflow` (server + the registry over REST), `s3-push` / `s3-pull` (another machine, a real
local S3 server). Ports are the only substitution; servers are stopped with the block's process group. The
Prefect blocks: tests/integration/test_readme_prefect.py; the pipeline's outputs after `repro`:
tests/integration/test_pipeline_e2e.py."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest
from readme_blocks import BIN, free_port, readme_blocks, reproduced_copy, run_block, stop_group, user_env, with_port

BLOCKS = {
    "repro",
    "dvc",
    "test",
    "mlflow",
    "predict",
    "serve",
    "s3-push",
    "s3-pull",
    "prefect-deploy",
    "prefect-workers",
}


def test_readme_marks_the_blocks_a_user_runs():
    blocks = readme_blocks()
    assert set(blocks) == BLOCKS, sorted(blocks)
    assert all(b.strip() and not b.startswith(" ") for b in blocks.values())
    assert blocks["repro"] == "make repro\n" and blocks["s3-pull"].startswith("dvc pull -r s3\n")


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_dir):
    work, _ = reproduced_copy(tmp_path_factory)
    return work


@pytest.mark.slow
def test_dvc_block_works_from_a_shell_without_the_venv(project):
    """A user's shell: the venv is NOT on PATH (only the block's `source .venv/bin/activate` puts it there)."""
    venv_bins = {str(project / ".venv" / "bin"), str(BIN)}
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p not in venv_bins)
    env = {**user_env(project), "PATH": path}
    ran = run_block(readme_blocks()["dvc"], project, env, 300, project.parent / "logs-dvc").check("dvc")
    assert "Data and pipelines are up to date" in ran.stdout + ran.stderr  # `make repro` left nothing to do


@pytest.mark.slow
def test_test_block_runs_the_suite(project):
    """`make test` as written, with the suite narrowed by PYTEST_ADDOPTS to one quick test (the whole suite
    inside the suite would run it twice)."""
    env = user_env(project, PYTEST_ADDOPTS="tests/integration/test_readme.py::test_readme_marks_the_blocks_a_user_runs")
    ran = run_block(readme_blocks()["test"], project, env, 600, project.parent / "logs-test").check("test")
    assert "1 passed" in ran.stdout + ran.stderr


@pytest.mark.slow
def test_predict_block(project):
    run_block(readme_blocks()["predict"], project, user_env(project), 600, project.parent / "logs-predict").check(
        "predict"
    )
    for record in (project / "predictions" / "000.json", project / "predictions" / "00.json"):
        rec = json.loads(record.read_text())
        assert rec["decision"] in ("anomalous", "normal") and 0 <= rec["score"] <= 1
    assert json.loads((project / "predictions/00.json").read_text())["model"]  # names the registered model


@pytest.mark.slow
def test_serve_block_answers_with_valid_json_and_a_decision(project):
    port = free_port()
    block = with_port(readme_blocks()["serve"], 5001, port)
    ran = run_block(block, project, user_env(project), 600, project.parent / "logs-serve").check("serve")
    row = json.loads(ran.stdout.strip().splitlines()[-1], parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    served = json.loads((project / "response.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert served["predictions"][0]["anomaly_map"] and "anomaly_map" not in row
    thresholds = json.loads((project / "models/thresholds.json").read_text())
    assert row["error"] == "" and row["decision"] in ("anomalous", "normal")
    assert row["threshold"] == pytest.approx(thresholds["decision"]["value"])
    assert not (project / "mlflow.db").exists()


@pytest.mark.slow
def test_mlflow_block_serves_the_registry(project):
    port = free_port()
    ran = run_block(
        with_port(readme_blocks()["mlflow"], 5000, port),
        project,
        user_env(project),
        300,
        project.parent / "logs-mlflow",
        stop=False,
    )
    try:
        ran.check("mlflow")
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/registered-models/alias?name=readl&alias=champion"
        with urllib.request.urlopen(url, timeout=30) as resp:
            version = json.loads(resp.read())["model_version"]
        assert version["name"] == "readl" and version["aliases"] == ["champion"] and version["run_id"]
    finally:
        stop_group(ran.pgid)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


@pytest.mark.slow
def test_s3_push_then_pull_on_another_machine(project, fresh_s3_server, tmp_path):
    """`dvc push -r s3` + commit after the run; a clone elsewhere pulls every cached output, warmup and train are up
    to date, and only stages with uncached outputs (not pushed) are not. Endpoint and keys from the environment."""
    fresh_s3_server.client().create_bucket(Bucket="readl-data")
    s3 = {
        "AWS_ENDPOINT_URL": fresh_s3_server.endpoint,
        "AWS_ACCESS_KEY_ID": fresh_s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": fresh_s3_server.secret_key,
    }
    blocks = readme_blocks()
    run_block(blocks["s3-push"], project, user_env(project, **s3), 600, tmp_path / "logs-push").check("s3-push")
    elsewhere = tmp_path / "elsewhere"
    subprocess.run(["git", "clone", "-q", str(project), str(elsewhere)], check=True, capture_output=True)
    assert not (elsewhere / "data/raw").exists() and (elsewhere / "dvc.lock").is_file()
    env = user_env(elsewhere, **s3)
    ran = run_block(blocks["s3-pull"], elsewhere, env, 600, tmp_path / "logs-pull").check("s3-pull")
    assert "Data and pipelines are up to date." in ran.stdout, ran.stdout
    for out in ("data/raw", "data/curated/images", "models/warmup", "models/adapter"):
        assert _digest(elsewhere / out) == _digest(project / out), out
    # what is not up to date there: only the stages with uncached outputs (not pushed), only those outputs missing
    status = json.loads(
        subprocess.run(
            ["dvc", "status", "--json"], cwd=elsewhere, env=env, capture_output=True, text=True, check=True
        ).stdout
    )
    assert set(status) == {"curate", "calibrate", "evaluate", "register"}, status
    uncached = _uncached_outs(elsewhere)
    for stage, changes in status.items():
        files = {
            path: what
            for change in changes
            for kind in ("changed outs", "changed deps")
            for path, what in change.get(kind, {}).items()
        }
        assert files and set(files.values()) == {"deleted"} and set(files) <= uncached, (stage, changes)


def _uncached_outs(work: Path) -> set[str]:
    import yaml

    stages = yaml.safe_load((work / "dvc.yaml").read_text())["stages"]
    return {
        path
        for s in stages.values()
        for kind in ("outs", "metrics", "plots")
        for o in s.get(kind, [])
        if isinstance(o, dict)
        for path, opts in o.items()
        if (opts or {}).get("cache") is False
    }
