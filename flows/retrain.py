"""Prefect flow ``retrain``: pull data, run the DVC stages, register, promote, and summarise the run.

Stages run through DVC (``dvc repro -s <stage>``, see ``flows/stages.py``): curate, warmup, train, calibrate,
evaluate, register; then ``promote`` moves ``champion`` when the gate passes (a refusal is a decision, not a failure:
the flow completes and the summary says why). With ``gpu_deployment`` set (the ``retrain`` deployment in
prefect.yaml sets ``train-on-gpu/train-on-gpu``) the training stages (warmup, then train) run as that
deployment on the ``gpu`` work pool, one flow run each, and come back through the DVC remote; without it everything
runs here.

Run locally, no Prefect server needed (ephemeral mode), training in-process on the tiny kit by default::

    python -m flows.retrain                      # = --local; add --workdir DIR, --no-pull, --no-promote

Each run publishes a Markdown artifact ``retrain-summary`` (stages, metrics, promotion decision with the
gate's table, links; with a ``feedback`` source in params ``curate.train``, how many inspectors' labels train used
and how many are new since the last run: README "Production loop") and a table artifact ``retrain-metrics``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # loaded by file path (Prefect entrypoint `flows/retrain.py:retrain`)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger

from flows import without_telemetry
from flows.stages import (
    RETRY_DELAYS,
    StageError,
    TransientStageError,
    dvc,
    prepare_workdir,
    repro,
    retry_if_transient,
)

__all__ = [
    "STAGES",
    "GPU_STAGES",
    "GPU_DEPLOYMENT",
    "feedback_labels",
    "retrain",
    "train_remote",
    "promote_task",
    "tracking_uri_for",
]

STAGES = ("curate", "warmup", "train", "calibrate", "evaluate", "register")
GPU_STAGES = ("warmup", "train")  # the training stages: run on the GPU worker when a GPU deployment is given
GPU_DEPLOYMENT = "train-on-gpu/train-on-gpu"


def tracking_uri_for(workdir: Path) -> str:
    """The MLflow tracking URI as the stages in ``workdir`` see it (a relative sqlite path made absolute)."""
    from readl.tracking import tracking_uri

    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str((workdir / uri[len("sqlite:///") :]).resolve())
    return uri


@task(
    name="train-on-gpu",
    retries=2,
    retry_delay_seconds=RETRY_DELAYS[1:],
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_transient,
)
def train_remote(
    deployment: str,
    lock: str,
    timeout_s: float,
    poll_s: float = 5.0,
    stage: str = "train",
    dvc_remote: str | None = None,
) -> dict:
    """Run one training stage (``warmup`` or ``train``) as ``deployment`` (work pool ``gpu``) and wait for it.

    A crashed run (worker or infrastructure died, e.g. preemption / OOM kill) is transient and retried (training
    resumes from its checkpoints); a failed run (the stage raised) is not.

    Raises:
        TransientStageError: the GPU flow run crashed.
        StageError: it failed, was cancelled, or did not finish within ``timeout_s`` seconds.
    """
    from prefect.deployments import run_deployment

    params = {"lock": lock, "stage": stage, **({"dvc_remote": dvc_remote} if dvc_remote else {})}
    fr = run_deployment(deployment, parameters=params, timeout=timeout_s, poll_interval=poll_s)
    state = fr.state
    what = f"GPU flow run {fr.name!r} ({fr.id}) of {deployment!r}"
    if state is None or not state.is_final():
        raise StageError(
            f"{what} did not finish within {timeout_s:.0f} s (state {state.name if state else None}); "
            f"is a worker serving work pool 'gpu'? (`prefect worker start --pool gpu`)"
        )
    if state.is_crashed():
        raise TransientStageError(f"{what} crashed: {state.message}")
    if not state.is_completed():
        raise StageError(f"{what} ended {state.name}: {state.message}")
    return {"flow_run_id": str(fr.id), "flow_run_name": fr.name, "state": state.name}


@task(
    name="promote",
    retries=2,
    retry_delay_seconds=RETRY_DELAYS[:2],
    retry_jitter_factor=0.5,
    retry_condition_fn=lambda t, r, s: _transient_registry_error(s),
)
def promote_task(workdir: str) -> dict:
    """``readl promote`` (the gate) for the checkout's params; returns the decision (a refusal is not an error)."""
    from readl.config import load_params
    from readl.registry.gate import model_version_url, promote
    from readl.registry.registration import register_config

    wd = Path(workdir)
    cfg = register_config(load_params(wd / "params.yaml"))
    uri = tracking_uri_for(wd)
    decision = promote(cfg, uri=uri).as_dict()
    decision["url"] = model_version_url(cfg.model_name, decision["challenger"], uri)
    return decision


