"""MLflow registry: register -> promote -> load by alias -> predict against a real `mlflow server` (sqlite backend,
artifacts on a real local S3 server: `rclone serve s3`), the promotion gate, idempotent and concurrent
registration, `mlflow models serve`, and the error paths (unreachable server, missing alias, S3 failures)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from support import IMAGE, PARAMS
from support import free_port as _free_port
from support import stop as _stop
from support import wait_http as _wait_http

from readl.localization.thresholds import ThresholdPair, ThresholdSpec
from readl.registry.gate import compare, promote
from readl.registry.pyfunc import OUTPUT_COLUMNS, decode_map, encode_map
from readl.registry.registration import (
    FINGERPRINT_TAG,
    flatten_metrics,
    git_commit,
    manifest_digest,
    register,
)
from readl.tracking import (
    AliasNotFoundError,
    ArtifactStoreError,
    TrackingUnavailableError,
    connect,
    is_transient,
    with_retries,
)

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent


def _register_cfg(**kw):
    from readl.config import RegisterConfig

    return RegisterConfig.model_validate(kw)


def _bucket(server, name: str) -> None:
    """Create a bucket through the S3 API (rclone caches its listing of the served folder)."""
    client = server.client()
    if name not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=name)


# --- fixtures: a real MLflow server with S3 artifacts ------------------------------------------------------------
@pytest.fixture(scope="module")
def mlflow_server(s3_server, tmp_path_factory):
    """`mlflow server` on a free 127.0.0.1 port: sqlite backend, artifacts proxied to s3://mlflow/artifacts on the
    local S3 server (the server's environment holds MLFLOW_S3_ENDPOINT_URL and the keys). Stopped by PID."""
    base = tmp_path_factory.mktemp("mlflow-server")
    _bucket(s3_server, "mlflow")
    env = {
        **os.environ,
        "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log = base / "server.log"
    for _ in range(3):
        port = _free_port()
        cmd = [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{base / 'mlflow.db'}",
            "--artifacts-destination",
            "s3://mlflow/artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
        ]
        with open(log, "ab") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            _wait_http(f"http://127.0.0.1:{port}/health", proc, 90, log)
            break
        except RuntimeError:
            _stop(proc)
    else:
        raise RuntimeError(f"mlflow server did not start:\n{log.read_text()[-3000:]}")
    uri = f"http://127.0.0.1:{port}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield SimpleNamespace(uri=uri, s3=s3_server, proc=proc, log=log)
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old
    _stop(proc)


@pytest.fixture(scope="module")
def adapter(tiny_dir, tmp_path_factory) -> Path:
    """A real (tiny) PEFT LoRA adapter on the tiny Qwen2.5-VL."""
    from peft import LoraConfig, get_peft_model

    from readl.model.loading import load_model

    out = tmp_path_factory.mktemp("adapter") / "adapter"
    model, _ = load_model("tiny", device="cpu")
    get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])).save_pretrained(out)
    return out


def _metrics(image_auroc: float, pixel_auroc: float, ds: dict[str, tuple[float, float]] | None = None) -> dict:
    ds = ds or {"mvtec_ad": (image_auroc, pixel_auroc)}
    per = {
        n: {
            "image": {"AUROC": a, "AUPR": 0.7, "ACC": 0.6, "F1_max": 0.7},
            "pixel": {"AUROC": p, "AUPR": 0.3, "AUPRO": 0.5, "ACC": None},
            "n_malformed": 0,
        }
        for n, (a, p) in ds.items()
    }
    return {
        "image": {"AUROC": image_auroc, "AUPR": 0.7, "ACC": 0.6, "F1_max": 0.7},
        "pixel": {"AUROC": pixel_auroc, "AUPR": 0.3, "AUPRO": 0.5, "ACC": None},
        "datasets": per,
        "n_images": 14,
        "n_malformed": 0,
        "thresholds": {"tau_t": 0.4, "source": "x"},
        "reasoning": {"ROUGE_L": 0.3, "SBERT": 0.7, "n": 14, "reference_source": {"mvtec_ad": "template"}},
    }


