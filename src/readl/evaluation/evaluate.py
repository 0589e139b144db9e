"""The evaluate stage's numbers: image, pixel and reasoning metrics per dataset, category and mode.

Paper Sec. 5 / Tables 1-3. Definitions (README "Metrics"):

- image level, per dataset: AUROC and AUPR (average precision) of the P(Yes) score, ACC of the Yes/No
  answer (label 1 = "Yes"), ACC_at_threshold of the OK/NG decision ``score >= t`` (t from ``readl calibrate``,
  readl.evaluation.decision), F1-max of the score;
- pixel level, per dataset: AUROC and AUPR over all pixels of the dataset pooled (normal images
  included), AUPRO up to FPR 0.3, ACC of ``map > t_pixel`` with t_pixel fitted WITHOUT masks on the normal
  calibration images (``readl calibrate``, :func:`readl.evaluation.calibration.pixel_thresholds`; NaN without
  it), and ``ACC_oracle``: ACC of ``map >= t`` at the F1-max threshold fitted on the evaluated masks themselves
  (an upper bound, not a deployable number); maps are the ReAL maps bilinearly resized to each mask (420x420
  after curate), never normalised;
- malformed answers (no ``<answer>Yes|No``): with the ``fallback`` policy the image is scored 0.5
  with an empty map and counts as a wrong answer; the count is reported;
- each token-selection mode (``all`` = the plain mean over all reasoning tokens, ``s_i``, ``s_t``,
  ``both``, paper Table 3) from the same generations; headline numbers use ``localization.mode``;
- token selection, per dataset and per mode: ``n_fallback`` (images with reasoning tokens of which no
  token passed the thresholds: their map is ``localization.fallback``), ``kept_fraction`` (mean over
  those images of the share of tokens kept; 1 in mode ``all``), ``n_no_tokens`` (no reasoning token:
  empty map); and per threshold, how often its per-image rule fell back (``thresholds.tau_t/tau_i``:
  ``n_fallback`` = maximum curvature used the median, ``n_top_tied`` = the tie rule set a tied top block
  aside; zero with calibrated thresholds, whose record is ``metrics.thresholds``). All images count,
  malformed ones included;
- reasoning: ROUGE-L and SBERT cosine against the manifest's ``reference`` column when present, per dataset;
  the top-level ``reasoning`` is the macro mean over ``evaluate.reasoning_datasets`` (paper Table 1: MVTec AD)
  present in the run, else over all datasets with references; ``reasoning.averaged_over`` names them;
- averages over datasets are macro means (the paper's "AVG").

Pixel metrics stream: a first pass profiles each (dataset, mode) score range, a second fills
histogram accumulators (no map is kept at full size).
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import numpy as np
import pandas as pd
from PIL import Image

from readl.config import LocalizationConfig
from readl.evaluation.decision import DEFAULT_THRESHOLD, FALLBACK_SCORE, image_score
from readl.evaluation.metrics import (
    BinaryCurveAccumulator,
    MetricUndefinedWarning,
    ProCurveAccumulator,
    ScoreProfile,
    auroc_aupr,
    f1_max,
)
from readl.localization.anomaly_map import NO_TOKEN_KEPT, NO_TOKENS, SelectionMode, real_map, upsample
from readl.localization.thresholds import Threshold, ThresholdPair
from readl.model.types import Prediction

__all__ = [
    "FALLBACK_SCORE",
    "MODES",
    "IMAGE_KEYS",
    "PIXEL_KEYS",
    "ImageResult",
    "score_images",
    "image_metrics",
    "pixel_metrics",
    "evaluate",
]

MODES = get_args(SelectionMode)  # the one selection-mode list (readl.localization.anomaly_map)
IMAGE_KEYS = ["AUROC", "AUPR", "ACC", "ACC_at_threshold", "F1_max"]
PIXEL_KEYS = ["AUROC", "AUPR", "AUPRO", "ACC", "ACC_oracle"]


@dataclass
class ImageResult:
    """One evaluation image after ReAL: what the metrics, tables and gallery read."""

    dataset: str
    category: str
    label: int
    image_path: str
    mask_path: str | None
    answer: str | None
    format_ok: bool
    malformed: bool
    score: float  # P(Yes), or FALLBACK_SCORE when malformed under the fallback policy
    reasoning: str
    reference: str | None
    tokens: list[str]
    maps: dict[str, np.ndarray] = field(repr=False)  # mode -> (h, w) token-grid map as scored
    weights: np.ndarray = field(repr=False)  # (R,) w of the headline mode (gallery highlighting)
    real_map: np.ndarray = field(repr=False)  # (h, w) ReAL map of the headline mode, before any fallback
    kept: dict[str, float] = field(default_factory=dict)  # mode -> share of the R tokens kept (NaN if R == 0)
    fallbacks: dict[str, str | None] = field(default_factory=dict)  # mode -> ReALResult.fallback
    tau_fits: dict[str, Threshold | None] = field(default_factory=dict)  # tau_t/tau_i -> per-image rule result


def score_images(
    items: Iterable[tuple[pd.Series, Prediction]],
    cfg: LocalizationConfig,
    taus: ThresholdPair,
    malformed: str = "fallback",
) -> list[ImageResult]:
    """ReAL maps in all four modes and the image score for each ``(manifest row, prediction)``.

    Args:
        items: rows with ``source``, ``category``, ``label``, ``image_path``, ``mask_path`` (and
            optionally ``reference``) with their predictions.
        cfg: ``localization`` params (alpha, beta, binarize, headline ``mode``, fallback, ties).
        taus: tau_t / tau_i specs, calibrated values or per-image rules
        (``readl.localization.thresholds.resolve_taus``).
        malformed: ``"fallback"`` (score 0.5, empty map) or ``"score"`` (keep P(Yes) read after the
            answer prefix and the ReAL map).
    """
    if malformed not in ("fallback", "score"):
        raise ValueError(f"evaluate.malformed must be 'fallback' or 'score', got {malformed!r}")
    out = []
    for row, pred in items:
        bad = pred.parsed.answer is None
        maps, kept, fallbacks, headline = {}, {}, {}, None
        for mode in MODES:
            res = real_map(
                pred.image_attn,
                pred.anomaly_attn,
                taus[0],
                taus[1],
                alpha=cfg.alpha,
                beta=cfg.beta,
                mode=mode,
                binarize=cfg.binarize,
                fallback=cfg.fallback,
                ties=cfg.ties,
            )
            maps[mode] = np.zeros_like(res.map) if (bad and malformed == "fallback") else res.map
            kept[mode], fallbacks[mode] = res.kept_fraction, res.fallback
            if mode == cfg.mode:
                headline = res
        ref = row.get("reference") if "reference" in row.index else None
        out.append(
            ImageResult(
                dataset=str(row["source"]),
                category=str(row["category"]),
                label=int(row["label"]),
                image_path=str(row["image_path"]),
                mask_path=None if pd.isna(row["mask_path"]) else str(row["mask_path"]),
                answer=pred.parsed.answer,
                format_ok=pred.parsed.format_ok,
                malformed=bad,
                score=image_score(pred.score, bad, malformed),
                reasoning=pred.parsed.reasoning,
                reference=None if ref is None or pd.isna(ref) else str(ref),
                tokens=pred.tokens,
                maps=maps,
                weights=headline.w,
                real_map=headline.map,
                kept=kept,
                fallbacks=fallbacks,
                tau_fits={"tau_t": headline.tau_t_fit, "tau_i": headline.tau_i_fit},
            )
        )
    return out


def selection_counts(results: list[ImageResult], mode: str) -> dict:
    """Token selection of one mode over ``results``: ``{"n_fallback", "n_no_tokens", "kept_fraction"}``.

    ``n_fallback``: images with reasoning tokens none of which passed the thresholds; ``n_no_tokens``:
    images without reasoning tokens; ``kept_fraction``: mean share of tokens kept over the images with
    tokens (NaN if none).
    """
    reasons = [r.fallbacks.get(mode) for r in results]
    shares = [r.kept[mode] for r in results if r.fallbacks.get(mode) != NO_TOKENS and mode in r.kept]
    return {
        "n_fallback": reasons.count(NO_TOKEN_KEPT),
        "n_no_tokens": reasons.count(NO_TOKENS),
        "kept_fraction": float(np.mean(shares)) if shares else math.nan,
    }


def rule_fallback_counts(results: list[ImageResult]) -> dict:
    """Per threshold, how often its per-image rule fell back: ``{"tau_t": {"rule", "n_fallback", "n_top_tied"}, ...}``.

    ``n_fallback``: the rule could not be applied as asked (maximum curvature -> median; "no scores");
    ``n_top_tied``: the tie rule set a tied top block aside. Empty for calibrated / fixed thresholds.
    """
    out = {}
    for key in ("tau_t", "tau_i"):
        fits = [r.tau_fits.get(key) for r in results]
        fits = [f for f in fits if f is not None and f.n > 0]
        if fits:
            out[key] = {
                "rule": fits[0].rule,
                "n_fallback": sum(f.fallback is not None for f in fits),
                "n_top_tied": sum(f.top_tied > 0 for f in fits),
            }
    return out


def _nan_quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricUndefinedWarning)
        return fn(*args, **kwargs)


def image_metrics(results: list[ImageResult], threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Image AUROC, AUPR, ACC (of the Yes/No answer), ACC_at_threshold (of the decision ``score >= threshold``,
    readl.evaluation.decision), F1-max; in [0, 1], NaN when one class is absent (ACCs: when empty)."""
    scores = np.array([r.score for r in results], np.float64)
    labels = np.array([r.label for r in results], np.int64)
    correct = [(r.answer == "Yes") == bool(r.label) and r.answer is not None for r in results]
    curve = _nan_quiet(auroc_aupr, scores, labels) if results else None
    f1 = _nan_quiet(f1_max, scores, labels) if results else None
    return {
        "AUROC": curve.auroc if curve else math.nan,
        "AUPR": curve.aupr if curve else math.nan,
        "ACC": float(np.mean(correct)) if results else math.nan,
        "ACC_at_threshold": float(np.mean((scores >= threshold) == (labels == 1))) if results else math.nan,
        "F1_max": f1.f1 if f1 else math.nan,
        "n": len(results),
    }


