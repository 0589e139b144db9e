"""Prefect flow ``inspect``: predict the new images of a folder or S3 prefix with the champion, in shards.

The flow lists the source, skips the images whose content the production store already holds
(:func:`readl.production.intake.collect`), deals the rest into ``shards`` and runs one ``inspect-shard`` flow run per
shard: in this process by default (one worker), or as the ``inspect-shard`` deployment on the ``gpu`` work pool
(``shard_deployment``), so the pool's workers predict the shards side by side. Each shard stores a record per image
(:mod:`readl.production.inspection`) and reports its throughput (images/s). The run publishes a table artifact
``inspect-shards``. Several hosts need one store: a Postgres URL (``db`` / ``READL_PRODUCTION_DB``) and a shared
``home`` folder (its ``images/`` and ``records/``).

Run locally (ephemeral Prefect, no server needed), from the project folder::

    python -m flows.inspect_images intake/     # --model champion = models:/<register.model_name>@champion
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):  # loaded by file path (Prefect entrypoint `flows/inspect_images.py:inspect`)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.logging import get_run_logger

from flows import without_telemetry

__all__ = ["CHAMPION", "SHARD_DEPLOYMENT", "inspect", "inspect_shard", "model_uri"]

CHAMPION = "champion"
"""The default ``model``: ``models:/<params register.model_name>@champion``."""
SHARD_DEPLOYMENT = "inspect-shard/inspect-shard"


def _params():
    from readl.config import Params, load_params

    return load_params(Path("params.yaml")) if Path("params.yaml").is_file() else Params()


def model_uri(model: str | None, params) -> str | None:
    """``champion`` -> ``models:/<register.model_name>@champion`` of ``params``; ``project`` or None -> None (the
    project's own model, as ``readl predict``); anything else (``models:/readl/3``, ``tiny``) as given."""
    from readl.registry.registration import register_config

    if model in (None, "project"):
        return None
    return f"models:/{register_config(params).model_name}@champion" if model == CHAMPION else model


@flow(name="inspect-shard", log_prints=True)
def inspect_shard(
    items: list[dict], model: str | None = CHAMPION, home: str | None = None, db: str | None = None
) -> dict:
    """Predict one shard (``items``: ``{"image_hash", "origin", "path"}`` from the parent) and store the records.

    Returns:
        ``{"images", "errors", "seconds", "images_per_s"}``.
    """
    from readl.production.inspection import inspect_shard as run_shard
    from readl.production.intake import Pending
    from readl.production.store import Store, production_home, store_url

    log = get_run_logger()
    root = production_home(home)
    pending = [Pending(i["image_hash"], i["origin"], Path(i["path"])) for i in items]
    params = _params()
    r = run_shard(pending, Store(store_url(db, root)), root, params, model=model_uri(model, params))
    log.info("shard: %d images (%d unreadable) in %.1f s: %.2f images/s", r.images, r.errors, r.seconds, r.images_per_s)
    return {"images": r.images, "errors": r.errors, "seconds": round(r.seconds, 2), "images_per_s": r.images_per_s}


def _remote(deployment: str, params: dict, timeout_s: float, store) -> dict:
    """Run one shard as ``deployment`` and wait. Its outcome is read from the shared store, not from the flow run's
    result (which lives on the worker's host unless result storage is shared); its seconds are the flow run's
    running time (model loading included: the shard's own log line gives the prediction time alone)."""
    from prefect.deployments import run_deployment

    fr = run_deployment(deployment, parameters=params, timeout=timeout_s)
    if fr.state is None or not fr.state.is_completed():
        raise RuntimeError(
            f"shard flow run {fr.name!r} of {deployment!r} ended {fr.state.name if fr.state else 'unknown'}: "
            f"{fr.state.message if fr.state else ''} (is a worker serving its work pool?)"
        )
    rows = [store.inspection(i["image_hash"]) for i in params["items"]]
    if any(r is None for r in rows):
        raise RuntimeError(
            f"shard flow run {fr.name!r} completed but its images are not in {store.url}: the workers must share "
            f"one database (READL_PRODUCTION_DB) and home folder"
        )
    errors = sum(r.record is None for r in rows)
    seconds = fr.total_run_time.total_seconds()
    n = len(params["items"])
    return {"images": n - errors, "errors": errors, "seconds": round(seconds, 2), "images_per_s": n / seconds}


@flow(name="inspect", log_prints=True)
def inspect(
    source: str,
    model: str | None = CHAMPION,
    shards: int = 1,
    shard_deployment: str | None = None,
    home: str | None = None,
    db: str | None = None,
    timeout_s: float = 3600,
) -> dict:
    """Inspect the new images of ``source`` (a folder or ``s3://bucket/prefix``; module docstring).

    Args:
        model: :func:`model_uri`'s argument: ``champion`` (default), ``project``, or a model URI / base model.
        shards: flow runs to split the new images into.
        shard_deployment: run each shard as this deployment (``inspect-shard/inspect-shard``) instead of here.
        home, db: the production folder and database (:mod:`readl.production.store`).
        timeout_s: seconds to wait for each remote shard.
    Returns:
        ``{"new", "skipped", "shards": [per-shard result], "images_per_s"}``.
    Raises:
        FileNotFoundError: the folder does not exist. RuntimeError: a remote shard did not complete.
    """
    from readl.production.intake import collect
    from readl.production.intake import shards as deal
    from readl.production.store import Store, production_home, store_url

    log = get_run_logger()
    root = production_home(home)
    store = Store(store_url(db, root))
    pending, skipped = collect(source, store.known(), root / "images")
    log.info(
        "%s: %d new images, %d already inspected; model %s",
        source,
        len(pending),
        skipped,
        model_uri(model, _params()) or "the project's own (readl predict)",
    )
    parts = deal(pending, shards) if pending else []
    payloads = [[{"image_hash": p.image_hash, "origin": p.origin, "path": str(p.path)} for p in s] for s in parts]
    if shard_deployment:
        with ThreadPoolExecutor(max_workers=max(1, len(parts))) as pool:
            params = [{"items": items, "model": model, "home": home, "db": db} for items in payloads]
            results = list(pool.map(lambda p: _remote(shard_deployment, p, timeout_s, store), params))
    else:
        results = [inspect_shard(items, model, home, db) for items in payloads]
    for i, r in enumerate(results, 1):
        print(f"shard {i}/{len(results)}: {r['images']} images, {r['errors']} unreadable, {r['images_per_s']:.2f}/s")
    if results:
        rows = [{"shard": i, **r} for i, r in enumerate(results, 1)]
        create_table_artifact(rows, key="inspect-shards", description=f"inspect {source}: throughput per shard")
    done = sum(r["images"] + r["errors"] for r in results)
    # remote shards run side by side (the slowest bounds the run); local ones one after another
    times = [r["seconds"] for r in results]
    seconds = (max(times) if shard_deployment else sum(times)) if times else 0.0
    return {
        "new": len(pending),
        "skipped": skipped,
        "shards": results,
        "images_per_s": done / seconds if seconds else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.inspect_images SOURCE [--model URI|project] [--shards N] [--shard-deployment NAME]``."""
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m flows.inspect_images", description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="a folder of images or s3://bucket/prefix")
    ap.add_argument("--model", default=CHAMPION, help="champion (default), project (readl predict's), or a model URI")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--shard-deployment", help=f"e.g. {SHARD_DEPLOYMENT} (needs a Prefect server + workers)")
    ap.add_argument("--home", help="production folder (default $READL_PRODUCTION_HOME or data/production)")
    ap.add_argument("--db", help="SQLAlchemy URL (default $READL_PRODUCTION_DB or sqlite:///<home>/production.db)")
    a = ap.parse_args(argv)
    with without_telemetry():
        result = inspect(
            a.source,
            model=a.model,
            shards=a.shards,
            shard_deployment=a.shard_deployment,
            home=a.home,
            db=a.db,
        )
    print(json.dumps({k: result[k] for k in ("new", "skipped", "images_per_s")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
