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

from readl.config import Params
from readl.data.manifest import read_manifest
from readl.evaluation import comparison as cmp
from readl.evaluation.decision import read_decision
from readl.evaluation.evaluate import evaluate, score_images
from readl.evaluation.predictions import predict_manifest
from readl.evaluation.report import write_curves, write_gallery, write_headline, write_metrics, write_tables
from readl.localization.thresholds import read_thresholds_file
from readl.paths import DEFAULT_PATHS, resolve_model
from readl.predictor import pipeline_predictor, resolve_taus
from readl.runtime import configure

__all__ = ["main", "chance_warnings", "run"]

log = logging.getLogger(__name__)


def trained_with(adapter: Path | None, base: str) -> dict:
    """``{"train": {seed, runtime}, "warmup": {seed, runtime}}`` from the run records beside the adapter and the
    warm-started base (``train_run.json`` / ``warmup_run.json``; a stage that is absent is left out)."""
    out = {}
    for stage, record in (
        ("train", Path(adapter).parent / "train_run.json" if adapter else None),
        ("warmup", Path(base).parent / "warmup_run.json"),
    ):
        if record is not None and record.is_file():
            r = json.loads(record.read_text())
            if "seed" in r:
                out[stage] = {"seed": r["seed"], "runtime": r.get("runtime")}
    return out


def chance_warnings(metrics: dict) -> list[str]:
    """Per dataset, what says the model did not learn to detect: image AUROC at or below 0.5 (inverted or chance),
    or a Yes/No accuracy equal to the share of one class (the answer is constant)."""
    out = []
    for name, d in metrics["datasets"].items():
        img, n = d.get("image") or {}, d.get("image", {}).get("n") or d.get("n_images") or 0
        auroc, acc = img.get("AUROC"), img.get("ACC")
        if auroc is not None and auroc == auroc and auroc <= 0.5:
            out.append(
                f"{name}: image AUROC {auroc:.3f} is at or below chance (0.5){': inverted' if auroc < 0.45 else ''}"
            )
        n_anom, n_norm = img.get("n_anomalous"), img.get("n_normal")
        if acc is not None and n and n_anom is not None and n_norm is not None and n_anom and n_norm:
            for share, said in ((n_anom / n, "Yes"), (n_norm / n, "No")):
                if abs(acc - share) < 1e-9:
                    out.append(
                        f"{name}: answer ACC {acc:.3f} equals the share of "
                        f"{'anomalous' if said == 'Yes' else 'normal'} images: "
                        f"the model may answer {said!r} to every image"
                    )
    return out