def _workdir(root: Path, adapter: Path, metrics: dict, uri: str | None, experiment: str = "readl-test") -> Path:
    """A stage folder like the repository after evaluate: params.yaml, models/{adapter,thresholds.json,
    train_run.json} (a run created on the server), metrics.json, data/curated manifests."""
    import shutil

    import mlflow

    root.mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    shutil.copytree(adapter, root / "models" / "adapter")
    (root / "models" / "thresholds.json").write_text(json.dumps({"tau_t": {"value": 0.4}, "tau_i": {"value": 0.5}}))
    (root / "metrics.json").write_text(json.dumps(metrics))
    (root / "data" / "curated").mkdir(parents=True)
    for split in ("train", "calib", "eval"):
        pd.DataFrame({"image_path": [f"{split}.png"], "label": [0]}).to_parquet(
            root / "data/curated" / f"{split}.parquet"
        )
    if uri is not None:
        client = mlflow.MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
        run = client.create_run(exp_id, tags={"readl.stage": "train"})
        client.set_terminated(run.info.run_id)
        (root / "models" / "train_run.json").write_text(
            json.dumps({"run_id": run.info.run_id, "experiment_id": exp_id})
        )
    return root


def _register(work: Path, **kw):
    return register(
        params_file=work / "params.yaml",
        adapter=work / "models/adapter",
        thresholds=work / "models/thresholds.json",
        metrics=work / "metrics.json",
        train_run=work / "models/train_run.json",
        manifests=[work / f"data/curated/{s}.parquet" for s in ("train", "calib", "eval")],
        out=work / "models/registered.json",
        **kw,
    )


@pytest.fixture(scope="module")
def champion(mlflow_server, adapter, tmp_path_factory):
    """`readl`-style model 'readl-e2e' registered (challenger) from a training run and promoted (champion)."""
    work = _workdir(tmp_path_factory.mktemp("e2e") / "w", adapter, _metrics(0.8, 0.9), mlflow_server.uri)
    first = _register(work, name="readl-e2e")
    again = _register(work, name="readl-e2e")
    decision = promote(_register_cfg(), name="readl-e2e")
    return SimpleNamespace(work=work, first=first, again=again, decision=decision, name="readl-e2e")