def load_eval_mask(path: str | None, size: tuple[int, int], root: Path) -> np.ndarray:
    if path is None:
        return np.zeros(size, bool)
    with Image.open(root / path) as m:
        return np.asarray(m.convert("L")) > 127  # curate writes {0, 255}


def pixel_metrics(
    results: list[ImageResult], mode: str, root: Path = Path("."), n_bins: int = 1 << 20, threshold: float | None = None
) -> dict:
    """Pooled pixel AUROC, AUPR, AUPRO (FPR <= 0.3), ACC and ACC_oracle for one mode (module docstring).

    Two streaming passes over the images; each map is upsampled to its mask's size on the fly.

    Args:
        threshold: t_pixel of ``ACC`` (``map > t_pixel``; ``thresholds.json`` ``pixel``), fitted without the
            evaluated masks; None: ``ACC`` is NaN.

    Returns:
        ``{"AUROC", "AUPR", "AUPRO", "ACC", "ACC_oracle", "curve": (fpr, tpr, recall, precision) subsampled}``,
        values in [0, 1] or NaN.
    """
    profile = ScoreProfile()
    for r in results:
        size = eval_mask_size(r, root)
        profile.update(upsample(r.maps[mode], size))
    if not results:
        return dict.fromkeys(PIXEL_KEYS, math.nan)
    curve = BinaryCurveAccumulator.from_profile(profile, n_bins=n_bins)
    pro = ProCurveAccumulator.from_profile(profile, n_bins=n_bins)
    correct = total = 0
    for r in results:
        mask = load_eval_mask(r.mask_path, eval_mask_size(r, root), root)  # (H, W) bool
        m = upsample(r.maps[mode], mask.shape)  # (H, W) float32
        curve.update(m, mask)
        pro.update(m[None], mask[None])
        if threshold is not None:
            correct += int(np.count_nonzero((m > threshold) == mask))
            total += mask.size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricUndefinedWarning)
        cm = curve.compute()
        return {
            "AUROC": cm.auroc,
            "AUPR": cm.aupr,
            "AUPRO": pro.compute(0.3),
            "ACC": correct / total if total else math.nan,
            "ACC_oracle": curve.accuracy_at_f1_max(),
            "curve": _curve_points(*curve.counts()),
        }


