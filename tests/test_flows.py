"""Prefect flows: `retrain` end to end under `prefect_test_harness` on the bundled real sample (tiny settings), the
train stage as deployment `train-on-gpu` on work pool `gpu` served by a real `prefect worker start --type process`
subprocess in a separate checkout (stateless workers exchanging data through a DVC remote), and prefect.yaml's
schedule = params.yaml's."""

from __future__ import annotations

import os
import tempfile

# Prefect reads its settings when imported: isolate it before anything imports it.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="readl-prefect-home-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import copy  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `flows` is a folder at the repository root

# Tiny settings over the repository's params.yaml: 112 px images, a few images per split, one GRPO step.
TINY = {
    "model": {"base": "tiny", "image_size": 112, "max_new_tokens": 8, "batch_size": 4},
    "curate": {
        "image_size": 112, "workers": 1,
        "train": [{"name": "hazelnut_toy", "layout": "mvtec", "root": "hazelnut_toy", "normal": 2, "anomalous": 2}],
        "calib": [{"name": "hazelnut_toy", "layout": "mvtec", "root": "hazelnut_toy", "normal": 2, "anomalous": 2}],
        "eval": [{"name": "mvtec_ad", "layout": "mvtec", "root": "mvtec_ad", "published_splits": ["test"],
                  "normal": 2, "anomalous": 2}],
    },
    "train": {"max_steps": 1, "num_generations": 2, "per_device_train_batch_size": 4, "max_completion_length": 8,
              "save_steps": 100, "lora": {"r": 4, "alpha": 8},
              "consistency": {"quantile": 0.5, "delta1": 0.15, "delta2": 0.15, "require_format": False}},
    "warmup": {"max_steps": 2, "per_device_train_batch_size": 2, "save_steps": 100, "logging_steps": 1},
    "evaluate": {"gallery_per_dataset": 1, "bootstrap_resamples": 20},
    "register": {"model_name": "readl-flow"},
}  # fmt: skip

# Used only for stages the repository's dvc.yaml does not define yet (same commands and files as README "The pipeline").
FALLBACK_STAGES = {
    "train": {"cmd": "readl train", "deps": ["data/curated/train.parquet", "data/curated/images"],
              "params": ["model", "train"], "outs": ["models/adapter", "models/train_run.json"]},
    "calibrate": {"cmd": "readl calibrate", "deps": ["models/adapter", "data/curated/calib.parquet", "data/curated/images"],
                  "params": ["model", "localization"], "outs": ["models/thresholds.json"]},
    "evaluate": {"cmd": "readl evaluate",
                 "deps": ["models/adapter", "models/thresholds.json", "data/curated/eval.parquet", "data/curated/images",
                          "data/curated/masks"],
                 "params": ["model", "localization", "evaluate"], "metrics": [{"metrics.json": {"cache": False}}]},
    "register": {"cmd": "readl register --promote",
                 "deps": ["models/adapter", "models/thresholds.json", "models/train_run.json", "metrics.json",
                          "data/curated/train.parquet", "data/curated/calib.parquet", "data/curated/eval.parquet",
                          "src/readl/registry"],
                 "params": ["model", "localization", "register"],
                 "outs": [{"models/registered.json": {"cache": False}}]},
}  # fmt: skip


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _cached(out):
    """An out entry without ``cache: false`` (DVC keeps no run cache for a stage with an uncached out, and the
    GPU worker's train stage comes back through the run cache: test_train_stage_is_run_cacheable)."""
    if isinstance(out, dict):
        ((path, opts),) = out.items()
        opts = {k: v for k, v in (opts or {}).items() if k != "cache"}
        return {path: opts} if opts else path
    return out


def _dvc(args: list[str], cwd: Path) -> None:
    subprocess.run([str(BIN / "dvc"), *args], cwd=cwd, check=True, capture_output=True, text=True)


def _checkout(root: Path, remote: Path) -> Path:
    """A working copy like a fresh clone: params.yaml (tiny), dvc.yaml, data.dvc, src/, flows/, DVC (no git)
    with the default remote = ``remote``."""
    root.mkdir(parents=True)
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()) or {}, TINY)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    for name, stage in FALLBACK_STAGES.items():
        dvc_yaml["stages"].setdefault(name, stage)
    dvc_yaml["stages"]["train"]["outs"] = [_cached(o) for o in dvc_yaml["stages"]["train"]["outs"]]  # see below
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    for f in ("data.dvc", ".dvcignore"):
        shutil.copy2(REPO / f, root / f)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "src", root / "src", ignore=ignore)
    shutil.copytree(REPO / "flows", root / "flows", ignore=ignore)
    _dvc(["init", "--no-scm", "-q"], root)
    _dvc(["config", "core.analytics", "false"], root)
    _dvc(["remote", "add", "-d", "shared", str(remote)], root)
    return root


def _tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


def _deploy_train_on_gpu(gpu_checkout: Path) -> str:
    """Create work pool 'gpu' (process) and deployment 'train-on-gpu' as prefect.yaml declares them, except the
    pull step: a clone here is the folder ``gpu_checkout`` (prefect.yaml clones READL_GIT_REPOSITORY)."""
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.utilities.callables import parameter_schema
    from prefect.workers.process import ProcessWorker

    from flows.train_on_gpu import train_on_gpu

    spec = next(d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"] if d["name"] == "train-on-gpu")
    pool = spec["work_pool"]["name"]

    async def go():
        async with get_client() as client:
            await client.create_work_pool(WorkPoolCreate(
                name=pool, type="process", base_job_template=ProcessWorker.get_default_base_job_template()))
            flow_id = await client.create_flow_from_name(train_on_gpu.name)
            await client.create_deployment(
                flow_id=flow_id, name=spec["name"], work_pool_name=pool, work_queue_name="default",
                entrypoint=spec["entrypoint"], path=str(gpu_checkout),
                pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(gpu_checkout)}}],
                parameter_openapi_schema=parameter_schema(train_on_gpu).model_dump_for_openapi(),
            )  # fmt: skip

    anyio.run(go)
    return pool


