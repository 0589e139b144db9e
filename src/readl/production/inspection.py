"""Inspect one shard: predict its images with a model and store each record with its image (:mod:`.store`).

The predictions are ``readl predict``'s (:func:`readl.stages.predict.run`): the JSON record and the bare overlay
PNG (at the image's size, so the review page can lay it over the image) land in ``<home>/records/<hash>.json``
and ``.png``; the ``inspections`` row keeps the record, P(Yes), the decision and its threshold and the model
version. An image the decoder refuses is stored with its error (reported, never retried as new).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from readl.config import Params
from readl.production.intake import Pending
from readl.production.store import Store, utcnow

__all__ = ["ShardResult", "inspect_shard", "model_version"]


@dataclass
class ShardResult:
    """One shard's outcome: images predicted, images unreadable, wall seconds, images per second."""

    images: int
    errors: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return (self.images + self.errors) / self.seconds if self.seconds > 0 else 0.0


def model_version(provenance: dict) -> str:
    """The record's model as one string: the registry version (``models:/readl@champion (version 3)``), else the
    base model and the adapter's content hash (first 12 hex digits) or ``no adapter``."""
    if provenance.get("registered"):
        return str(provenance["registered"])
    adapter = provenance.get("adapter")
    return f"{provenance.get('base')} + {adapter.split(':')[-1][:12] if adapter else 'no adapter'}"


def inspect_shard(
    items: list[Pending],
    store: Store,
    home: Path,
    params: Params,
    model: str | None = None,
    adapter: Path | None = None,
    thresholds: Path | None = None,
    progress=None,
) -> ShardResult:
    """Predict ``items`` and add one ``inspections`` row per image.

    Args:
        items: a shard of :func:`readl.production.intake.collect`'s images (their stored copies are read).
        store: the production database.
        home: the production folder (records go to ``home/records``).
        params, model, adapter, thresholds: as :func:`readl.stages.predict.run` (``model`` e.g.
            ``models:/readl@champion``; None = the project's own model).
        progress: called with the number of images finished after each batch.
    Returns:
        :class:`ShardResult`.
    Raises:
        as :func:`readl.stages.predict.run` (the model cannot be loaded or resolved).
    """
    from readl.stages.predict import run as predict

    t0 = time.perf_counter()
    ran = predict(
        params,
        [p.path for p in items],
        home / "records",
        model=model,
        adapter=adapter,
        thresholds=thresholds,
        annotate=False,
        progress=progress,
    )
    version = model_version(ran.provenance)
    errors = 0
    for item, outcome in zip(items, ran.outcomes):
        r = outcome.record
        errors += r is None
        store.add_inspection(
            {
                "image_hash": item.image_hash,
                "origin": item.origin,
                "image_path": str(item.path),
                "inspected_at": utcnow(),
                "model_version": version,
                "record": r,
                "error": outcome.error,
                "score": r and r["score"],
                "decision": r and r["decision"],
                "threshold": r and r["threshold"]["value"],
                "margin": r and abs(r.get("decision_score", r["score"]) - r["threshold"]["value"]),
                "overlay_path": r and r["overlay"],
            }
        )
    return ShardResult(len(items) - errors, errors, time.perf_counter() - t0)