def eval_mask_size(r: ImageResult, root: Path) -> tuple[int, int]:
    if r.mask_path is None:
        with Image.open(root / r.image_path) as im:
            return im.height, im.width
    with Image.open(root / r.mask_path) as m:
        return m.height, m.width


def _curve_points(pos: np.ndarray, neg: np.ndarray, n: int = 200) -> dict:
    """ROC and PR points from histogram counts (thresholds from high to low), about ``n`` of them."""
    keep = (pos + neg) > 0
    p, q = pos[keep][::-1].cumsum(), neg[keep][::-1].cumsum()  # TP, FP as the threshold decreases
    if p.size == 0 or p[-1] == 0 or q[-1] == 0:
        return {"fpr": [], "tpr": [], "recall": [], "precision": []}
    idx = np.unique(np.linspace(0, p.size - 1, min(n, p.size)).astype(int))
    tpr, fpr = p[idx] / p[-1], q[idx] / q[-1]
    precision = p[idx] / np.maximum(p[idx] + q[idx], 1)
    r6 = lambda a: [round(float(v), 6) for v in a]  # noqa: E731
    return {"fpr": r6(np.r_[0, fpr]), "tpr": r6(np.r_[0, tpr]), "recall": r6(tpr), "precision": r6(precision)}


def _macro(per: dict[str, dict], keys: Iterable[str]) -> dict:
    out = {}
    for k in keys:
        vals = [d[k] for d in per.values() if not math.isnan(d[k])]
        out[k] = float(np.mean(vals)) if vals else math.nan
    return out


