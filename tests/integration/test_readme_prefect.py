"""The README's Prefect sequence, verbatim, from a fresh clone: `mlflow` (tracking server), `prefect-deploy` (a real
`prefect server`, process pools cpu and gpu, `prefect deploy --all`), `prefect-workers` (one cpu and one gpu process
worker, `prefect deployment run retrain/retrain --watch`; then the production loop's `inspect` on them: 2 shards,
each a flow run on the gpu pool); data through a real local S3 server (`READL_DVC_REMOTE=s3`,
endpoint and keys from the environment). The deployment's cron schedule makes the server schedule the next
retrains. Then a retrain whose GPU worker is killed during train resumes from its checkpoint in the persistent work
directory when run again. Tiny settings in the clone's params.yaml (committed:
the workers clone the repository); ports are the only substitution in the blocks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from readme_blocks import (
    BIN,
    free_port,
    fresh_copy,
    link_venv,
    readme_blocks,
    run_block,
    stop_group,
    user_env,
    with_port,
)
from test_flows import TINY, _merge

from readl.production.store import Store

RETRAIN_TIMEOUT = 900


def _tiny(text: str, **train) -> str:
    params = _merge(yaml.safe_load(text), _merge(TINY, {"train": train}))
    return yaml.safe_dump(params, sort_keys=False)


def _api(base: str, path: str, body: dict | None = None):
    req = urllib.request.Request(f"{base}{path}", json.dumps(body or {}).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"null")


def _runs(api: str, flow: str, auto_scheduled: bool = False) -> list[dict]:
    """The flow's runs, oldest first: those started by hand (`prefect deployment run`, `run_deployment`), or with
    ``auto_scheduled`` those the server's scheduler created from the deployment's cron schedule."""
    runs = _api(api, "/flow_runs/filter", {"sort": "EXPECTED_START_TIME_ASC"})
    flows = {f["id"]: f["name"] for f in _api(api, "/flows/filter")}
    return [r for r in runs if flows.get(r["flow_id"]) == flow and r["auto_scheduled"] == auto_scheduled]


def _wait_for_checkpoint(ckpt_dir: Path, step: int, timeout: float) -> int:
    """Wait until `ckpt_dir` holds a `checkpoint-N` with N >= `step` (its trainer_state.json written); return N.
    Trainer keeps only the newest `save_total_limit` checkpoints, so checkpoint-`step` itself may be gone by the
    time anyone looks: wait for any later one."""
    deadline = time.monotonic() + timeout
    while True:
        done = [int(p.parent.name.split("-")[1]) for p in ckpt_dir.glob("checkpoint-*/trainer_state.json")]
        if done and max(done) >= step:
            return max(done)
        assert time.monotonic() < deadline, f"no checkpoint >= {step} in {ckpt_dir} after {timeout} s"
        time.sleep(0.2)


def _kill_worker(pgid: int, pool: str) -> None:
    """SIGKILL the `prefect worker start --pool POOL` of the block's process group and everything under it."""
    import psutil
    from readme_blocks import group_members

    def serves(p) -> bool:
        cmd = p.cmdline()
        return "worker" in cmd and "--pool" in cmd and cmd[cmd.index("--pool") + 1 :][:1] == [pool]

    (worker,) = [p for p in group_members(pgid) if serves(p)]
    victims = [worker, *worker.children(recursive=True)]
    for p in victims:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(victims, timeout=20)


