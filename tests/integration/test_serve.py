"""`readl serve` as the README says: a model registered in the project's own store (mlruns.db, no
MLFLOW_TRACKING_URI) served by `mlflow models serve`, one request answered with valid JSON and an OK/NG decision;
registering emits none of MLflow's signature / input-example / type-hint warnings."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import subprocess
import sys
import urllib.request
import warnings
from pathlib import Path

import pytest
import yaml
from support import IMAGE, PARAMS
from support import free_port as _free_port
from support import stop as _stop
from support import wait_http as _wait_http

BIN = Path(sys.executable).parent
MLFLOW_NOISE = ("type hint", "input example", "input_example", "signature")


@pytest.fixture(scope="module")
def project(tiny_dir, tmp_path_factory):
    """A project folder after evaluate: params.yaml, models/{adapter,thresholds.json}, metrics.json."""
    from peft import LoraConfig, get_peft_model

    from readl.model.loading import load_model

    work = tmp_path_factory.mktemp("serve") / "project"
    (work / "models").mkdir(parents=True)
    (work / "params.yaml").write_text(yaml.safe_dump({**PARAMS, "register": {"model_name": "readl"}}))
    model, _ = load_model("tiny", device="cpu")
    get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])).save_pretrained(
        work / "models" / "adapter"
    )
    (work / "models" / "thresholds.json").write_text(
        json.dumps({"tau_t": {"value": 0.4}, "tau_i": {"value": 0.5}, "decision": {"value": 0.25, "rule": "f1_max"}})
    )
    image = {"AUROC": 0.8, "AUPR": 0.7, "ACC": 0.6, "F1_max": 0.7}
    pixel = {"AUROC": 0.9, "AUPR": 0.3, "AUPRO": 0.5, "ACC": None}
    (work / "metrics.json").write_text(
        json.dumps(
            {  # complete: `readl register` checks it before writing anything
                "image": image,
                "pixel": pixel,
                "n_images": 1,
                "n_malformed": 0,
                "datasets": {"mvtec_ad": {"image": image, "pixel": pixel, "n_malformed": 0}},
            }
        )
    )
    return work


@pytest.fixture(scope="module")
def registered(project):
    """`readl register --promote` in the project folder (default store sqlite:///mlruns.db), warnings recorded."""
    from readl.config import load_params
    from readl.registry.gate import promote
    from readl.registry.registration import register

    old_cwd, old_uri = os.getcwd(), os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(project)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("mlflow").addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = register(manifests=[])
            promote(load_params("params.yaml").register)
    finally:
        logging.getLogger("mlflow").removeHandler(handler)
        os.chdir(old_cwd)
        if old_uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri
    return result, [str(w.message) for w in caught], [r.getMessage() for r in records if r.levelno >= logging.WARNING]


def test_register_emits_no_signature_or_input_example_warnings(registered):
    result, warned, logged = registered
    assert result.version == "1"
    noisy = [m for m in warned + logged if any(k in m.lower() for k in MLFLOW_NOISE)]
    assert not noisy, noisy


def _post(port: int, body: dict) -> tuple[int, str]:
    """POST ``body`` to the server's /invocations: (HTTP status, body text)."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=180) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _rows(port: int, body: dict) -> list[dict]:
    """The predictions of one request; anything but HTTP 200, or a NaN in the JSON, fails with the server's text."""
    status, text = _post(port, body)
    assert status == 200, f"HTTP {status}: {text[:2000]}"
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c} in the response"))[
        "predictions"
    ]


