"""``readl calibrate`` (DVC stage ``calibrate``): tau_t, tau_i and the OK/NG decision threshold of one trained model.

One linear entry, :func:`run`: read the calibration split -> build the predictor -> predict every image through
the per-image cache -> fit tau_t (median rule) and tau_i (maximum-curvature rule) on the pooled token scores
(supplement Table 5, :mod:`readl.evaluation.calibration`) and the decision threshold on the image score P(Yes)
(``calibrate:`` params, :mod:`readl.evaluation.decision`) and t_pixel of ``pixel.ACC`` on the normal images' maps
(:func:`readl.evaluation.calibration.pixel_thresholds`) -> write ``thresholds.json`` and its plot.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from readl.atomic import write_json
from readl.config import Params
from readl.data.manifest import read_manifest
from readl.evaluation.calibration import calibrate_thresholds, pixel_thresholds, plot_curves
from readl.evaluation.decision import degenerate_decision, fit_decision_threshold, image_score
from readl.evaluation.evaluate import score_images
from readl.evaluation.predictions import predict_manifest
from readl.evaluation.report import clean_json
from readl.localization.thresholds import ThresholdPair, ThresholdSpec
from readl.paths import DEFAULT_PATHS, resolve_model
from readl.predictor import pipeline_predictor
from readl.runtime import configure

__all__ = ["main", "run"]

log = logging.getLogger(__name__)


def run(
    params: Params,
    manifest: Path,
    adapter: Path | None,
    out: Path,
    cache_dir: Path,
    base: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Calibrate the thresholds on the calibration split and write ``out`` and ``out.with_suffix(".png")``.

    Args:
        params: validated params (``model``, ``localization`` rules, ``calibrate``, ``evaluate.malformed``).
        manifest: the calibration split (``data/curated/calib.parquet``).
        adapter: the LoRA folder (``models/adapter``; absent or ``none``: the base model alone).
        out: the ``thresholds.json`` to write (atomically): ``tau_t`` / ``tau_i`` (``value``, ``rule``, counts),
            ``decision`` (``value`` on P(Yes) in [0, 1], ``rule``, ``score``, ``malformed``), ``pixel`` (t_pixel per
            selection mode), ``model``.
        cache_dir: the per-image prediction cache (``reports/predictions/calib``; an interrupted run resumes).
        base: the base model (default :func:`readl.paths.resolve_model`: ``models/warmup`` after the cold start).
        progress: called with the number of images finished.

    Returns:
        The record written to ``out`` (``{}`` on a non-main process of ``accelerate launch``).

    Raises:
        FileNotFoundError: the manifest or one of its images is missing (run ``readl curate``).
        ValueError: the manifest is empty or lacks columns; a cached prediction is unreadable.
        readl.predictor.ModelLoadError: the model cannot be loaded.
    """
    t0 = time.perf_counter()
    runtime = configure(params.runtime)
    df = read_manifest(manifest, inside=Path.cwd(), schema=True)  # every image and mask inside the project; schema
    predictor, base, adapter = pipeline_predictor(params, base or resolve_model(params).base, adapter)
    items = predict_manifest(df, predictor, base, adapter, cache_dir, params.model.batch_size, progress)
    if items is None:  # a non-main process of `accelerate launch`: its shard is in the cache
        return {}
    record, s_t_hat, s_i_hat = calibrate_thresholds([p for _, p in items], params.localization)
    policy, ccfg = params.evaluate.malformed, params.calibrate
    scores = [image_score(p.score, p.parsed.answer is None, policy) for _, p in items]
    decision = fit_decision_threshold(scores, [int(r["label"]) for r, _ in items], ccfg.decision, ccfg.false_alarm_rate)
    record["decision"] = {**decision, "score": "P(Yes)", "malformed": policy}
    if (warning := degenerate_decision(decision)) is not None:
        log.warning("calibrate: %s", warning)
        record["decision"]["warning"] = warning
    taus = ThresholdPair(*(ThresholdSpec("fixed", record[k]["value"]) for k in ("tau_t", "tau_i")))
    record["pixel"] = pixel_thresholds(
        score_images(items, params.localization, taus, malformed=policy), ccfg.pixel_false_alarm_rate
    )
    record["model"] = {"base": base, "adapter": str(adapter) if adapter else None}
    record["runtime"] = runtime
    write_json(out, clean_json(record))
    plot_curves(out.with_suffix(".png"), s_t_hat, s_i_hat, record)

    def rule(tau: dict) -> str:  # a threshold at the floor of [0, 1] (the curve's knee at 0) filters almost nothing
        fell = f", fell back: {tau['fallback']}" if tau.get("fallback") else ""
        return tau["rule"] + fell + (": at the floor, drops only tokens scored 0" if tau["value"] <= 0 else "")

    t_pix = record["pixel"]["value"].get(params.localization.mode)
    log.info(
        "calibrate: tau_t %.4f (%s), tau_i %.4f (%s) from %d tokens of %d images; decision P(Yes) >= %.4f "
        "(%s%s); t_pixel %s (%s pixel false-alarm rate, %d normal images); %.1f s -> %s",
        record["tau_t"]["value"],
        rule(record["tau_t"]),
        record["tau_i"]["value"],
        rule(record["tau_i"]),
        record["n_tokens"],
        record["n_images"],
        decision["value"],
        decision["rule"],
        f", {decision['fallback']}: default" if decision["fallback"] else "",
        "none" if t_pix is None else f"{t_pix:.4f}",
        ccfg.pixel_false_alarm_rate,
        record["pixel"]["n_images"],
        time.perf_counter() - t0,
        out,
    )
    return record


def main(
    params: Path | None = None,
    manifest: Path = Path("data/curated/calib.parquet"),
    adapter: Path | None = DEFAULT_PATHS.adapter,
    out: Path = DEFAULT_PATHS.thresholds,
    cache: Path = Path("reports/predictions/calib"),
    model: str | None = None,
) -> None:
    """tau_t (median), tau_i (maximum curvature) (supplement Table 5) and the OK/NG decision threshold on P(Yes)
    (params ``calibrate:``) on the calibration split.

    ``readl calibrate`` and ``python -m readl.stages.calibrate`` (dvc.yaml): :func:`run` with a progress bar."""
    from readl.stages.console import bar, load_params_file

    cfg = load_params_file(params)
    with bar("calibrate", len(read_manifest(manifest))) as advance:
        run(cfg, manifest, adapter, out, cache, base=model, progress=advance)


if __name__ == "__main__":
    from readl.stages.console import script

    script(main)