def _transient_registry_error(state) -> bool:
    from readl.tracking import is_transient

    exc = state.data if isinstance(getattr(state, "data", None), BaseException) else None
    return exc is not None and is_transient(exc)


def _with_stage_decision(wd: Path, decision: dict | None) -> dict | None:
    """The register stage that just ran may have run the gate too (``readl register --promote``, recorded in
    models/registered.json); then this flow's gate only finds "already champion": report the stage's decision."""
    path = wd / "models/registered.json"
    if decision is None or not path.is_file():
        return decision
    recorded = json.loads(path.read_text()).get("promotion")
    if recorded and recorded["challenger"] == decision["challenger"] == decision["champion_before"]:
        return {**recorded, "url": decision.get("url"), "reason": f"{recorded['reason']} (register stage)"}
    return decision


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * float(v):.1f}"


def feedback_labels(wd: Path) -> dict | None:
    """Inspectors' labels (``feedback`` layout sources of params ``curate.train``) in ``wd``'s curated train split:
    ``{"images", "exported_at"}`` (the newest export's time); None when params list no such source."""
    import yaml

    params = yaml.safe_load((wd / "params.yaml").read_text()) if (wd / "params.yaml").is_file() else None
    sources = [s for s in ((params or {}).get("curate") or {}).get("train") or [] if s.get("layout") == "feedback"]
    if not sources:
        return None
    summary = wd / "data/curated/summary.json"
    got = json.loads(summary.read_text())["splits"]["train"]["sources"] if summary.is_file() else {}
    images = sum(got.get(s["name"], {}).get(k, 0) for s in sources for k in ("normal", "anomalous"))
    exports = [wd / "data/raw" / s["root"] / "export.json" for s in sources]
    times = [json.loads(e.read_text())["exported_at"] for e in exports if e.is_file()]
    return {"images": images, "exported_at": max(times, default=None)}