def run(
    params: Params,
    manifest: Path,
    adapter: Path | None,
    thresholds: Path | None,
    metrics_path: Path,
    plots_dir: Path,
    reports_dir: Path,
    cache_dir: Path,
    base: str | None = None,
    progress: Callable[[int], None] | None = None,
    calib_manifest: Path | None = None,
) -> dict:
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
        reports_dir: folder of ``per_category.csv`` / ``.md``, ``gallery/`` and ``headline.json`` (DVC's metrics
            file: :func:`readl.evaluation.report.headline_metrics`).
        cache_dir: the per-image prediction cache (``reports/predictions/eval``; baselines under ``baselines/``).
        base: the base model (default :func:`readl.paths.resolve_model`: ``models/warmup`` after the cold start).
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
    runtime = configure(params.runtime)
    df = read_manifest(manifest, inside=Path.cwd(), schema=True, require_masks=True)  # paths inside the project
    if thresholds is not None and not Path(thresholds).is_file():
        raise FileNotFoundError(
            f"{thresholds}: no thresholds file; run `readl calibrate` (dvc repro calibrate) "
            "first, or pass --thresholds none for the per-image rules and the decision threshold "
            "0.5"
        )
    model = resolve_model(params)  # the baselines' untrained / warm-started models too
    predictor, base, adapter = pipeline_predictor(params, base or model.base, adapter)
    items = predict_manifest(df, predictor, base, adapter, cache_dir, params.model.batch_size, progress)
    del predictor  # free the model before a baseline loads its own
    baseline_items = cmp.baseline_predictions(
        df,
        params,
        cache_dir,
        calib_manifest,  # every process: collective
        lambda baseline: pipeline_predictor(params, baseline, None)[:2],
        model,
    )
    if items is None:  # a non-main process of `accelerate launch`: its shards are in the caches
        return {}
    cfg = params.evaluate
    taus = resolve_taus(params.localization, thresholds)
    results = score_images(items, params.localization, taus, malformed=cfg.malformed)
    decision = read_decision(thresholds)
    calibrated = read_thresholds_file(thresholds) if thresholds is not None else {}
    pixel = calibrated.get("pixel") or {}
    if not pixel.get("value"):
        log.warning(
            "evaluate: no t_pixel in %s (re-run `readl calibrate`): pixel.ACC is NaN; ACC_oracle is fitted "
            "on the evaluated masks",
            thresholds or "the per-image run",
        )
    metrics, table = evaluate(
        results,
        params.localization.mode,
        decision_threshold=decision["value"],
        pixel_thresholds=pixel.get("value"),
        reasoning_datasets=cfg.reasoning_datasets,
    )
    metrics["pixel_threshold"] = {
        "value": (pixel.get("value") or {}).get(params.localization.mode),
        "mode": params.localization.mode,
        **{k: pixel.get(k) for k in ("rule", "false_alarm_rate", "n_images")},
        "source": str(thresholds) if pixel.get("value") else None,
    }
    metrics["decision"] = {k: decision[k] for k in ("value", "rule", "source")}
    metrics["thresholds"] = {
        "tau_t": taus.tau_t.label,
        "tau_i": taus.tau_i.label,
        "source": str(thresholds) if thresholds else "per-image",
    }
    if thresholds is not None:  # how the calibrated rules fell back (per-image counts are in datasets.*.thresholds)
        metrics["thresholds"]["rule_fallbacks"] = calibrated.get("rule_fallbacks")
    cmp.add_comparison(metrics, results, df, params, baseline_items)
    if metrics.get("reasoning"):  # what the reasoning was scored against, per eval source (README "Metrics")
        metrics["reasoning"]["reference_source"] = {
            s.name: s.references or params.curate.references for s in params.curate.eval
        }
    metrics["runtime"] = {**runtime, "bootstrap_seed": cfg.bootstrap_seed, **trained_with(adapter, base)}
    write_metrics(metrics_path, metrics)
    write_headline(reports_dir / "headline.json", metrics)  # DVC's metrics file: flat and short
    write_curves(plots_dir, results, metrics.pop("_curves"))
    write_tables(reports_dir, table)
    write_gallery(
        reports_dir,
        results,
        Path("."),
        per_dataset=cfg.gallery_per_dataset,
        threshold=decision["value"],
        threshold_source=f"{decision['rule']}, {decision['source']}",
    )
    for warning in chance_warnings(metrics):
        log.warning("evaluate: %s", warning)
    per = "; ".join(
        f"{name} {d['image']['AUROC']:.3f}"
        for name, d in metrics["datasets"].items()
        if (d.get("image") or {}).get("AUROC") is not None
    )
    fell = "; ".join(
        f"{name} {key} {c['rule']} fell back on {c['n_fallback']}/{d['n_images']}"
        for name, d in metrics["datasets"].items()
        for key, c in (d.get("thresholds") or {}).items()
    )
    log.info(
        "evaluate: %d images (%d malformed), mean over datasets: image AUROC %.3f (%s), pixel AUROC %.3f, "
        "AUPRO %.3f; thresholds %s (%s); %.1f s",
        metrics["n_images"],
        metrics["n_malformed"],
        metrics["image"]["AUROC"],
        per,
        metrics["pixel"]["AUROC"],
        metrics["pixel"]["AUPRO"],
        "per-image" if thresholds is None else "calibrated",
        fell or "no per-image rule fell back",
        time.perf_counter() - t0,
    )
    return metrics


def main(
    params: Path | None = None,
    manifest: Path = Path("data/curated/eval.parquet"),
    adapter: Path | None = DEFAULT_PATHS.adapter,
    thresholds: Path | None = DEFAULT_PATHS.thresholds,
    metrics: Path = Path("metrics.json"),
    plots: Path = Path("plots"),
    reports: Path = Path("reports"),
    cache: Path = Path("reports/predictions/eval"),
    model: str | None = None,
    calib_manifest: Path = Path("data/curated/calib.parquet"),
) -> None:
    """Image / pixel / reasoning metrics per dataset and category, curves, tables and a heat-map gallery.

    ``readl evaluate`` and ``python -m readl.stages.evaluate`` (dvc.yaml): :func:`run` with a progress bar, then
    the metrics table (and the baselines' comparison) on stdout. ``thresholds`` ``none`` = the per-image rules and
    the decision threshold 0.5."""
    from readl.evaluation.comparison import comparison_table
    from readl.evaluation.report import metrics_table
    from readl.stages.console import bar, load_params_file, make_console

    cfg = load_params_file(params)
    with bar("evaluate", len(read_manifest(manifest))) as advance:
        thresholds = None if str(thresholds).lower() == "none" else thresholds
        result = run(
            cfg,
            manifest,
            adapter,
            thresholds,
            metrics,
            plots,
            reports,
            cache,
            base=model,
            progress=advance,
            calib_manifest=calib_manifest,
        )
    if not result:  # a non-main process of `accelerate launch --num_processes N -m readl.cli evaluate`
        return
    make_console().print(metrics_table(result))
    if result.get("baselines") or result.get("bootstrap"):
        make_console().print(comparison_table(result))


if __name__ == "__main__":
    from readl.stages.console import script

    script(main)