# --- end to end ---------------------------------------------------------------------------------------------------
def test_register_promote_load_predict(champion, mlflow_server, sample_dir):
    import mlflow

    first, work = champion.first, champion.work
    run_id = json.loads((work / "models/train_run.json").read_text())["run_id"]
    assert (first.name, first.version, first.run_id, first.aliases) == ("readl-e2e", "1", run_id, ["challenger"])
    assert not first.reused
    # registering the same run again reuses the version (registered.json is from that second call)
    assert (champion.again.version, champion.again.reused) == ("1", True)
    assert json.loads((work / "models/registered.json").read_text()) == {
        "name": "readl-e2e",
        "version": "1",
        "run_id": run_id,
        "aliases": ["challenger"],
        "model_uri": "models:/readl-e2e/1",
        "source": first.source,
        "fingerprint": first.fingerprint,
        "reused": True,
        "tracking_uri": mlflow_server.uri,
    }
    client = mlflow.MlflowClient(mlflow_server.uri)
    assert [v.version for v in client.search_model_versions("name='readl-e2e'")] == ["1"]
    mv = client.get_model_version("readl-e2e", "1")
    assert mv.run_id == run_id and mv.source.startswith("models:/m-")
    tags = mv.tags
    assert tags["metrics.image.AUROC"] == "0.8" and tags["metrics.datasets.mvtec_ad.pixel.AUROC"] == "0.9"
    assert tags["metrics.pixel.ACC"] == "null"
    assert json.loads(tags["reasoning_reference_source"]) == {"mvtec_ad": "template"}  # what ROUGE-L / SBERT mean
    assert tags["data_manifest_sha256"] == manifest_digest(
        [work / f"data/curated/{s}.parquet" for s in ("train", "calib", "eval")]
    )
    assert len(tags["params_sha256"]) == 64 and tags[FINGERPRINT_TAG] == first.fingerprint
    assert tags["git_commit"] == "unknown"  # the stage folder is outside git
    assert tags["base_model"] == "tiny" and tags["adapter"] == "yes"
    # the artifacts went through the server to S3
    stored = [p.name for p in (mlflow_server.s3.root / "mlflow" / "artifacts").rglob("*") if p.is_file()]
    assert {"MLmodel", "adapter_model.safetensors", "adapter_config.json", "thresholds.json", "params.json"} <= set(
        stored
    )
    # the logged model lives in the training run
    logged = mlflow.get_logged_model(first.source.split("/", 1)[1])
    assert logged.source_run_id == run_id
    # promote: the first model becomes champion
    d = champion.decision
    assert d.promoted and d.champion_before is None and "first model" in d.reason
    assert client.get_model_version_by_alias("readl-e2e", "champion").version == "1"

    # load by alias and predict: image bytes, a path, and a broken row
    from readl.registry.load import load_registered

    model = load_registered("models:/readl-e2e@champion", device="cpu")
    assert (
        model.adapter is not None
        and model.taus == ThresholdPair(ThresholdSpec("fixed", 0.4), ThresholdSpec("fixed", 0.5))
        and model.params.model.image_size == 112
    )
    img = sample_dir / IMAGE
    model.path_root = sample_dir.resolve()  # `path` rows: off unless the operator allows one folder
    out = model.predict(
        None, pd.DataFrame({"image": [img.read_bytes(), None, b"not an image"], "path": [None, str(img), None]})
    )
    assert list(out.columns) == OUTPUT_COLUMNS and len(out) == 3
    with Image.open(img) as im:
        hw = (im.height, im.width)
    for i in (0, 1):
        row = out.iloc[i]
        assert row.error == "" and row.answer in ("Yes", "No", None)  # null: no answer
        image_score = 0.5 if row.answer is None else row.score  # a malformed answer: evaluate's fallback score
        assert row.decision == ("anomalous" if image_score >= row.threshold else "normal")
        m = decode_map(row.anomaly_map, row.map_max)
        assert (
            m.shape == hw and m.dtype == np.float32 and abs(float(m.max()) - row.map_max) <= row.map_max / 65535 + 1e-9
        )
        assert np.asarray(row.map_grid).ndim == 2 and np.asarray(row.map_grid).size > 1  # the token grid
    assert out.iloc[0].score == pytest.approx(out.iloc[1].score, abs=1e-6)  # same image, both inputs
    assert "row 2" in out.iloc[2].error and "not a readable image" in out.iloc[2].error


