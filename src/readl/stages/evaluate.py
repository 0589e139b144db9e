"""``readl evaluate`` (DVC stage ``evaluate``): image / pixel / reasoning metrics, curves, tables and a gallery.

One linear entry, :func:`run`: read the evaluation split -> build the predictor -> predict every image through the
per-image cache (and each model baseline of ``evaluate.baselines``) -> ReAL maps with the calibrated tau_t / tau_i
-> metrics (:func:`readl.evaluation.evaluate.evaluate`) with bootstrap intervals and baselines
(:mod:`readl.evaluation.comparison`) -> ``metrics.json``, ``plots/``, ``reports/per_category.{csv,md}`` and
``reports/gallery/``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from readl.config import Params, pipeline_base
from readl.data.manifest import read_manifest
from readl.evaluation import comparison as cmp
from readl.evaluation.calibration import calibrate_thresholds
from readl.evaluation.decision import read_decision
from readl.evaluation.evaluate import evaluate, score_images
from readl.evaluation.predictions import predict_manifest
from readl.evaluation.report import write_curves, write_gallery, write_metrics, write_tables
from readl.localization.thresholds import ThresholdPair, ThresholdSpec
from readl.predictor import pipeline_predictor, resolve_taus

__all__ = ["run"]

log = logging.getLogger(__name__)


def run(params: Params, manifest: Path, adapter: Path | None, thresholds: Path | None, metrics_path: Path,
        plots_dir: Path, reports_dir: Path, cache_dir: Path, base: str | None = None,
        progress: Callable[[int], None] | None = None, calib_manifest: Path | None = None) -> dict:  # fmt: skip
    """Evaluate the model on the evaluation split and write metrics, curves, tables and the gallery.

    Args:
        params: validated params (``model``, ``localization`` (mode, alpha, beta, rules), ``evaluate``).
        manifest: the evaluation split with masks (``data/curated/eval.parquet``).
        adapter: the LoRA folder (absent or ``none``: the base model alone).
        thresholds: ``thresholds.json`` of ``readl calibrate`` (tau_t, tau_i, decision), or ``None`` for the
            per-image rules and decision threshold 0.5.
        metrics_path: ``metrics.json`` (image AUROC / AUPR / F1-max / ACC, pixel AUROC / AUPR / AUPRO, per
            dataset and category, bootstrap intervals, baselines; values in [0, 1], ``null`` when undefined).
        plots_dir: folder of ROC / PR curve JSON for ``dvc plots`` (:func:`readl.evaluation.report.write_curves`).
        reports_dir: folder of ``per_category.csv`` / ``.md`` and ``gallery/``.
        cache_dir: the per-image prediction cache (``reports/predictions/eval``; baselines under ``baselines/``).
        base: the base model (default :func:`readl.config.pipeline_base`).
        progress: called with the number of images finished.
        calib_manifest: the calibration split (``data/curated/calib.parquet``), where each model baseline gets its
            own calibrated tau_t / tau_i under ``evaluate.baseline_thresholds: calibrated``; without it the
            baselines use the per-image rules (a warning; ``baselines.<name>.thresholds.source`` says so).

    Returns:
        The metrics written to ``metrics_path`` (``{}`` on a non-main process of ``accelerate launch``).

    Raises:
        FileNotFoundError: the manifest, one of its images or masks, or the given ``thresholds`` is missing.
        ValueError: the manifest is empty or lacks columns; the thresholds file lacks tau_t / tau_i values.
        readl.predictor.ModelLoadError: a model cannot be loaded.
    """
    t0 = time.perf_counter()
    df = read_manifest(manifest)
    if thresholds is not None and not Path(thresholds).is_file():
        raise FileNotFoundError(f"{thresholds}: no thresholds file; run `readl calibrate` first or omit it")
    predictor, base, adapter = pipeline_predictor(params, base, adapter)
    items = predict_manifest(df, predictor, base, adapter, cache_dir, params.model.batch_size, progress)
    del predictor  # free the model before a baseline loads its own
    baseline_items = _baseline_predictions(df, params, cache_dir, calib_manifest)  # every process: collective
    if items is None:  # a non-main process of `accelerate launch`: its shards are in the caches
        return {}
    cfg = params.evaluate
    taus = resolve_taus(params.localization, thresholds)
    results = score_images(items, params.localization, taus, malformed=cfg.malformed)
    decision = read_decision(thresholds)
    metrics, table = evaluate(results, params.localization.mode, decision_threshold=decision["value"])
    metrics["decision"] = {k: decision[k] for k in ("value", "rule", "source")}
    metrics["thresholds"] = {"tau_t": taus.tau_t.label, "tau_i": taus.tau_i.label,
                             "source": str(thresholds) if thresholds else "per-image"}  # fmt: skip
    if thresholds is not None:  # how the calibrated rules fell back (per-image counts are in datasets.*.thresholds)
        metrics["thresholds"]["rule_fallbacks"] = json.loads(Path(thresholds).read_text()).get("rule_fallbacks")
    _add_comparison(metrics, results, df, params, baseline_items)
    write_metrics(metrics_path, metrics)
    write_curves(plots_dir, results, metrics.pop("_curves"))
    write_tables(reports_dir, table)
    write_gallery(reports_dir, results, Path("."), per_dataset=cfg.gallery_per_dataset, threshold=decision["value"],
                  threshold_source=f"{decision['rule']}, {decision['source']}")  # fmt: skip
    log.info("evaluate: %d images (%d malformed), image AUROC %.3f, pixel AUROC %.3f, AUPRO %.3f; %.1f s",
             metrics["n_images"], metrics["n_malformed"], metrics["image"]["AUROC"], metrics["pixel"]["AUROC"],
             metrics["pixel"]["AUPRO"], time.perf_counter() - t0)  # fmt: skip
    return metrics


def _baseline_models(params: Params) -> dict[str, str]:
    """The model baselines of ``evaluate.baselines``: name -> base model (``warmup`` only when there is one)."""
    models = {"untrained": params.model.base, "warmup": pipeline_base(params)}
    return {n: b for n, b in models.items() if n in params.evaluate.baselines
            and not (n == "warmup" and b == params.model.base)}  # fmt: skip


def _baseline_predictions(df: pd.DataFrame, params: Params, cache_dir: Path, calib_manifest: Path | None) -> dict:
    """Each model baseline (no adapter): ``name -> (base, eval predictions, taus, source)``, predictions cached in
    ``<cache_dir>/baselines/<name>/`` (its calibration-split predictions in ``<name>.calib/``). ``taus`` are
    calibrated on ``calib_manifest`` exactly as ``readl calibrate`` fits the model's under
    ``evaluate.baseline_thresholds: calibrated`` (a threshold belongs to one model's attention: per-image rules
    for the baselines would credit calibration to training), else the per-image rules. Run by every process of
    a multi-process evaluate (each predicts its shard); the non-main processes get ``None`` predictions."""
    calib = None
    if params.evaluate.baseline_thresholds == "calibrated":
        if calib_manifest is not None and Path(calib_manifest).is_file():
            calib = read_manifest(calib_manifest)
        else:
            log.warning("baselines: no calibration split at %s: per-image threshold rules", calib_manifest)
    out = {}
    for name, model in _baseline_models(params).items():
        t0 = time.perf_counter()
        predictor, base, _ = pipeline_predictor(params, model, None)
        cache = Path(cache_dir) / "baselines"
        items = predict_manifest(df, predictor, base, None, cache / name, params.model.batch_size)
        taus, source = resolve_taus(params.localization, None), "per-image"
        if calib is not None:
            c_items = predict_manifest(calib, predictor, base, None, cache / f"{name}.calib", params.model.batch_size)
            if c_items is not None:  # main process: fitted exactly as `readl calibrate` fits the model's
                record, _, _ = calibrate_thresholds([p for _, p in c_items], params.localization)
                taus = ThresholdPair(ThresholdSpec("fixed", record["tau_t"]["value"]),
                                     ThresholdSpec("fixed", record["tau_i"]["value"]))  # fmt: skip
                source = f"calibrated on {calib_manifest}"
        out[name] = (base, items, taus, source)
        del predictor
        log.info("baseline %s predictions: %.1f s", name, time.perf_counter() - t0)
    return out


def _add_comparison(metrics: dict, results: list, df: pd.DataFrame, params: Params, baseline_items: dict) -> None:
    """Bootstrap intervals of the model's AUROCs and the ``evaluate.baselines`` (readl.evaluation.comparison), in
    ``metrics``; ``baseline_items`` from :func:`_baseline_predictions`."""
    cfg, loc = params.evaluate, params.localization
    boot = cmp.Bootstrap(cfg.bootstrap_resamples, cfg.bootstrap_seed, cfg.bootstrap_ci)
    groups = cmp.image_groups(df)
    cmp.add_intervals(metrics, results, groups, loc.mode, boot)
    baselines = {}
    for name in cfg.baselines:
        if name == "contrast":
            baselines[name] = cmp.contrast_entry(cmp.contrast_results(results, loc.mode), groups, boot)
        elif name not in baseline_items:
            log.info("baseline %s skipped: warmup disabled or models/warmup absent", name)
        else:
            base, items, taus, source = baseline_items[name]
            scored = score_images(items, loc, taus, malformed="score")  # floor: keep every map
            baselines[name] = cmp.baseline_entry(scored, groups, loc.mode, boot, base=str(base), adapter=None)
            baselines[name]["thresholds"] = {"tau_t": taus.tau_t.label, "tau_i": taus.tau_i.label, "source": source}
    metrics["baselines"] = baselines