def evaluate(
    results: list[ImageResult],
    headline_mode: str,
    root: Path = Path("."),
    category_bins: int = 1 << 16,
    decision_threshold: float = DEFAULT_THRESHOLD,
    pixel_thresholds: dict[str, float] | None = None,
    reasoning_datasets: Sequence[str] = ("mvtec_ad",),
) -> tuple[dict, pd.DataFrame]:
    """All metrics of the evaluate stage: image, pixel and reasoning, per dataset and category (paper Sec. 5).

    Args:
        results: one :class:`ImageResult` per evaluation image (:func:`score_images`): image score in [0, 1],
            label, the ReAL maps of every selection mode, mask path, reasoning.
        headline_mode: the token-selection mode (``localization.mode``) whose pixel metrics are the headline.
        root: folder the mask paths are relative to.
        category_bins: histogram bins of the per-category pixel metrics (coarser, cheaper; error ~1e-4).
        decision_threshold: the OK/NG threshold on the image score, in [0, 1] (``image.ACC_at_threshold``).
        pixel_thresholds: mode -> t_pixel of ``pixel.ACC`` (``thresholds.json`` ``pixel.value``); None or a
            missing mode: that ACC is NaN (``ACC_oracle`` is always computed).
        reasoning_datasets: the datasets whose reasoning scores make the top-level ``reasoning`` (module docstring).

    Returns:
        ``(metrics, table)``: ``metrics`` for ``metrics.json`` (``image``: AUROC, AUPR, F1_max, ACC in [0, 1];
        ``pixel``: AUROC, AUPR, AUPRO (FPR <= 0.3), ACC, ACC_oracle in [0, 1]; ``n_images``, ``n_malformed``,
        ``datasets``:
        the same per dataset and category; ``_curves``: the pixel ROC / PR points for :func:`write_curves`);
        a value is ``None`` / NaN where undefined (e.g. a dataset with one class). ``table``: one row per
        (dataset, category) with the same metrics (``reports/per_category.{csv,md}``).

    Raises:
        FileNotFoundError: a mask file (or, for an image without a mask, the image) is missing.
    """
    from readl.evaluation.reasoning import rouge_l, sbert_cosine

    by_ds: dict[str, list[ImageResult]] = defaultdict(list)
    for r in results:
        by_ds[r.dataset].append(r)
    datasets, curves = {}, {}
    t_pixel = pixel_thresholds or {}
    for ds, rs in sorted(by_ds.items()):
        pix = {mode: pixel_metrics(rs, mode, root, threshold=t_pixel.get(mode)) for mode in MODES}
        curves[ds] = pix[headline_mode].pop("curve", {})
        for p in pix.values():
            p.pop("curve", None)
        for mode, p in pix.items():
            p.update(selection_counts(rs, mode))
        datasets[ds] = {
            "image": image_metrics(rs, decision_threshold),
            "pixel": pix[headline_mode],
            "modes": pix,
            "n_images": len(rs),
            "n_malformed": sum(r.malformed for r in rs),
            "format_rate": float(np.mean([r.format_ok for r in rs])),
            **selection_counts(rs, headline_mode),
            "thresholds": rule_fallback_counts(rs),
        }
    metrics = {
        "n_images": len(results),
        "n_malformed": sum(r.malformed for r in results),
        "n_fallback": sum(d["n_fallback"] for d in datasets.values()),
        "format_rate": float(np.mean([r.format_ok for r in results])) if results else math.nan,
        "image": _macro({d: v["image"] for d, v in datasets.items()}, IMAGE_KEYS),
        "pixel": _macro({d: v["pixel"] for d, v in datasets.items()}, PIXEL_KEYS),
        "modes": {m: _macro({d: v["modes"][m] for d, v in datasets.items()}, PIXEL_KEYS) for m in MODES},
        "datasets": datasets,
    }
    with_ref = [r for r in results if r.reference]
    if with_ref:
        preds, refs = [r.reasoning for r in with_ref], [r.reference for r in with_ref]
        rouge, sbert = rouge_l(preds, refs), sbert_cosine(preds, refs)  # (n,) each
        per = {}
        for ds in sorted({r.dataset for r in with_ref}):
            sel = np.array([r.dataset == ds for r in with_ref])
            per[ds] = datasets[ds]["reasoning"] = {
                "ROUGE_L": float(rouge[sel].mean()),
                "SBERT": float(sbert[sel].mean()),
                "n": int(sel.sum()),
            }
        over = [d for d in reasoning_datasets if d in per] or sorted(per)
        metrics["reasoning"] = {
            **_macro({d: per[d] for d in over}, ["ROUGE_L", "SBERT"]),
            "n": sum(per[d]["n"] for d in over),
            "averaged_over": over,
        }
    rows = []
    for (ds, cat), rs in sorted(_group(results, lambda r: (r.dataset, r.category)).items()):
        img = image_metrics(rs, decision_threshold)
        pix = pixel_metrics(rs, headline_mode, root, n_bins=category_bins, threshold=t_pixel.get(headline_mode))
        rows.append(
            {
                "dataset": ds,
                "category": cat,
                "n": len(rs),
                "anomalous": sum(r.label for r in rs),
                "malformed": sum(r.malformed for r in rs),
                **{f"image_{k}": img[k] for k in IMAGE_KEYS},
                **{f"pixel_{k}": pix[k] for k in PIXEL_KEYS},
            }
        )
    metrics["_curves"] = curves
    return metrics, pd.DataFrame(rows)


def _group(results, key):
    groups = defaultdict(list)
    for r in results:
        groups[key(r)].append(r)
    return groups