def test_cli_predict_from_registry(champion, sample_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from readl.cli import app

    monkeypatch.chdir(tmp_path)
    img = sample_dir / IMAGE
    result = CliRunner().invoke(
        app,
        [
            "predict",
            str(img),
            "--model",
            "models:/readl-e2e@champion",
            "--out",
            "out",
            "--device",
            "cpu",
            "--no-annotate",
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "000.json").read_text())
    assert record["tau"] == {"t": 0.4, "i": 0.5}  # the registered thresholds
    image_score = 0.5 if record["answer"] is None else record["score"]  # a malformed answer: the fallback score
    assert record["decision"] == ("anomalous" if image_score >= record["threshold"]["value"] else "normal")
    assert record["model"]["registered"] == "models:/readl-e2e@champion (version 1)" and record["model"]["adapter"]
    with Image.open(img) as src, Image.open(tmp_path / "out" / "000.png") as png:
        assert png.size == src.size


def test_gate_refuses_a_worse_challenger(mlflow_server, adapter, tmp_path):
    import mlflow
    from typer.testing import CliRunner

    from readl.cli import app

    name, cfg = "readl-gate", _register_cfg()
    client = mlflow.MlflowClient(mlflow_server.uri)
    v1 = _register(_workdir(tmp_path / "v1", adapter, _metrics(0.80, 0.90), mlflow_server.uri), name=name)
    assert promote(cfg, name=name).promoted
    # better image AUROC but mvtec_ad pixel AUROC drops 0.05 > max_drop 0.02
    v2 = _register(_workdir(tmp_path / "v2", adapter, _metrics(0.85, 0.85), mlflow_server.uri), name=name)
    assert v2.aliases == ["challenger"] and v2.version == "2"
    d = promote(cfg, name=name)
    assert not d.promoted and d.champion_before == v1.version and d.champion_after == "1"
    failed = [c for c in d.checks if not c.passed]
    assert [(c.scope, c.metric) for c in failed] == [("mvtec_ad", "pixel.AUROC")]
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    # the CLI shows the table and exits 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"register": {"model_name": name}}))
    result = CliRunner().invoke(app, ["promote", "--params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 1, result.output
    assert "refused" in result.output and "mvtec_ad" in result.output and "pixel.AUROC" in result.output
    # a challenger that is better everywhere is promoted
    v3 = _register(_workdir(tmp_path / "v3", adapter, _metrics(0.86, 0.91), mlflow_server.uri), name=name)
    d = promote(cfg, name=name)
    assert d.promoted and d.champion_before == "1" and d.champion_after == v3.version == "3"
    mv = client.get_model_version_by_alias(name, "champion")
    assert mv.version == "3" and mv.tags["readl.previous_champion"] == "1"
    assert promote(cfg, name=name).reason == "version 3 is already champion"


def test_concurrent_registrations_land_consistently(mlflow_server, adapter, tmp_path):
    """Three processes at once: A and A2 register the same run and content, B another run. Expect two versions,
    A and A2 agree on theirs, challenger on the newest, each version holding its own run."""
    import mlflow

    name = "readl-conc"
    wa = _workdir(tmp_path / "a", adapter, _metrics(0.7, 0.8), mlflow_server.uri)
    wb = _workdir(tmp_path / "b", adapter, _metrics(0.75, 0.8), mlflow_server.uri)
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from readl.registry.registration import register
        w, out = Path(sys.argv[1]), sys.argv[2]
        register(params_file=w / "params.yaml", adapter=w / "models/adapter", thresholds=w / "models/thresholds.json",
                 metrics=w / "metrics.json", train_run=w / "models/train_run.json", manifests=[], out=out,
                 name={name!r})
    """)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri}
    jobs = [(wa, tmp_path / "a.json"), (wa, tmp_path / "a2.json"), (wb, tmp_path / "b.json")]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(w), str(o)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for w, o in jobs
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(o[-2000:] for o in outs)
    a, a2, b = (json.loads(o.read_text()) for _, o in jobs)
    client = mlflow.MlflowClient(mlflow_server.uri)
    versions = {v.version: v for v in client.search_model_versions(f"name='{name}'")}
    assert len(versions) == 2, {v: (x.run_id, x.source) for v, x in versions.items()}
    assert a["version"] == a2["version"] != b["version"]
    for rec, w in ((a, wa), (b, wb)):
        run_id = json.loads((w / "models/train_run.json").read_text())["run_id"]
        assert rec["run_id"] == run_id and versions[rec["version"]].run_id == run_id
    newest = max(versions, key=int)
    assert client.get_model_version_by_alias(name, "challenger").version == newest


@pytest.mark.slow
def test_mlflow_models_serve(champion, mlflow_server, sample_dir, tmp_path):
    """`mlflow models serve -m models:/NAME@champion --env-manager local`: one image as base64 JSON."""
    port = _free_port()
    log = tmp_path / "serve.log"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_server.uri,
        "READL_DEVICE": "cpu",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "models",
                "serve",
                "-m",
                f"models:/{champion.name}@champion",
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            cwd=tmp_path,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_http(f"http://127.0.0.1:{port}/ping", proc, 120, log)
        img = sample_dir / IMAGE
        body = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(img.read_bytes()).decode()]]}}
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=120) as resp:
            pred = json.loads(resp.read())["predictions"][0]
    finally:
        _stop(proc)
    assert set(pred) == set(OUTPUT_COLUMNS) and pred["error"] == ""
    image_score = 0.5 if pred["answer"] is None else pred["score"]  # a malformed answer: the fallback score
    assert pred["decision"] == ("anomalous" if image_score >= pred["threshold"] else "normal")
    with Image.open(img) as im:
        assert decode_map(pred["anomaly_map"], pred["map_max"]).shape == (im.height, im.width)
    assert np.asarray(pred["map_grid"]).ndim == 2


# --- errors ------------------------------------------------------------------------------------------------------
def test_unreachable_tracking_server_is_a_clear_error(adapter, tmp_path, monkeypatch):
    import readl.tracking as client_module

    dead = f"http://127.0.0.1:{_free_port()}"
    probes = []
    real_probe = client_module._probe_http
    monkeypatch.setattr(
        client_module, "_probe_http", lambda uri, timeout: probes.append(uri) or real_probe(uri, timeout)
    )
    monkeypatch.setattr(client_module.time, "sleep", lambda s: None)
    with pytest.raises(TrackingUnavailableError, match=rf"{dead} is unreachable after 2 attempts"):
        connect(dead, attempts=2, base_delay=0.05)
    assert probes == [dead, dead]  # bounded: exactly `attempts` probes, then the error (no MLflow retry loop)
    work = _workdir(tmp_path / "w", adapter, _metrics(0.8, 0.9), None)
    with pytest.raises(TrackingUnavailableError, match=dead):
        _register(work, uri=dead)
    assert probes == [dead] * 5  # register probed 3 times (connect's default) before anything else


def test_missing_alias_is_a_clear_error(mlflow_server):
    with pytest.raises(AliasNotFoundError, match=r"'readl-none' has no alias 'challenger'.*readl register"):
        promote(_register_cfg(), name="readl-none")
    from readl.registry.load import load_registered

    with pytest.raises(AliasNotFoundError, match="models:/readl-none@champion: not found"):
        load_registered("models:/readl-none@champion")


def test_direct_s3_artifacts_and_s3_errors(s3_server, adapter, tmp_path, monkeypatch):
    """No server: a sqlite tracking store whose experiment stores artifacts on s3:// -> this process uploads
    through boto3 with MLFLOW_S3_ENDPOINT_URL and the keys from the environment. Wrong keys: a clear error."""
    import mlflow

    _bucket(s3_server, "direct")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = mlflow.MlflowClient(uri)
    exp_id = client.create_experiment("s3-direct", artifact_location="s3://direct/mlflow")
    work = _workdir(tmp_path / "w", adapter, _metrics(0.8, 0.9), uri, experiment="s3-direct")
    with pytest.raises(
        ArtifactStoreError, match=rf"S3 artifact store error at {s3_server.endpoint}.*AWS_ACCESS_KEY_ID"
    ):
        _register(work, name="readl-s3")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    import boto3
    from mlflow.store.artifact.s3_artifact_repo import _cached_get_s3_client

    _cached_get_s3_client.cache_clear()  # MLflow caches its boto3 client, boto3 its session credentials:
    boto3.DEFAULT_SESSION = None  # keys are read when they are built (a process keeps its keys)
    result = _register(work, name="readl-s3")
    assert result.version == "1" and client.get_experiment(exp_id).artifact_location == "s3://direct/mlflow"
    stored = {p.name for p in (s3_server.root / "direct").rglob("*") if p.is_file()}
    assert {"MLmodel", "adapter_model.safetensors"} <= stored


# --- units -------------------------------------------------------------------------------------------------------
def test_gate_rules():
    cfg = _register_cfg(primary_metric="image.AUROC", min_improvement=0.0, max_drop={"pixel.AUROC": 0.02})

    def tags(img, pix, ds=("a",), data="x"):
        t = {"metrics.image.AUROC": repr(img), "data_manifest_sha256": data}
        t.update({f"metrics.datasets.{d}.pixel.AUROC": repr(pix) for d in ds})
        return t

    ok = compare(tags(0.81, 0.9), tags(0.8, 0.91), cfg)
    assert all(c.passed for c in ok) and [c.scope for c in ok] == ["all", "a"]  # drop 0.01 <= 0.02
    tie = compare(tags(0.8, 0.9), tags(0.8, 0.9), cfg)  # an identical retrained model: a tie never promotes
    assert [(c.scope, c.passed) for c in tie] == [("all", False), ("a", True)] and tie[0].note == "tie: not promoted"
    assert not compare(tags(0.8 + 1e-12, 0.9), tags(0.8, 0.9), cfg)[0].passed  # float noise is a tie too
    assert not compare(tags(0.81, 0.9), tags(0.8, 0.9), _register_cfg(min_improvement=0.01))[0].passed
    assert compare(tags(0.8101, 0.9), tags(0.8, 0.9), _register_cfg(min_improvement=0.01))[0].passed
    assert not compare(tags(0.79, 0.9), tags(0.8, 0.9), cfg)[0].passed  # primary worse
    bad = compare(tags(0.9, 0.88), tags(0.8, 0.9, ds=("a", "b")), cfg)
    assert [(c.scope, c.passed) for c in bad] == [("all", True), ("a", True), ("b", False)]
    assert bad[2].note == "dataset not evaluated by the challenger"
    null = compare({"metrics.image.AUROC": "null"}, tags(0.8, 0.9), cfg)
    assert not null[0].passed and "no value" in null[0].note
    assert "different data" in compare(tags(0.8, 0.9, data="y"), tags(0.8, 0.9), cfg)[0].note
    with pytest.raises(ValueError, match="max_drop"):
        _register_cfg(max_drop={"image.AUROC": -1})


def test_metrics_flattening_and_map_codec():
    assert flatten_metrics({"image": {"AUROC": 0.5, "note": "x"}, "n": 3, "p": {"ACC": None, "z": float("nan")}}) == {
        "image.AUROC": 0.5,
        "n": 3.0,
        "p.ACC": None,
        "p.z": None,
    }
    m = np.random.default_rng(0).random((37, 53)).astype(np.float32) * 0.02
    png, top = encode_map(m)
    back = decode_map(png, top)
    assert back.shape == m.shape and np.abs(back - m).max() <= top / 65535
    png0, top0 = encode_map(np.zeros((3, 4)))
    assert top0 == 0.0 and not decode_map(png0, top0).any()
    assert (
        git_commit(REPO)
        == subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    )


def test_retries_only_transient_failures():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert with_retries(flaky, "flaky", base_delay=0.001) == "ok" and len(calls) == 3
    calls.clear()

    def wrong():
        calls.append(1)
        raise MlflowException("Registered Model with name=x not found", error_code=RESOURCE_DOES_NOT_EXIST)

    with pytest.raises(MlflowException, match="not found"):
        with_retries(wrong, "wrong", base_delay=0.001)
    assert len(calls) == 1
    assert is_transient(MlflowException("UNIQUE constraint failed: model_versions.name, model_versions.version"))
    assert is_transient(ConnectionError("Connection refused")) and not is_transient(ValueError("bad value"))
    assert not is_transient(MlflowException("Unable to fetch model from model URI source"))  # INTERNAL_ERROR


# --- a local sqlite store (no server): first use, input validation, ties --------------------------------------
def _cli_register(work: Path, uri: str, name: str, *extra: str) -> subprocess.Popen:
    """`readl register` in ``work`` as its own process (what `dvc repro` runs), on tracking URI ``uri``."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.Popen(
        [str(BIN / "readl"), "register", "--name", name, *extra],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_first_use_of_a_sqlite_store_under_concurrency(adapter, tmp_path):
    """4 `readl register` processes at once on a sqlite store that does not exist yet: the store is created
    (schema migrated) once, and all 4 land as versions of their distinct content."""
    import mlflow

    db = tmp_path / "fresh" / "mlruns.db"
    db.parent.mkdir()
    uri, name = f"sqlite:///{db}", "readl-first-use"
    works = [_workdir(tmp_path / f"w{i}", adapter, _metrics(0.7 + 0.01 * i, 0.8), None) for i in range(4)]
    procs = [_cli_register(w, uri, name) for w in works]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(o[-1500:] for o in outs)
    versions = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).search_model_versions(f"name='{name}'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3, 4]
    recorded = {json.loads((w / "models/registered.json").read_text())["version"] for w in works}
    assert recorded == {"1", "2", "3", "4"}


@pytest.mark.parametrize(
    "case",
    [
        "metrics_field",
        "metrics_json",
        "primary_metric",
        "metrics_nan",
        "metrics_range",
        "metrics_inconsistent",
        "thresholds",
        "train_run",
        "adapter_weights",
    ],
)
def test_register_validates_inputs_before_writing(adapter, tmp_path, monkeypatch, case):
    """A bad input of `readl register` is an error naming the file, and nothing reaches the registry."""
    import mlflow
    from typer.testing import CliRunner

    from readl.cli import app

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    metrics = _metrics(0.8, 0.9)
    work = _workdir(tmp_path / "w", adapter, metrics, None)
    bad = {
        "metrics_field": "metrics.json",
        "metrics_json": "metrics.json",
        "primary_metric": "metrics.json",
        "metrics_nan": "metrics.json",
        "metrics_range": "metrics.json",
        "metrics_inconsistent": "metrics.json",
        "thresholds": "models/thresholds.json",
        "train_run": "models/train_run.json",
        "adapter_weights": "models/adapter",
    }[case]
    if case == "metrics_field":  # the field the CLI's table needs, as in the issue
        del metrics["n_malformed"]
        (work / bad).write_text(json.dumps(metrics))
    elif case == "metrics_json":
        (work / bad).write_text('{"image": {"AUROC": 0.8')
    elif case == "primary_metric":
        del metrics["image"]["AUROC"]
        (work / bad).write_text(json.dumps(metrics))
    elif case in ("metrics_nan", "metrics_range", "metrics_inconsistent"):  # issue: NaN / 5.0 became champion
        value = {"metrics_nan": float("nan"), "metrics_range": 5.0, "metrics_inconsistent": 0.95}[case]
        metrics["image"]["AUROC"] = value  # the datasets say 0.8
        if case == "metrics_range":
            metrics["datasets"]["mvtec_ad"]["image"]["AUROC"] = 5.0  # consistent, still out of range
        (work / bad).write_text(json.dumps(metrics))  # NaN is written as the JSON extension `NaN`
    elif case == "thresholds":
        (work / bad).write_text(json.dumps({"tau_t": {"value": 0.4}}))
    elif case == "train_run":
        (work / bad).write_text(json.dumps({"experiment_id": "1"}))
    else:
        for f in (work / bad).glob("adapter_model.*"):
            f.unlink()
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    result = CliRunner().invoke(app, ["register", "--name", "readl-bad", "--promote"])
    assert result.exit_code == 2, result.output
    assert bad in " ".join(result.output.split()), result.output  # the message names the file
    if (tmp_path / "mlruns.db").exists():
        assert mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models() == []
    assert not (work / "models/registered.json").exists()


def test_a_dvc_experiment_registers_but_never_moves_the_champion(
    mlflow_server, adapter, tmp_path, monkeypatch, resolve_model_calls
):
    """`dvc exp run -S ...` (an ablation) re-runs `readl register --promote`: its model is registered as the
    challenger, but the gate only reports (dry run); champion moves only by `readl promote` or a plain `dvc repro`."""
    import mlflow

    from readl.stages.register import run as register_stage

    name, client = "readl-exp", mlflow.MlflowClient(mlflow_server.uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)

    def stage(work: Path):
        return register_stage(
            work / "params.yaml",
            work / "models/adapter",
            work / "models/thresholds.json",
            work / "metrics.json",
            work / "models/train_run.json",
            work / "models/registered.json",
            name=name,
            promote=True,
        )

    first, _ = stage(_workdir(tmp_path / "v1", adapter, _metrics(0.80, 0.90), mlflow_server.uri))
    assert len(resolve_model_calls) == 1  # the stage decides its model once
    monkeypatch.setenv("DVC_EXP_NAME", "gusty-lobe")  # what `dvc exp run` puts in the stages' environment
    work = _workdir(tmp_path / "v2", adapter, _metrics(0.90, 0.95), mlflow_server.uri)  # better everywhere
    result, decision = stage(work)
    assert result.version == "2" and client.get_model_version_by_alias(name, "challenger").version == "2"
    assert decision.dry_run and decision.champion_after == first.version == "1"
    assert "gusty-lobe" in decision.reason and "readl promote" in decision.reason
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    record = json.loads((work / "models/registered.json").read_text())
    assert "champion" not in record["aliases"] and record["promotion"]["champion_after"] == "1"
    assert client.get_model_version(name, "2").tags["readl.dvc_experiment"] == "gusty-lobe"


def test_predict_from_a_warm_started_version_names_its_base(
    mlflow_server, adapter, tiny_dir, sample_dir, tmp_path, monkeypatch
):
    """A version logged with its warm-started model (the `base_model` artifact) predicts with it, and the record
    says so ("tiny + warmup", as the version's `base_model` tag), not the bare `model.base` it was started from."""
    import shutil

    import mlflow
    from typer.testing import CliRunner

    from readl.cli import app

    work = _workdir(tmp_path / "w", adapter, _metrics(0.8, 0.9), mlflow_server.uri)
    shutil.copytree(tiny_dir, work / "models" / "warmup")  # what `readl warmup` leaves: a full model folder
    result = _register(work, name="readl-warm")
    assert (
        mlflow.MlflowClient(mlflow_server.uri).get_model_version("readl-warm", result.version).tags["base_model"]
        == "tiny + warmup"
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(
        app,
        [
            "predict",
            str(sample_dir / IMAGE),
            "--model",
            "models:/readl-warm@challenger",
            "--out",
            "out",
            "--device",
            "cpu",
            "--no-annotate",
        ],
    )
    assert out.exit_code == 0, out.output
    record = json.loads((tmp_path / "out" / "000.json").read_text())
    assert record["model"]["base"] == "tiny + warmup", record["model"]


def test_promote_refuses_a_version_whose_artifacts_are_gone(adapter, tmp_path, monkeypatch):
    """Issue: `promote` moved champion to a version whose artifacts had been deleted (serving it then failed)."""
    import shutil

    import mlflow

    from readl.config import RegisterConfig
    from readl.registry.gate import promote
    from readl.registry.registration import register
    from readl.tracking import RegistryError

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = RegisterConfig(model_name="gone")
    versions = []
    for i, auroc in enumerate((0.80, 0.90)):
        work = _workdir(tmp_path / f"v{i}", adapter, _metrics(auroc, 0.9), None)
        monkeypatch.chdir(work)
        versions.append(register(manifests=[], name="gone", uri=uri).version)
        if i == 0:
            assert promote(cfg, uri=uri).promoted
    client = mlflow.MlflowClient(uri)
    shutil.rmtree(client.get_model_version_download_uri("gone", versions[1]))
    with pytest.raises(RegistryError, match="artifacts are missing"):
        promote(cfg, uri=uri)
    assert str(client.get_model_version_by_alias("gone", "champion").version) == versions[0]
