"""The evaluate stage's honest comparison: bootstrap intervals and the baselines of every pixel number.

A ReAL pixel AUROC means little on its own: the attention of an untrained (even random) model already follows
colour contrast, and a training-free contrast map scores well on pasted or painted defects. So the evaluate stage
reports, next to the model under evaluation and on the same images (``evaluate.baselines``):

- ``untrained``: ``model.base`` without adapter (paper Table 1 "Vanilla"), ReAL maps in all four modes;
- ``warmup``: the warm-started model before CGRO (``models/warmup``, no adapter), when ``warmup.enabled``;
- ``contrast``: :func:`readl.evaluation.baselines.contrast_map` of the curated image on the model's token grid,
  upsampled like ReAL maps; image score = its largest cell.

Model baselines get their own tau_t / tau_i (``evaluate.baseline_thresholds``: ``calibrated`` on the calibration
split exactly as ``readl calibrate`` fits the model's, else the per-image rules of ``localization``; a calibrated
threshold belongs to one model's attention) and keep the map and P(Yes) of a malformed answer (``malformed:
score``): a baseline is a floor to beat, and emptying the maps of a model that never writes the format would
flatter the model under evaluation (their ``format_rate`` is reported). Points are computed with the evaluate stage's
own metrics
(:func:`readl.evaluation.evaluate.image_metrics` / :func:`~readl.evaluation.evaluate.pixel_metrics`); the 95%
intervals are percentile-bootstrap intervals over images (:mod:`readl.evaluation.baselines`), resampling whole
groups of images that share a raw image (``raw_image_path``: the synthetic anomalies of one normal image and that
image itself), so correlated variants do not shrink the interval.

The evaluate stage (:func:`readl.stages.evaluate.run`) calls :func:`baseline_predictions` (every process) and
:func:`add_comparison` (main process).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from readl.config import Params
from readl.data.manifest import read_manifest
from readl.evaluation.baselines import bootstrap_image_auroc, bootstrap_pixel_auroc, contrast_map
from readl.evaluation.calibration import calibrate_thresholds
from readl.evaluation.evaluate import (
    MODES,
    ImageResult,
    eval_mask_size,
    image_metrics,
    load_eval_mask,
    pixel_metrics,
    score_images,
)
from readl.evaluation.predictions import predict_manifest
from readl.localization.thresholds import ThresholdPair, ThresholdSpec, resolve_taus
from readl.paths import ModelRef

__all__ = [
    "BASELINES",
    "Bootstrap",
    "image_groups",
    "intervals",
    "contrast_results",
    "contrast_entry",
    "baseline_entry",
    "add_intervals",
    "baseline_models",
    "baseline_predictions",
    "add_comparison",
    "comparison_table",
]

log = logging.getLogger(__name__)
BASELINES = ("untrained", "warmup", "contrast")


@dataclass(frozen=True)
class Bootstrap:
    """Percentile-bootstrap settings (``evaluate.bootstrap_*``): resamples (0 = no intervals), seed, mass."""

    n_resamples: int = 1000
    seed: int = 0
    ci: float = 0.95


def image_groups(manifest: pd.DataFrame) -> list[str]:
    """Bootstrap unit of each manifest row: ``source|raw_image_path`` (the image a synthetic variant was made from,
    or the image itself), else ``source|image_path`` when the manifest has no ``raw_image_path``."""
    col = "raw_image_path" if "raw_image_path" in manifest.columns else "image_path"
    return [f"{s}|{p}" for s, p in zip(manifest["source"], manifest[col])]


def _ci(fn, *args, boot: Bootstrap, **kwargs) -> list[float] | None:
    if boot.n_resamples < 1:
        return None
    _, lo, hi = fn(*args, n_resamples=boot.n_resamples, seed=boot.seed, ci=boot.ci, **kwargs)
    return [lo, hi]


def intervals(
    results: Sequence[ImageResult],
    groups: Sequence[str],
    modes: Sequence[str],
    boot: Bootstrap,
    root: Path = Path("."),
    points: bool = True,
) -> dict:
    """Per dataset, the image AUROC and per-mode pixel AUROC with their bootstrap intervals.

    Args:
        results: scored images (any datasets); ``groups``: (len(results),) bootstrap unit of each
        (:func:`image_groups`).
        modes: keys of ``ImageResult.maps`` to score.
        boot: bootstrap settings; ``n_resamples == 0`` gives ``AUROC_ci: None``.
        root: folder of the image / mask paths.
        points: compute the pixel AUROC points (:func:`pixel_metrics`); False: ``AUROC: None`` (intervals only).

    Returns:
        ``{dataset: {"image": {"AUROC", "AUROC_ci": [lo, hi], "n_units", "n_normal", "n_anomalous"}, "modes": {mode:
        {"AUROC", "AUROC_ci"}}}}``, AUROC in
        [0, 1] (NaN when a class is absent; an interval bound NaN when no resample has both classes).
    """
    if len(groups) != len(results):
        raise ValueError(f"one bootstrap group per image: {len(groups)} groups for {len(results)} images")
    out = {}
    for ds in sorted({r.dataset for r in results}):
        idx = [i for i, r in enumerate(results) if r.dataset == ds]
        rs, g = [results[i] for i in idx], [groups[i] for i in idx]
        scores, labels = [r.score for r in rs], [r.label for r in rs]
        image = {
            "AUROC": image_metrics(rs)["AUROC"],
            "AUROC_ci": _ci(bootstrap_image_auroc, scores, labels, boot=boot, groups=g),
            "n_units": len(set(g)),  # independent units the interval resamples (base photos)
            "n_normal": labels.count(0),
            "n_anomalous": labels.count(1),
        }
        masks = [load_eval_mask(r.mask_path, eval_mask_size(r, root), root) for r in rs]  # (H, W) bool each
        per_mode = {}
        for mode in modes:
            ci = _ci(bootstrap_pixel_auroc, [r.maps[mode] for r in rs], masks, boot=boot, groups=g)
            point = pixel_metrics(rs, mode, root)["AUROC"] if points else None
            per_mode[mode] = {"AUROC": point, "AUROC_ci": ci}
        out[ds] = {"image": image, "modes": per_mode}
    return out


def add_intervals(
    metrics: dict,
    results: Sequence[ImageResult],
    groups: Sequence[str],
    headline_mode: str,
    boot: Bootstrap,
    root: Path = Path("."),
) -> dict:
    """Write ``AUROC_ci`` next to the image AUROC, the headline pixel AUROC and each mode's pixel AUROC of
    ``metrics["datasets"][ds]`` (the model under evaluation); the points stay those of ``evaluate``. In place."""
    for ds, entry in intervals(results, groups, MODES, boot, root, points=False).items():
        d = metrics["datasets"][ds]
        d["image"].update({k: entry["image"][k] for k in ("AUROC_ci", "n_units", "n_normal", "n_anomalous")})
        for mode in MODES:
            d["modes"][mode]["AUROC_ci"] = entry["modes"][mode]["AUROC_ci"]
        d["pixel"]["AUROC_ci"] = entry["modes"][headline_mode]["AUROC_ci"]
    metrics["bootstrap"] = {
        "n_resamples": boot.n_resamples,
        "seed": boot.seed,
        "ci": boot.ci,
        "unit": "images sharing a raw_image_path",
    }
    return metrics


def baseline_entry(
    results: Sequence[ImageResult],
    groups: Sequence[str],
    headline_mode: str,
    boot: Bootstrap,
    root: Path = Path("."),
    **extra,
) -> dict:
    """One model baseline for metrics.json: ``{**extra, "datasets": {ds: {"image": {AUROC, AUROC_ci}, "pixel":
    {AUROC, AUROC_ci} (headline mode), "modes": {mode: {AUROC, AUROC_ci}}, "format_rate", "n_malformed"}}}``."""
    datasets = {}
    for ds, entry in intervals(results, groups, MODES, boot, root).items():
        rs = [r for r in results if r.dataset == ds]
        datasets[ds] = {
            "image": entry["image"],
            "pixel": entry["modes"][headline_mode],
            "modes": entry["modes"],
            "format_rate": float(np.mean([r.format_ok for r in rs])),
            "n_malformed": sum(r.malformed for r in rs),
        }
    return {**extra, "datasets": datasets}


def contrast_results(results: Sequence[ImageResult], grid_mode: str, root: Path = Path(".")) -> list[ImageResult]:
    """The contrast baseline on the images of ``results``: ``maps == {"map": contrast_map}`` on each image's ReAL
    token grid (the shape of ``r.maps[grid_mode]``), ``score`` = the largest cell, no answer."""
    out = []
    for r in results:
        with Image.open(root / r.image_path) as im:
            cmap = contrast_map(im, grid=r.maps[grid_mode].shape)  # (h, w) in [0, 1]
        out.append(replace(r, maps={"map": cmap}, score=float(cmap.max()), answer=None))
    return out


def contrast_entry(
    results: Sequence[ImageResult], groups: Sequence[str], boot: Bootstrap, root: Path = Path(".")
) -> dict:
    """The ``contrast`` baseline for metrics.json: ``{"datasets": {ds: {"image": {..}, "pixel": {AUROC,
    AUROC_ci}}}}``."""
    return {
        "datasets": {
            ds: {"image": e["image"], "pixel": e["modes"]["map"]}
            for ds, e in intervals(results, groups, ["map"], boot, root).items()
        }
    }


# --- the evaluate stage's baselines --------------------------------------------------------------------------
def baseline_models(params: Params, model: ModelRef) -> dict[str, str]:
    """The model baselines of ``evaluate.baselines``: name -> base model (``warmup`` only when the stage's
    ``model`` is warm-started, :class:`readl.paths.ModelRef`)."""
    models = {"untrained": model.configured, "warmup": model.base}
    return {n: b for n, b in models.items() if n in params.evaluate.baselines and (n != "warmup" or model.warm_started)}


def baseline_predictions(
    df: pd.DataFrame,
    params: Params,
    cache_dir: Path,
    calib_manifest: Path | None,
    load_predictor: Callable[[str], tuple[object, str]],
    model: ModelRef,
) -> dict:
    """Each model baseline (no adapter): ``name -> (base, eval predictions, taus, source)``.

    Predictions are cached in ``<cache_dir>/baselines/<name>/`` (its calibration-split predictions in
    ``<name>.calib/``). ``taus`` are calibrated on ``calib_manifest`` exactly as ``readl calibrate`` fits the
    model's under ``evaluate.baseline_thresholds: calibrated`` (a threshold belongs to one model's attention:
    per-image rules for the baselines would credit calibration to training), else the per-image rules (also,
    with a warning, when ``calib_manifest`` is missing). Run by every process of a multi-process evaluate (each
    predicts its shard); the non-main processes get ``None`` predictions.

    Args:
        df: the evaluation manifest.
        load_predictor: ``base -> (predictor, resolved base)`` for a base model without adapter (the stage
            passes :func:`readl.predictor.pipeline_predictor`).
        model: the stage's model (:func:`readl.paths.resolve_model`): its configured base is ``untrained``.
    """
    calib = None
    if params.evaluate.baseline_thresholds == "calibrated":
        if calib_manifest is not None and Path(calib_manifest).is_file():
            calib = read_manifest(calib_manifest)
        else:
            log.warning("baselines: no calibration split at %s: per-image threshold rules", calib_manifest)
    out = {}
    for name, baseline in baseline_models(params, model).items():
        t0 = time.perf_counter()
        predictor, base = load_predictor(baseline)
        cache = Path(cache_dir) / "baselines"
        items = predict_manifest(df, predictor, base, None, cache / name, params.model.batch_size)
        taus, source = resolve_taus(params.localization, None), "per-image"
        if calib is not None:
            c_items = predict_manifest(calib, predictor, base, None, cache / f"{name}.calib", params.model.batch_size)
            if c_items is not None:  # main process: fitted exactly as `readl calibrate` fits the model's
                record, _, _ = calibrate_thresholds([p for _, p in c_items], params.localization)
                taus = ThresholdPair(
                    ThresholdSpec("fixed", record["tau_t"]["value"]), ThresholdSpec("fixed", record["tau_i"]["value"])
                )
                source = f"calibrated on {calib_manifest}"
        out[name] = (base, items, taus, source)
        del predictor
        log.info("baseline %s predictions: %.1f s", name, time.perf_counter() - t0)
    return out


def add_comparison(
    metrics: dict, results: Sequence[ImageResult], df: pd.DataFrame, params: Params, baseline_items: dict
) -> None:
    """Bootstrap intervals of the model's AUROCs (:func:`add_intervals`) and ``metrics["baselines"]``: each of
    ``evaluate.baselines`` (:func:`contrast_entry`, or :func:`baseline_entry` of ``baseline_items`` from
    :func:`baseline_predictions`, scored with ``malformed: score``; a model baseline without predictions, i.e.
    ``warmup`` with no warm start, is skipped). In place."""
    cfg, loc = params.evaluate, params.localization
    boot = Bootstrap(cfg.bootstrap_resamples, cfg.bootstrap_seed, cfg.bootstrap_ci)
    groups = image_groups(df)
    add_intervals(metrics, results, groups, loc.mode, boot)
    baselines = {}
    for name in cfg.baselines:
        if name == "contrast":
            baselines[name] = contrast_entry(contrast_results(results, loc.mode), groups, boot)
        elif name not in baseline_items:
            log.info("baseline %s skipped: warmup disabled or models/warmup absent", name)
        else:
            base, items, taus, source = baseline_items[name]
            scored = score_images(items, loc, taus, malformed="score")  # floor: keep every map
            baselines[name] = baseline_entry(scored, groups, loc.mode, boot, base=str(base), adapter=None)
            baselines[name]["thresholds"] = {"tau_t": taus.tau_t.label, "tau_i": taus.tau_i.label, "source": source}
    metrics["baselines"] = baselines


def _fmt(d: dict | None) -> str:
    if not d or d.get("AUROC") is None or (isinstance(d["AUROC"], float) and math.isnan(d["AUROC"])):
        return "n/a"
    ci = d.get("AUROC_ci")
    if ci and all(v is not None and v == v for v in ci):
        return f"{100 * d['AUROC']:.1f} [{100 * ci[0]:.0f}-{100 * ci[1]:.0f}]"
    return f"{100 * d['AUROC']:.1f}"


def comparison_table(
    metrics: dict, title: str = "model vs baselines (AUROC %, 95% bootstrap interval)", model_name: str = "model"
):
    """A rich table of image AUROC and pixel AUROC per mode: the evaluated model (row ``model_name``) and each entry
    of ``metrics["baselines"]``, per dataset (metrics.json layout)."""
    from rich.table import Table

    table = Table(
        "dataset",
        "system",
        "I-AUROC",
        "P-AUROC",
        *MODES,
        title=title,
        caption="P-AUROC: the headline mode (localization.mode), or the contrast map; [95% interval]",
    )
    systems = [(model_name, metrics)] + list(metrics.get("baselines", {}).items())
    for ds in metrics["datasets"]:
        for name, sysm in systems:
            d = sysm.get("datasets", {}).get(ds)
            if d is None:
                continue
            modes = d.get("modes", {})
            table.add_row(ds, name, _fmt(d["image"]), _fmt(d["pixel"]), *(_fmt(modes.get(m)) for m in MODES))
    return table