def _summary(
    wd: Path,
    stages: list[dict],
    gpu: dict | None,
    decision: dict | None,
    elapsed: float,
    labels: tuple[dict | None, dict | None] = (None, None),
) -> tuple[str, list[dict]]:
    metrics = json.loads((wd / "metrics.json").read_text()) if (wd / "metrics.json").is_file() else {}
    registered = (
        json.loads((wd / "models/registered.json").read_text()) if (wd / "models/registered.json").is_file() else {}
    )
    rows = []
    for name, d in [*metrics.get("datasets", {}).items(), ("mean", metrics)]:
        if not d:
            continue
        rows.append(
            {
                "dataset": name,
                "image AUROC": _pct(d.get("image", {}).get("AUROC")),
                "image ACC": _pct(d.get("image", {}).get("ACC")),
                "pixel AUROC": _pct(d.get("pixel", {}).get("AUROC")),
                "pixel AUPRO": _pct(d.get("pixel", {}).get("AUPRO")),
            }
        )
    md = [f"# readl retrain ({elapsed:.0f} s)", "", "## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
    md += [f"| {s['stage']} | {s['status']} | {s['seconds']} |" for s in stages]
    if rows:
        md += ["", "## Metrics (%)", "", "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        md += ["| " + " | ".join(str(v) for v in r.values()) + " |" for r in rows]
    before, after = labels
    if after is not None:
        new = after["images"] - (before or {}).get("images", 0)
        md += [
            "",
            "## Inspectors' labels",
            "",
            f"{after['images']} images labelled by inspectors in train (feedback export of "
            f"{after['exported_at'] or 'unknown time'}): **{new:+d}** since the last run.",
        ]
    if registered:
        md += [
            "",
            f"Registered **{registered['name']}** version **{registered['version']}** "
            f"(run `{registered['run_id']}`, aliases {', '.join(registered.get('aliases', []))}).",
        ]
    if decision is not None:
        verdict = "promoted to champion" if decision["promoted"] else "NOT promoted"
        md += [
            "",
            "## Promotion",
            "",
            f"Challenger version {decision['challenger']}: **{verdict}**; "
            f"champion {decision['champion_before']} -> {decision['champion_after']}. {decision['reason']}",
        ]
        if decision["checks"]:
            md += ["", "| scope | metric | champion | challenger | rule | ok | note |", "|---|---|---|---|---|---|---|"]
            md += [
                f"| {c['scope']} | {c['metric']} | {_pct(c['champion'])} | {_pct(c['challenger'])} | {c['rule']} | "
                f"{'yes' if c['passed'] else 'NO'} | {c['note']} |"
                for c in decision["checks"]
            ]
    links = []
    if decision and decision.get("url"):
        links.append(f"- MLflow model version: {decision['url']}")
    if gpu:
        links.append(f"- GPU training flow run: {_flow_run_link(gpu['flow_run_id'], gpu['flow_run_name'])}")
    from prefect.runtime import flow_run

    if flow_run.id:
        links.append(f"- this retrain flow run: {_flow_run_link(flow_run.id, flow_run.name)}")
    if links:
        md += ["", "## Links", "", *links]
    return "\n".join(md) + "\n", rows


def _flow_run_link(flow_run_id: str, name: str) -> str:
    """A Markdown link to the flow run's page in the Prefect UI (``PREFECT_UI_URL``, by default derived from
    ``PREFECT_API_URL``); the name and id in code spans when neither is set (ephemeral mode)."""
    from prefect.utilities.urls import url_for

    url = url_for("flow-run", obj_id=flow_run_id)
    return f"[{name}]({url})" if url else f"`{name}` (`{flow_run_id}`)"


@flow(name="retrain", log_prints=True)
def retrain(
    workdir: str | None = None,
    gpu_deployment: str | None = None,
    pull: bool = True,
    push: bool | None = None,
    promote: bool = True,
    stages: list[str] = list(STAGES),  # noqa: B006 (a Prefect parameter; its default shows in the UI)
    train_timeout_s: float = 24 * 3600,
    poll_s: float = 5.0,
    dvc_remote: str | None = None,
) -> dict:
    """Retrain end to end through DVC, register the model, run the promotion gate, publish a summary.

    Args:
        workdir: where the stages run. None: ``$READL_WORKDIR`` or the current directory, as it is. Another
            folder (prefect.yaml: ``~/.cache/readl/retrain``) is kept as a persistent git checkout of this code's
            commit (``flows.stages.sync_checkout``): a process worker's own clone is deleted after each run.
        gpu_deployment: run the train stage as this deployment (``train-on-gpu/train-on-gpu`` on work pool
            ``gpu``); None trains here.
        pull: ``dvc pull --allow-missing`` first (the raw data and anything already computed).
        push: ``dvc push --run-cache`` after curate and at the end; default: only with ``gpu_deployment``
            (the workers need the remote to exchange data). Use a shared remote (S3) when pushing.
        promote: run the promotion gate after registering.
        stages: the DVC stages, in order.
        train_timeout_s: how long to wait for the GPU flow run, seconds.
        poll_s: how often to poll it, seconds.
        dvc_remote: the DVC remote the workers share, made the default here and on the GPU worker (None:
            ``$READL_DVC_REMOTE``, else the checkout's default); see ``flows.stages.prepare_workdir``.

    Returns:
        ``{"workdir", "stages": [...], "gpu": ..., "promotion": ..., "registered": ...}``.

    Raises:
        StageError: a stage failed (transient failures are retried first).
    """
    log = get_run_logger()
    t0 = time.monotonic()
    wd = prepare_workdir(workdir, dvc_remote, log)
    dvc_remote = dvc_remote or os.environ.get("READL_DVC_REMOTE")
    push = bool(gpu_deployment) if push is None else push
    done: list[dict] = []
    gpu = None
    labels_before = feedback_labels(wd)  # the last run's curated split (summary.json is not in the DVC cache)
    if pull:
        dvc(["pull", "--allow-missing"], str(wd))
    for stage in stages:
        if stage in GPU_STAGES and gpu_deployment:
            if push:
                dvc(["push", "--run-cache"], str(wd))  # the GPU worker pulls the curated data from the remote
            lock = (wd / "dvc.lock").read_text() if (wd / "dvc.lock").is_file() else ""
            t1 = time.monotonic()
            gpu = train_remote(gpu_deployment, lock, train_timeout_s, poll_s, stage=stage, dvc_remote=dvc_remote)
            restored = repro(stage, str(wd), restore_only=True)
            done.append(
                {
                    **restored,
                    "status": f"{restored['status']} (ran on GPU worker)",
                    "seconds": round(time.monotonic() - t1, 1),
                }
            )
        else:
            done.append(repro(stage, str(wd)))
    if push:
        dvc(["push", "--run-cache"], str(wd))
    decision = promote_task(str(wd)) if promote else None
    if any(s["stage"] == "register" and s["status"] == "ran" for s in done):
        decision = _with_stage_decision(wd, decision)
    elapsed = time.monotonic() - t0
    labels = feedback_labels(wd)
    if labels is not None:
        log.info(
            "inspectors' labels in train: %d (%+d since the last run)",
            labels["images"],
            labels["images"] - (labels_before or {}).get("images", 0),
        )
    markdown, rows = _summary(wd, done, gpu, decision, elapsed, (labels_before, labels))
    create_markdown_artifact(
        markdown=markdown, key="retrain-summary", description="readl retrain: stages, metrics, promotion"
    )
    if rows:
        create_table_artifact(table=rows, key="retrain-metrics", description="readl evaluation metrics (%) per dataset")
    if decision is not None:
        log.info("promotion: %s", decision["reason"])
    registered = wd / "models/registered.json"
    return {
        "workdir": str(wd),
        "stages": done,
        "gpu": gpu,
        "promotion": decision,
        "seconds": round(elapsed, 1),
        "registered": json.loads(registered.read_text()) if registered.is_file() else None,
        "feedback": labels,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.retrain [--local | --gpu-deployment NAME] [--workdir DIR] [--no-pull] [--no-promote]``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m flows.retrain", description=__doc__.split("\n\n")[0])
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="train here (default)")
    where.add_argument(
        "--gpu-deployment", help=f"train as this deployment, e.g. {GPU_DEPLOYMENT} (needs a server + gpu worker)"
    )
    ap.add_argument("--workdir", help="checkout (default: current directory)")
    ap.add_argument("--no-pull", action="store_true")
    ap.add_argument("--push", action="store_true", help="dvc push --run-cache (default only with --gpu-deployment)")
    ap.add_argument("--no-promote", action="store_true")
    ap.add_argument("--dvc-remote", help="make this DVC remote the default first (e.g. s3)")
    a = ap.parse_args(argv)
    with without_telemetry():
        result = retrain(
            workdir=a.workdir,
            gpu_deployment=a.gpu_deployment,
            pull=not a.no_pull,
            push=True if a.push else None,
            promote=not a.no_promote,
            dvc_remote=a.dvc_remote,
        )
    print(json.dumps({k: result[k] for k in ("stages", "promotion", "registered")}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
