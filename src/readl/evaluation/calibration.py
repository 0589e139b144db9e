"""Calibrate tau_t and tau_i on a held-out split (supplement Table 5).

Every reasoning token of every calibration image contributes its normalised scores S_T^ and S_I^
(normalised per image, as at inference). The pooled scores are sorted; tau_i is the maximum-curvature
point of the S_I^ curve and tau_t the median of the S_T^ curve (the paper's choice; each rule is
selectable per threshold, and fixed values too), with the tie rule ``localization.ties`` (a rule whose
value keeps no token is re-applied below the block tied at the maximum, see
:mod:`readl.localization.thresholds`). The result is ``models/thresholds.json``, which
``readl predict --thresholds`` and ``readl evaluate`` apply as fixed values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from readl.atomic import atomic_write
from readl.config import LocalizationConfig
from readl.localization.scores import normalize_scores, semantic_relevance, spatial_entropy
from readl.localization.thresholds import find_threshold
from readl.model.types import Prediction

__all__ = ["pooled_token_scores", "calibrate_thresholds", "pixel_thresholds", "plot_curves"]


def pooled_token_scores(preds: Iterable[Prediction], binarize="mean") -> tuple[np.ndarray, np.ndarray, int]:
    """Per-image normalised S_T^ and S_I^ of all reasoning tokens, concatenated.

    Returns:
        ``(s_t_hat (n,), s_i_hat (n,), n_images)`` float64 in [0, 1]; n = total reasoning tokens.
    """
    t_all, i_all, n_images = [], [], 0
    for pred in preds:
        n_images += 1
        s_t = semantic_relevance(pred.anomaly_attn)  # (R,)
        s_i = spatial_entropy(pred.image_attn, binarize=binarize)  # (R,)
        t_hat, i_hat = normalize_scores(s_t, s_i)
        t_all.append(t_hat)
        i_all.append(i_hat)
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
    return cat(t_all), cat(i_all), n_images


def calibrate_thresholds(preds: Iterable[Prediction], cfg: LocalizationConfig) -> tuple[dict, np.ndarray, np.ndarray]:
    """tau_t and tau_i from the pooled token scores of ``preds`` with the rules in ``cfg``.

    Returns:
        ``(record, s_t_hat, s_i_hat)``: ``record`` is the content of ``thresholds.json``:
        ``{"tau_t": {value, rule, index, n, fallback, top_tied, curve}, "tau_i": {...}, "rule_fallbacks",
        "n_tokens", "n_images", "binarize", "ties"}``; ``rule_fallbacks`` counts, per threshold, whether its
        rule fell back (``fallback``: maximum curvature used the median; ``top_tied``: the tie rule set a
        tied top block aside), 0 or 1 each; the arrays are the pooled scores (for the plot).

    Raises:
        ValueError: no reasoning tokens at all while a data-driven rule is asked for.
    """
    s_t_hat, s_i_hat, n_images = pooled_token_scores(preds, cfg.binarize)
    if s_t_hat.size == 0 and "fixed" not in (cfg.tau_t.rule, cfg.tau_i.rule):
        raise ValueError(f"no reasoning tokens in {n_images} calibration images: cannot calibrate tau_t/tau_i")
    tau_t = find_threshold(s_t_hat, cfg.tau_t.rule, cfg.tau_t.value, ties=cfg.ties)
    tau_i = find_threshold(s_i_hat, cfg.tau_i.rule, cfg.tau_i.value, ties=cfg.ties)
    record = {
        "tau_t": asdict(tau_t),
        "tau_i": asdict(tau_i),
        "rule_fallbacks": {
            k: {"fallback": int(t.fallback is not None), "top_tied": int(t.top_tied > 0)}
            for k, t in (("tau_t", tau_t), ("tau_i", tau_i))
        },
        "n_tokens": int(s_t_hat.size),
        "n_images": n_images,
        "binarize": cfg.binarize,
        "ties": cfg.ties,
    }
    return record, s_t_hat, s_i_hat


def pixel_thresholds(results, false_alarm_rate: float, root: Path = Path(".")) -> dict:
    """t_pixel per selection mode: the pixel decision ``map > t_pixel`` of ``pixel.ACC``, fitted without masks (ours).

    The paper reports a pixel ACC without saying where its threshold comes from; fitting it on the evaluated
    masks (F1-max) is an oracle (kept as ``pixel.ACC_oracle``). Here it needs image-level labels only: t_pixel
    is the ``1 - false_alarm_rate`` quantile (numpy ``"higher"``) of every pixel of the NORMAL calibration
    images' ReAL maps (bilinearly resized to the image, as at evaluation), so at most that share of their
    pixels is flagged.

    Args:
        results: :class:`readl.evaluation.evaluate.ImageResult` of the calibration split, scored with the
            calibrated tau_t / tau_i (malformed answers as the ``evaluate.malformed`` policy maps them).
        false_alarm_rate: ``calibrate.pixel_false_alarm_rate``, in (0, 1).
        root: folder the image paths are relative to.

    Returns:
        ``{"rule": "false_alarm_rate", "false_alarm_rate", "n_images", "n_pixels", "value": {mode: t_pixel}}``;
        ``value`` is ``{}`` when the split has no normal image (``pixel.ACC`` is then NaN).
    """
    from readl.evaluation.evaluate import MODES, eval_mask_size
    from readl.localization.anomaly_map import upsample

    normal = [r for r in results if r.label == 0]
    values = {}
    for mode in MODES:
        pooled = [upsample(r.maps[mode], eval_mask_size(r, root)).ravel() for r in normal]  # (H * W,) float32 each
        if pooled:
            values[mode] = float(np.quantile(np.concatenate(pooled), 1.0 - false_alarm_rate, method="higher"))
    n_pixels = sum(math.prod(eval_mask_size(r, root)) for r in normal)
    return {
        "rule": "false_alarm_rate",
        "false_alarm_rate": false_alarm_rate,
        "n_images": len(normal),
        "n_pixels": n_pixels,
        "value": values,
    }


def plot_curves(path: Path, s_t_hat: np.ndarray, s_i_hat: np.ndarray, record: dict) -> Path:
    """PNG of the two sorted score curves with their thresholds marked (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    for ax, scores, key, name in [(axes[0], s_t_hat, "tau_t", "S_T^"), (axes[1], s_i_hat, "tau_i", "S_I^")]:
        ax.plot(np.sort(scores), lw=1.5)
        tau = record[key]
        ax.axhline(tau["value"], color="tab:red", ls="--", label=f"{key} = {tau['value']:.3f} ({tau['rule']})")
        if tau.get("index") is not None:
            ax.plot([tau["index"]], [tau["value"]], "o", color="tab:red")
        ax.set(title=f"sorted {name} ({scores.size} tokens)", xlabel="token rank", ylabel=name)
        ax.legend(loc="upper left", fontsize=8)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path