def _read_artifact(key: str):
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def go():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    return anyio.run(go)


@pytest.mark.slow
def test_retrain_flow_end_to_end_with_a_gpu_worker(tiny_dir, tmp_path, monkeypatch):
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from flows.retrain import retrain

    remote = tmp_path / "remote"
    shutil.copytree(REPO / ".dvc" / "sample-data", remote)  # the bundled raw data, as on a shared S3 remote
    cpu = _checkout(tmp_path / "cpu", remote)
    gpu = tmp_path / "gpu"
    shutil.copytree(cpu, gpu)  # the GPU host's own clone
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")  # shared tracking store
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with prefect_test_harness(server_startup_timeout=90):
        pool = _deploy_train_on_gpu(gpu)
        env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_WORKER_QUERY_SECONDS": "1",
               "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
        log = tmp_path / "worker.log"
        with open(log, "wb") as fh:
            worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process",
                                       "--limit", "1"], cwd=gpu, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                      start_new_session=True)  # fmt: skip
        try:
            result = retrain(workdir=str(cpu), gpu_deployment="train-on-gpu/train-on-gpu", poll_s=1, train_timeout_s=400)
        except BaseException:
            print(log.read_text()[-6000:])
            raise
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)
                try:
                    worker.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(worker.pid, signal.SIGKILL)
                    worker.wait()
        summary = _read_artifact("retrain-summary")
        table = _read_artifact("retrain-metrics")

    stages = {s["stage"]: s["status"] for s in result["stages"]}
    assert stages == {"curate": "ran", "warmup": "restored (ran on GPU worker)", "train": "restored (ran on GPU worker)", "calibrate": "ran",
                      "evaluate": "ran", "register": "ran"}, result["stages"]  # fmt: skip
    assert result["gpu"]["state"] == "Completed"
    # the adapter was trained on the GPU checkout and came to the CPU checkout through the DVC remote
    assert (gpu / "models/adapter/adapter_config.json").is_file()
    assert _tree_digest(gpu / "models/adapter") == _tree_digest(cpu / "models/adapter")
    train_run = json.loads((cpu / "models/train_run.json").read_text())
    registered = result["registered"]
    assert registered["name"] == "readl-flow" and registered["run_id"] == train_run["run_id"]
    promotion = result["promotion"]
    assert promotion["promoted"] and promotion["champion_after"] == registered["version"] == "1"
    assert "first model" in promotion["reason"]
    md = summary[0].data
    assert "promoted to champion" in md and "| train | restored (ran on GPU worker) |" in md and "mvtec_ad" in md
    assert json.loads(table[0].data)[0]["dataset"] == "mvtec_ad"


def test_prefect_yaml_matches_params_and_flows():
    """prefect.yaml: retrain on pool cpu with the cron of params.yaml register.schedule; train-on-gpu on pool gpu;
    entrypoints load."""
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
    names = {}
    for d in deps.values():
        path, fn = d["entrypoint"].split(":")
        names[d["name"]] = load_flow_from_entrypoint(f"{REPO / path}:{fn}").name
    assert names == {"retrain": "retrain", "train-on-gpu": "train-on-gpu"}


def test_dvc_failures_are_classified(tmp_path):
    from flows.stages import StageError, TransientStageError, run_dvc, workdir_of

    with pytest.raises(StageError, match="no dvc.yaml"):
        workdir_of(str(tmp_path))
    _dvc(["init", "--no-scm", "-q"], tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages:\n  boom:\n    cmd: python -c \"raise SystemExit(3)\"\n")
    with pytest.raises(StageError, match=r"(?s)failed \(exit \d+\).*exited with 3") as exc:
        run_dvc(["repro", "-s", "boom"], tmp_path)
    assert not isinstance(exc.value, TransientStageError)
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  flaky:\n    cmd: python -c \"import sys; print('Connection refused'); sys.exit(1)\"\n")
    with pytest.raises(TransientStageError):
        run_dvc(["repro", "-s", "flaky"], tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages:\n  slow:\n    cmd: python -c \"import time; time.sleep(60)\"\n")
    # stopped, not finished: a stage that ran its 60 s would exit 0 and raise nothing
    with pytest.raises(StageError, match="started \"Running stage 'slow'\" on this worker and was stopped"):
        run_dvc(["repro", "-s", "slow"], tmp_path, stop_on="Running stage 'slow'")


def test_train_stage_is_run_cacheable():
    """The train stage runs on the GPU worker and returns through DVC's run cache, which DVC only keeps for stages
    whose outputs are all cached (or metrics/plots): no `cache: false` / `persist` on the train stage's outs."""
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]
    bad = [o for o in stage.get("outs", []) if isinstance(o, dict) and any(
        (v or {}).get("cache") is False or (v or {}).get("persist") for v in o.values())]  # fmt: skip
    assert not bad, f"dvc.yaml stage train: make these outputs cached (drop `cache: false` / `persist`): {bad}"