def _env() -> dict[str, str]:
    """The environment of a user in the project folder: no MLFLOW_TRACKING_URI (the store is ./mlruns.db)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(READL_DEVICE="cpu", PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    return env


@contextlib.contextmanager
def _serving(folder: Path):
    """`readl serve` in ``folder`` on a free port until the block ends; yields the port once /ping answers."""
    port, log = _free_port(), folder / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [str(BIN / "readl"), "serve", "-p", str(port)],
            cwd=folder,
            env=_env(),
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_http(f"http://127.0.0.1:{port}/ping", proc, 180, log)
        yield port
    finally:
        _stop(proc)


@pytest.mark.slow
def test_readl_serve_answers_with_valid_json_and_a_decision(registered, project, sample_dir):
    """One row out per row in, whatever the request's shape (issue: a null image cell failed the whole request,
    `instances` read the base64 text as bytes, a `data:` URL got 400, an unknown column gave `[]`)."""
    with _serving(project) as port:
        img = base64.b64encode((sample_dir / IMAGE).read_bytes()).decode()
        bad = base64.b64encode(b"not an image").decode()
        good, mixed_bad, passwd = _rows(
            port,
            {
                "dataframe_split": {
                    "columns": ["image", "path"],
                    "data": [[img, None], [bad, None], [None, "/etc/passwd"]],
                }
            },
        )
        (instance,) = _rows(port, {"instances": [{"image": img}]})
        (data_url,) = _rows(
            port, {"dataframe_split": {"columns": ["image"], "data": [[f"data:image/png;base64,{img}"]]}}
        )
        (record,) = _rows(port, {"dataframe_records": [{"image": img}]})
        unknown = _post(port, {"dataframe_split": {"columns": ["img"], "data": [[img]]}})

    assert "'path' column is off" in passwd["error"] and "root:" not in passwd["error"]  # no server file is read
    assert good["error"] == "" and good["answer"] in ("Yes", "No", None)
    image_score = 0.5 if good["answer"] is None else good["score"]  # a malformed answer: evaluate's fallback score
    assert good["threshold"] == 0.25 and good["decision"] == ("anomalous" if image_score >= 0.25 else "normal")
    assert "not a readable image" in mixed_bad["error"]
    assert (mixed_bad["score"], mixed_bad["answer"], mixed_bad["decision"]) == (None, None, None)
    for same in (instance, data_url, record):  # the same image, sent three other ways
        assert same["error"] == "" and same["score"] == good["score"] and same["answer"] == good["answer"]
    assert unknown[0] == 400 and "'image'" in unknown[1] and "'path'" in unknown[1], unknown  # never `[]`
    assert not (project / "mlflow.db").exists(), "no stray MLflow default store"


def test_serve_outside_a_project_is_a_clear_error_and_creates_nothing(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from readl.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 1 and "no MLflow registry" in result.output and "MLFLOW_TRACKING_URI" in result.output
    assert not list(tmp_path.iterdir()), "neither mlruns.db nor mlflow.db is created"


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file of ``folder``'s registry (``mlruns.db``, ``mlruns/``): what a write into it
    would change (the rest of the folder, e.g. another test's serve.log, is not the registry's)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in [folder / "mlruns.db", *(folder / "mlruns").rglob("*")]
        if p.is_file()
    }


@pytest.mark.slow
def test_a_copied_or_moved_project_registers_promotes_predicts_and_serves_on_its_own(
    registered, project, sample_dir, tmp_path
):
    """Issue: MLflow stores artifact locations as absolute paths, so `register` in a `cp -a` copy wrote into the
    ORIGINAL's mlruns/, and after `mv` `predict --model models:/readl@champion` said "not found" and `readl serve`
    died with a traceback; `promote` promoted a version whose artifacts were deleted."""
    import shutil

    before = _tree(project)
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(project), str(copy)], check=True)

    def readl(cwd: Path, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "readl"), *args], cwd=cwd, env=_env(), text=True, capture_output=True)

    # a better model in the copy: register (new version 2) and promote it there
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics["image"]["AUROC"] = metrics["datasets"]["mvtec_ad"]["image"]["AUROC"] = 0.9
    (copy / "metrics.json").write_text(json.dumps(metrics))
    for args in (["register"], ["promote"]):
        done = readl(copy, *args)
        assert done.returncode == 0, done.stdout + done.stderr
    image = str(sample_dir / IMAGE)
    predicted = readl(copy, "predict", "--model", "models:/readl@champion", image, "--out", "out")
    assert predicted.returncode == 0, predicted.stdout + predicted.stderr
    assert json.loads(next((copy / "out").glob("*.json")).read_text())["model"]["registered"].endswith("(version 2)")
    assert _tree(project) == before, "the copy wrote into the original project"
    import sqlite3

    with sqlite3.connect(copy / "mlruns.db") as con:
        locations = [r[0] for r in con.execute("SELECT storage_location FROM model_versions")]
    assert len(locations) == 2 and all(loc.startswith(str(copy / "mlruns")) for loc in locations), locations

    # moved: predict and serve find their model in the new place
    moved = tmp_path / "moved"
    shutil.move(copy, moved)
    predicted = readl(moved, "predict", "--model", "models:/readl@champion", image, "--out", "out2")
    assert predicted.returncode == 0, predicted.stdout + predicted.stderr
    with _serving(moved) as port:
        img = base64.b64encode((sample_dir / IMAGE).read_bytes()).decode()
        (row,) = _rows(port, {"dataframe_split": {"columns": ["image"], "data": [[img]]}})
        assert row["error"] == ""

    # artifacts deleted: serve and promote refuse with the reason, no traceback
    with sqlite3.connect(moved / "mlruns.db") as con:
        (v2,) = con.execute("SELECT storage_location FROM model_versions WHERE version = 2").fetchone()
    shutil.rmtree(v2)
    served = readl(moved, "serve", "-p", str(_free_port()))
    assert served.returncode == 1 and "artifacts are missing" in served.stderr, served.stderr
    assert "Traceback" not in served.stderr
