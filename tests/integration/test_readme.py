"""The README's command blocks run verbatim (bash) in a fresh copy of the repository after its `repro` block
(`make repro`, with fewer steps in the copy's params.yaml: tests/readme_blocks.py FEWER): `test`, `predict`,
`serve` + one request, `mlflow` (server + the registry over REST), `s3-push` / `s3-pull` (another machine, a real
local S3 server), the production loop (`production-*`: inspect, the review page driven in headless Chromium,
export, curate). Ports are the only substitution; servers are stopped with the block's process group. The
Prefect blocks: tests/integration/test_readme_prefect.py; the pipeline's outputs after `repro`:
tests/integration/test_pipeline_e2e.py."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from readme_blocks import (
    BIN,
    free_port,
    readme_blocks,
    reproduced_copy,
    run_block,
    stop_group,
    user_env,
    wait_http,
    with_port,
)

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
    "production-inspect",
    "production-review",
    "production-export",
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


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium; .ci/run does)")
def test_production_loop_blocks_inspect_review_in_chromium_export_and_curate(project, tmp_path):
    """Issue 26: 20 bundled images dropped into intake/ -> the `inspect` flow with the champion -> records -> 5
    verdicts given on the review page in headless Chromium (a real browser, keys and clicks) -> `readl feedback
    export` -> `dvc add` -> `dvc repro curate`: the 5 labelled rows are in train. In a copy of the reproduced
    project (`cp -a`), so the other README tests keep theirs."""
    import pandas as pd
    from playwright.sync_api import sync_playwright

    work = tmp_path / "readl"
    shutil.copytree(project, work, symlinks=True)
    env, blocks = user_env(work), readme_blocks()
    ran = run_block(blocks["production-inspect"], work, env, 900, tmp_path / "logs-inspect").check("inspect")
    assert json.loads(ran.stdout.strip().splitlines()[-1])["new"] == 20, ran.stdout[-2000:]
    assert "images/s" in ran.stdout + ran.stderr
    port = free_port()
    review = run_block(
        with_port(blocks["production-review"], 8080, port), work, env, 60, tmp_path / "logs-review", stop=False
    )
    given: dict[str, str] = {}
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 60)
        name, token = re.search(r'READL_REVIEWERS="(\w+):([^,"]+)', blocks["production-review"]).groups()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            page.fill("#reviewer", name)
            page.fill("#token", token)
            page.click("button[type=submit]")
            page.wait_for_selector("body[data-image]")
            assert page.locator("#reasoning .sel").count() > 0  # ReAL-selected tokens highlighted
            page.screenshot(path=str(tmp_path / "review.png"))
            for verdict in ("ng", "ok", "ng", "ok", "ok"):
                image = page.get_attribute("body", "data-image")
                if verdict == "ng":
                    page.fill("#defect", "scratch")
                    page.click("#btn-ng")
                else:
                    page.keyboard.press("o")
                page.wait_for_function("(before) => document.body.dataset.image !== before", arg=image)
                given[image] = verdict
            assert "15 images waiting" in page.inner_text("#status")
            page.goto(f"http://127.0.0.1:{port}/summary")  # agreement of the champion's decisions with the verdicts
            row = page.locator("table tr").nth(1).inner_text()
            assert row.startswith("models:/readl@champion") and row.split("\t")[1] == "5", row
            page.screenshot(path=str(tmp_path / "summary.png"), full_page=True)
            browser.close()
    finally:
        stop_group(review.pgid)
    run_block(blocks["production-export"], work, env, 900, tmp_path / "logs-export").check("export")
    train = pd.read_parquet(work / "data/curated/train.parquet")
    fed = train[train["source"] == "feedback"]
    got = {Path(p).stem: int(label) for p, label in zip(fed["raw_image_path"], fed["label"])}
    assert got == {h: int(v == "ng") for h, v in given.items()}, (got, given)
    assert set(fed["defect_type"]) == {"good", "scratch"}
    assert "feedback" in (work / "params.yaml").read_text() and "feedback" not in (project / "params.yaml").read_text()
    import mlflow  # the agreement per model version, logged by the export

    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlruns.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("readl-production").experiment_id])
    assert run.data.tags["model_version"].startswith("models:/readl@champion") and run.data.metrics["n_verdicts"] == 5