@pytest.mark.slow
def test_readme_prefect_sequence_retrains_and_a_killed_training_resumes(tmp_path, fresh_s3_server, tiny_dir):
    t0 = time.monotonic()
    origin = fresh_copy(tmp_path / "origin", lambda text: _tiny(text))
    clone = tmp_path / "readl"
    subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True, capture_output=True)
    link_venv(clone)
    home = tmp_path / "home"
    fresh_s3_server.client().create_bucket(Bucket="readl-data")
    env = user_env(
        clone,
        HOME=str(home),
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        AWS_ENDPOINT_URL=fresh_s3_server.endpoint,
        AWS_ACCESS_KEY_ID=fresh_s3_server.access_key,
        AWS_SECRET_ACCESS_KEY=fresh_s3_server.secret_key,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="2",
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5",
    )
    for cmd in (
        ["dvc", "pull", "-q", "data.dvc"],
        ["dvc", "push", "-q", "-r", "s3", "data.dvc"],
    ):  # README "Using real data"
        subprocess.run(cmd, cwd=clone, env=env, check=True, capture_output=True)
    mlflow_port, prefect_port = free_port(), free_port()
    blocks = readme_blocks()
    api = f"http://127.0.0.1:{prefect_port}/api"
    groups = []
    try:
        for name, port, readme_port in (("mlflow", mlflow_port, 5000), ("prefect-deploy", prefect_port, 4200)):
            ran = run_block(
                with_port(blocks[name], readme_port, port), clone, env, 300, tmp_path / f"logs-{name}", stop=False
            )
            groups.append(ran.pgid)
            ran.check(name)
        deployments = {d["name"]: d for d in _api(api, "/deployments/filter")}
        assert set(deployments) == {"retrain", "train-on-gpu", "inspect", "inspect-shard"}
        # the clone's repository is filled in on the worker, when the run starts (not baked at deploy time)
        assert "{{ $READL_GIT_REPOSITORY }}" in json.dumps(deployments["retrain"]["pull_steps"])
        workers = with_port(with_port(blocks["prefect-workers"], 4200, prefect_port), 5000, mlflow_port)
        t1 = time.monotonic()
        ran = run_block(workers, clone, env, RETRAIN_TIMEOUT, tmp_path / "logs-workers", stop=False)
        groups.append(ran.pgid)
        first_s = time.monotonic() - t1
        ran.check("prefect-workers")
        (retrain,) = _runs(api, "retrain")
        assert retrain["state_type"] == "COMPLETED", retrain
        gpu_runs = _runs(api, "train-on-gpu")
        assert [r["parameters"]["stage"] for r in gpu_runs] == ["warmup", "train"]
        assert all(r["state_type"] == "COMPLETED" and r["parameters"]["dvc_remote"] == "s3" for r in gpu_runs)
        gpu_wd, cpu_wd = home / ".cache/readl/train-on-gpu", home / ".cache/readl/retrain"
        assert (gpu_wd / "models/adapter/adapter_config.json").is_file() and (cpu_wd / "metrics.json").is_file()
        summary = [a for a in _api(api, "/artifacts/filter") if a["key"] == "retrain-summary"][0]["data"]
        assert (
            "promoted to champion" in summary
            and f"http://127.0.0.1:{prefect_port}/runs/flow-run/{retrain['id']}" in summary
        )
        with urllib.request.urlopen(
            f"http://127.0.0.1:{mlflow_port}/api/2.0/mlflow/registered-models/alias?name=readl-flow&alias=champion",
            timeout=30,
        ) as resp:
            assert json.loads(resp.read())["model_version"]["version"] == "1"

        # the production loop on the same workers (issue 26): `inspect` on the cpu pool deals the new images into 2
        # shards, each an `inspect-shard` flow run on the gpu pool predicting with the champion
        intake, production = tmp_path / "intake", tmp_path / "production"
        intake.mkdir()
        for f in sorted((clone / "data/raw/mpdd_derived/metal_plate/test/images").glob("*.png"))[:4]:
            shutil.copy(f, intake / f.name)
        inspect_env = {**env, "PREFECT_API_URL": api, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}"}
        inspected = subprocess.run(
            [str(BIN / "prefect"), "deployment", "run", "inspect/inspect", "--watch"]
            + ["-p", f"source={intake}", "-p", "shards=2", "-p", f"home={production}"],
            cwd=clone,
            env=inspect_env,
            capture_output=True,
            text=True,
            timeout=RETRAIN_TIMEOUT,
        )
        assert inspected.returncode == 0, inspected.stdout[-3000:] + inspected.stderr[-3000:]
        shard_runs = _runs(api, "inspect-shard")
        assert len(shard_runs) == 2 and all(r["state_type"] == "COMPLETED" for r in shard_runs), shard_runs
        assert sorted(len(r["parameters"]["items"]) for r in shard_runs) == [2, 2]
        store = Store(f"sqlite:///{production / 'production.db'}")
        assert store.counts() == {"inspected": 4, "unreadable": 0, "verdicts": 0, "waiting": 4}
        assert store.claim_next("alice").inspection.model_version == "models:/readl-flow@champion (version 1)"
        shards_table = [a for a in _api(api, "/artifacts/filter") if a["key"] == "inspect-shards"]
        assert shards_table and "images_per_s" in json.dumps(shards_table[0]["data"])

        # the cron schedule of prefect.yaml made the server schedule the next retrains (Mondays 03:00 UTC)
        scheduled = [r["expected_start_time"] for r in _runs(api, "retrain", auto_scheduled=True)]
        assert scheduled and all(t.endswith("T03:00:00Z") for t in scheduled), scheduled
        assert {datetime.fromisoformat(t.replace("Z", "+00:00")).weekday() for t in scheduled} == {0}, scheduled
        listed = subprocess.run(
            [
                str(BIN / "prefect"),
                "flow-run",
                "ls",
                "--flow-name",
                "retrain",
                "--state-type",
                "SCHEDULED",
                "-o",
                "json",
            ],
            cwd=clone,
            env={**env, "PREFECT_API_URL": api},
            capture_output=True,
            text=True,
            check=True,
        )  # the README's command
        listed_ids = {r["id"] for r in json.loads(listed.stdout)}
        assert listed_ids and listed_ids <= {r["id"] for r in _runs(api, "retrain", auto_scheduled=True)}, listed_ids

        # a longer training (new params pushed to the branch), its GPU worker killed once checkpoint-2 is written:
        # 20 steps of the tiny model leave the kill many seconds before train ends
        (origin / "params.yaml").write_text(_tiny((origin / "params.yaml").read_text(), max_steps=20, save_steps=1))
        subprocess.run(["git", "commit", "-qam", "train 6 steps"], cwd=origin, env=env, check=True, capture_output=True)
        wenv = {
            **env,
            "PREFECT_API_URL": api,
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
            "READL_GIT_REPOSITORY": str(origin),
            "READL_GIT_BRANCH": "main",
            "READL_DVC_REMOTE": "s3",
        }
        t2 = time.monotonic()
        subprocess.run(
            [str(BIN / "prefect"), "deployment", "run", "retrain/retrain"],
            cwd=clone,
            env=wenv,
            check=True,
            capture_output=True,
        )
        _wait_for_checkpoint(gpu_wd / "models/checkpoints", 2, RETRAIN_TIMEOUT)
        _kill_worker(ran.pgid, "gpu")
        killed_s = time.monotonic() - t2
        assert not (gpu_wd / "models/train_run.json").is_file()  # DVC removed the stage's outputs; train did not finish
        for r in _runs(api, "retrain") + _runs(api, "train-on-gpu"):
            if r["state_type"] in ("RUNNING", "PENDING", "SCHEDULED"):  # as the README says
                subprocess.run(
                    [str(BIN / "prefect"), "flow-run", "cancel", r["id"]],
                    cwd=clone,
                    env=wenv,
                    check=True,
                    capture_output=True,
                )
        with open(tmp_path / "gpu-worker-2.log", "wb") as fh:
            worker = subprocess.Popen(
                [str(BIN / "prefect"), "worker", "start", "--pool", "gpu", "--limit", "1"],
                cwd=clone,
                env=wenv,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        groups.append(worker.pid)
        t3 = time.monotonic()
        rerun = subprocess.run(
            [str(BIN / "prefect"), "deployment", "run", "retrain/retrain", "--watch"],
            cwd=clone,
            env=wenv,
            capture_output=True,
            text=True,
            timeout=RETRAIN_TIMEOUT,
        )
        resumed_s = time.monotonic() - t3
        assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
        assert _runs(api, "retrain")[-1]["state_type"] == "COMPLETED"
        run = json.loads((gpu_wd / "models/train_run.json").read_text())
        step = int(Path(run["resumed_from"] or "checkpoint-0").name.split("-")[1])
        assert 2 <= step < 20 and run["global_step"] == 20, run
        print(
            f"README Prefect sequence: setup {t1 - t0:.0f} s, first retrain {first_s:.0f} s; killed at checkpoint-2+ "
            f"after {killed_s:.0f} s; resumed retrain (from checkpoint-{step}) {resumed_s:.0f} s"
        )
    finally:
        for pgid in reversed(groups):
            stop_group(pgid)
    assert not os.path.exists(home / ".cache/readl/train-on-gpu/.git/index.lock")
