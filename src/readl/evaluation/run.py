"""The calibrate and evaluate stages, start to end (called by ``readl calibrate`` / ``readl evaluate``)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from readl.atomic import write_json
from readl.config import Params
from readl.evaluation.predictions import cached_predictions, fingerprint
from readl.evaluation.report import _clean
from readl.model.inference import GenerationSettings, Predictor

__all__ = ["read_manifest", "open_predictor", "run_calibrate", "run_evaluate"]

log = logging.getLogger(__name__)


def read_manifest(path: Path) -> pd.DataFrame:
    """A curated split manifest (Parquet).

    Raises:
        FileNotFoundError: the file is missing (run ``readl curate`` / ``dvc repro curate``).
        ValueError: it is empty or lacks ``image_path`` / ``label``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found; run `dvc repro curate` (or `readl curate`) first")
    df = pd.read_parquet(path)
    missing = {"image_path", "label", "source", "category"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: manifest lacks columns {sorted(missing)}; re-run `readl curate`")
    if df.empty:
        raise ValueError(f"{path}: manifest is empty; check the `curate:` section of params.yaml")
    return df


def open_predictor(params: Params, base: str | None, adapter: Path | None, device: str | None = None):
    """Load model (+ adapter when the folder exists) and wrap it in a greedy-decoding Predictor.

    Returns:
        ``(predictor, base, adapter)`` with ``adapter`` None when no adapter folder was found.
    """
    from readl.config import pipeline_base
    from readl.model.generation import make_generator
    from readl.model.loading import load_model, resolve_base

    base = base or pipeline_base(params)
    if adapter is not None and str(adapter).lower() == "none":  # `--adapter none`: the base model (paper "Vanilla")
        adapter = None
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        log.warning("no adapter at %s: evaluating the base model", adapter)
        adapter = None
    if device is None and _state().num_processes > 1:  # accelerate launch: this process's own device
        device = str(_state().device)
    model, processor = load_model(base, adapter=adapter, device=device, dtype=params.model.dtype)
    predictor = Predictor(
        model, processor, image_size=params.model.image_size, layers=params.localization.layers,
        query_row=params.localization.query_row,
        generation=GenerationSettings(max_new_tokens=params.model.max_new_tokens),
        generator=make_generator(params.model.generation_backend, resolve_base(base), adapter),
    )  # fmt: skip
    return predictor, base, adapter


def _state():
    """This process's accelerate state: one process unless started by ``accelerate launch`` (GPUs) or
    ``torchrun --nproc_per_node N`` (also on CPU: gloo, as accelerate's own CPU launcher needs MPI)."""
    import torch
    from accelerate import PartialState

    cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return PartialState(cpu=cpu)


def _predictions(manifest, predictor, base, adapter, cache_dir, params, progress):
    """Every manifest row's prediction through the per-image cache; across processes when launched with
    ``accelerate launch --num_processes N``: the main process checks the cache's fingerprint first, then
    process r predicts rows r, r + N, ... into the shared cache, and the main process reads them all back in
    manifest order (the other processes get ``None``)."""
    fp = fingerprint(predictor, base, adapter)
    state = _state()
    bs = params.model.batch_size
    if state.num_processes == 1:
        return list(cached_predictions(manifest, predictor, cache_dir, fp, batch_size=bs, progress=progress))
    if state.is_main_process:  # fingerprint check (may empty the cache) before anyone writes into it
        list(cached_predictions(manifest.iloc[:0], predictor, cache_dir, fp, batch_size=bs, prune=False))
    state.wait_for_everyone()
    shard = manifest.iloc[state.process_index :: state.num_processes]
    log.info("process %d/%d: %d of %d images", state.process_index, state.num_processes, len(shard), len(manifest))
    for _ in cached_predictions(shard, predictor, cache_dir, fp, batch_size=bs, prune=False,
                                progress=progress if state.is_main_process else None):  # fmt: skip
        pass
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    return list(cached_predictions(manifest, predictor, cache_dir, fp, batch_size=bs))


def run_calibrate(params: Params, manifest: Path, adapter: Path | None, out: Path, cache_dir: Path,
                  base: str | None = None, progress: Callable | None = None) -> dict:  # fmt: skip
    """Predict the calibration split, find tau_t / tau_i and the OK/NG decision threshold on the image score
    (``calibrate:`` params, :mod:`readl.evaluation.decision`), write ``out`` (thresholds.json) and its plot."""
    from readl.evaluation.decision import fit_decision_threshold, image_score
    from readl.localization.calibrate import calibrate_thresholds, plot_curves

    t0 = time.perf_counter()
    df = read_manifest(manifest)
    predictor, base, adapter = open_predictor(params, base, adapter)
    items = _predictions(df, predictor, base, adapter, cache_dir, params, progress)
    if items is None:  # a non-main process of `accelerate launch`: its shard is in the cache
        return {}
    record, s_t_hat, s_i_hat = calibrate_thresholds([p for _, p in items], params.localization)
    policy, ccfg = params.evaluate.malformed, params.calibrate
    scores = [image_score(p.score, p.parsed.answer is None, policy) for _, p in items]
    decision = fit_decision_threshold(scores, [int(r["label"]) for r, _ in items], ccfg.decision, ccfg.false_alarm_rate)
    record["decision"] = {**decision, "score": "P(Yes)", "malformed": policy}
    record["model"] = {"base": base, "adapter": str(adapter) if adapter else None}
    write_json(out, _clean(record))
    plot_curves(out.with_suffix(".png"), s_t_hat, s_i_hat, record)
    log.info("calibrate: tau_t %.4f (%s), tau_i %.4f (%s) from %d tokens of %d images; decision P(Yes) >= %.4f "
             "(%s%s); %.1f s -> %s", record["tau_t"]["value"], record["tau_t"]["rule"], record["tau_i"]["value"],
             record["tau_i"]["rule"], record["n_tokens"], record["n_images"], decision["value"], decision["rule"],
             f", {decision['fallback']}: default" if decision["fallback"] else "", time.perf_counter() - t0, out)  # fmt: skip
    return record


def run_evaluate(params: Params, manifest: Path, adapter: Path | None, thresholds: Path | None,
                 metrics_path: Path, plots_dir: Path, reports_dir: Path, cache_dir: Path,
                 base: str | None = None, progress: Callable | None = None) -> dict:  # fmt: skip
    """Predict the evaluation split and write metrics.json, curves, per-category tables and the gallery."""
    from readl.evaluation.decision import read_decision
    from readl.evaluation.evaluate import evaluate, score_images
    from readl.evaluation.report import write_curves, write_gallery, write_metrics, write_tables
    from readl.predict import resolve_taus

    t0 = time.perf_counter()
    df = read_manifest(manifest)
    if thresholds is not None and not Path(thresholds).is_file():
        raise FileNotFoundError(f"{thresholds}: no thresholds file; run `readl calibrate` first or omit it")
    predictor, base, adapter = open_predictor(params, base, adapter)
    items = _predictions(df, predictor, base, adapter, cache_dir, params, progress)
    del predictor  # free the model before a baseline loads its own
    baseline_items = _baseline_predictions(df, params, cache_dir)  # every process: the shards are collective
    if items is None:  # a non-main process of `accelerate launch`: its shards are in the caches
        return {}
    cfg = params.evaluate
    taus = resolve_taus(params.localization, thresholds)
    results = score_images(items, params.localization, taus, malformed=cfg.malformed)
    decision = read_decision(thresholds)
    metrics, table = evaluate(results, params.localization.mode, decision_threshold=decision["value"])
    metrics["decision"] = {k: decision[k] for k in ("value", "rule", "source")}
    metrics["thresholds"] = {"tau_t": taus.tau_t.label, "tau_i": taus.tau_i.label, "source": str(thresholds) if thresholds else "per-image"}
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
    from readl.config import pipeline_base

    models = {"untrained": params.model.base, "warmup": pipeline_base(params)}
    return {n: b for n, b in models.items() if n in params.evaluate.baselines
            and not (n == "warmup" and b == params.model.base)}  # fmt: skip


def _baseline_predictions(df: pd.DataFrame, params: Params, cache_dir: Path) -> dict:
    """Predictions of each model baseline (no adapter), cached in ``<cache_dir>/baselines/<name>/``; run by every
    process of a multi-process evaluate (each predicts its shard); the non-main processes get ``None`` values."""
    out = {}
    for name, model in _baseline_models(params).items():
        t0 = time.perf_counter()
        predictor, base, _ = open_predictor(params, model, None)
        out[name] = (base, _predictions(df, predictor, base, None, Path(cache_dir) / "baselines" / name, params, None))
        del predictor
        log.info("baseline %s predictions: %.1f s", name, time.perf_counter() - t0)
    return out


def _add_comparison(metrics: dict, results: list, df: pd.DataFrame, params: Params, baseline_items: dict) -> None:
    """Bootstrap intervals of the model's AUROCs and the ``evaluate.baselines`` (readl.evaluation.comparison), in
    ``metrics``; ``baseline_items`` from :func:`_baseline_predictions`."""
    from readl.evaluation import comparison as cmp
    from readl.evaluation.evaluate import score_images
    from readl.predict import resolve_taus

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
            base, items = baseline_items[name]
            scored = score_images(items, loc, resolve_taus(loc, None), malformed="score")  # floor: keep every map
            baselines[name] = cmp.baseline_entry(scored, groups, loc.mode, boot, base=str(base), adapter=None)
    metrics["baselines"] = baselines
