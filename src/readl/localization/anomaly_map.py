"""ReAL token selection, weighting and aggregation into an anomaly map (paper Eq. 4-5).

Modes (paper Table 3): ``both`` / ``s_i`` / ``s_t`` keep the tokens above the thresholds and aggregate
them with the Eq. 4 weights (``s_i`` / ``s_t``: their own criterion's term only, :func:`token_weights`); ``all`` is
the map WITHOUT ReAL, the plain mean of A_{r,I} over all
reasoning tokens (Table 2 "without ReAL, we average the visual attention of all reasoning tokens",
which is Table 3's first row: same numbers).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, get_args

import numpy as np

from readl.localization.scores import (
    Binarize,
    checked_array,
    normalize_scores,
    semantic_relevance,
    spatial_entropy,
)
from readl.localization.thresholds import Rule, Threshold, ThresholdSpec, Ties, resolve_threshold

# Paper Table 3: no filter; S_I^ > tau_i only; S_T^ > tau_t only; both (the full method).
SelectionMode = Literal["all", "s_i", "s_t", "both"]
_MODES = get_args(SelectionMode)
# What the map is when no token passed the thresholds: the plain mean over all tokens (mode "all"), or zeros.
Fallback = Literal["all_mean", "empty"]
_FALLBACKS = get_args(Fallback)

NO_TOKEN_KEPT = "no token passed the thresholds"
NO_TOKENS = "no reasoning tokens"


def token_weights(
    s_t_hat: np.ndarray,
    s_i_hat: np.ndarray,
    tau_t: float,
    tau_i: float,
    alpha: float = 1.0,
    beta: float = 1.0,
    mode: SelectionMode = "both",
) -> tuple[np.ndarray, np.ndarray]:
    """Token weights w_r = 1{kept} * (alpha S_T^ + beta S_I^) (paper Eq. 4), per selection mode (paper Table 3).

    Kept and weighted (strict comparisons): "both": S_T^ > tau_t and S_I^ > tau_i, weight alpha S_T^ + beta S_I^
    (Eq. 4); "s_t": S_T^ > tau_t, weight alpha S_T^ (the single-criterion row: S_T only); "s_i": S_I^ > tau_i,
    weight beta S_I^ (S_I only); "all": every token, weight alpha S_T^ + beta S_I^ (the CGRO ranking of Eq. 6
    uses these; the "all" MAP of :func:`real_map` is the plain mean instead, paper Table 2).

    Args:
        s_t_hat, s_i_hat: (R,) normalised scores (see ``normalize_scores``), same length.
        tau_t, tau_i: thresholds (ignored by modes that do not use them).
        alpha, beta: weights of the two scores.
        mode: selection mode.

    Returns:
        (w, keep): w (R,) float64, >= 0 for scores in [0, 1] and alpha, beta >= 0, 0 where not
        kept; keep (R,) bool.

    Raises:
        ValueError: an input is not 1-D, lengths differ, NaN/inf values, or an unknown mode.
    """
    t = checked_array("s_t_hat", s_t_hat, 1).astype(np.float64)  # (R,)
    i = checked_array("s_i_hat", s_i_hat, 1).astype(np.float64)  # (R,)
    if t.shape != i.shape:
        raise ValueError(f"s_t_hat and s_i_hat must have the same length, got {t.size} and {i.size}")
    if mode not in _MODES:
        raise ValueError(f"unknown selection mode {mode!r}; expected one of {_MODES}")
    keep = np.ones(t.shape, dtype=bool)  # (R,)
    if mode in ("s_t", "both"):
        keep &= t > tau_t
    if mode in ("s_i", "both"):
        keep &= i > tau_i
    score = {"s_t": alpha * t, "s_i": beta * i}.get(mode, alpha * t + beta * i)  # (R,)
    w = np.where(keep, score, 0.0)  # (R,)
    return w, keep


def aggregate(image_attn: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Reasoning-driven anomaly map A = sum_r w_r A_{r,I} (paper Eq. 5).

    Args:
        image_attn: (R, h, w) attention maps. w: (R,) token weights.

    Returns:
        (h, w) float32 (accumulated in float64). R == 0 gives zeros.

    Raises:
        ValueError: wrong ndim, mismatched R, or NaN/inf values.
    """
    a = checked_array("image_attn", image_attn, 3)  # (R, h, w)
    wt = checked_array("w", w, 1).astype(np.float64)  # (R,)
    if a.shape[0] != wt.shape[0]:
        raise ValueError(f"image_attn has R={a.shape[0]} maps but w has {wt.shape[0]} weights")
    return np.tensordot(wt, a.astype(np.float64, copy=False), axes=1).astype(np.float32)  # (h, w)


@lru_cache(maxsize=64)
def _bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) 1-D bilinear weights, half-pixel centres (= torch align_corners=False)."""
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5  # (n_out,)
    src = np.clip(src, 0.0, n_in - 1)
    i0 = np.floor(src).astype(np.intp)  # (n_out,)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    m = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), 1.0 - frac)
    np.add.at(m, (rows, i1), frac)
    m.flags.writeable = False  # cached: shared between calls
    return m


def upsample(map_hw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a token-grid map to the original image size (H, W).

    Same result as ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``
    (half-pixel centres, edges clamped), computed as M_y @ map @ M_x.T. Raster order is kept:
    cell (i, j) of an (h, w) grid covers rows i*H/h .. (i+1)*H/h - 1 and the matching columns.

    Args:
        map_hw: (h, w) finite map. size: (H, W) target size, both >= 1; need not be square.

    Returns:
        (H, W) float32.

    Raises:
        ValueError: ``map_hw`` not 2-D or empty, NaN/inf values, or a bad ``size``.
    """
    m = checked_array("map_hw", map_hw, 2).astype(np.float64)  # (h, w)
    if m.size == 0:
        raise ValueError(f"map_hw is empty, shape {m.shape}")
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise ValueError(f"size must be (H, W) with positive integers, got {size!r}")
    out_h, out_w = int(size[0]), int(size[1])
    my = _bilinear_matrix(out_h, m.shape[0])  # (H, h)
    mx = _bilinear_matrix(out_w, m.shape[1])  # (W, w)
    return (my @ m @ mx.T).astype(np.float32)  # (H, W)


@dataclass
class ReALResult:
    """Output of :func:`real_map` for one image.

    map: (h, w) float32 anomaly map on the token grid (see :func:`upsample`).
    s_t, s_i: (R,) float64 raw scores; s_t_hat, s_i_hat: (R,) normalised; w: (R,) weights used
    (1/R each in mode "all" and for the "all_mean" fallback, 0 for the "empty" one);
    keep: (R,) bool tokens kept by the thresholds (all True in mode "all", all False if the fallback
    was used); fallback: why the thresholded map was not used, or None; tau_t, tau_i: the thresholds
    applied (per-image rule results or the given values); tau_t_fit, tau_i_fit: how a per-image rule
    found them (:class:`~readl.localization.thresholds.Threshold`, None for given values).
    """

    map: np.ndarray
    s_t: np.ndarray
    s_i: np.ndarray
    s_t_hat: np.ndarray
    s_i_hat: np.ndarray
    w: np.ndarray
    keep: np.ndarray
    fallback: str | None
    tau_t: float = float("nan")
    tau_i: float = float("nan")
    tau_t_fit: Threshold | None = None
    tau_i_fit: Threshold | None = None

    @property
    def kept_fraction(self) -> float:
        """Share of the R reasoning tokens kept by the selection, in [0, 1]; NaN when R == 0."""
        return float(self.keep.mean()) if self.keep.size else float("nan")


def real_map(
    image_attn: np.ndarray,
    anomaly_attn: np.ndarray,
    tau_t: ThresholdSpec | float | Rule,
    tau_i: ThresholdSpec | float | Rule,
    alpha: float = 1.0,
    beta: float = 1.0,
    mode: SelectionMode = "both",
    binarize: Binarize = "mean",
    fallback: Fallback = "all_mean",
    ties: Ties = "set_aside",
) -> ReALResult:
    """The ReAL chain for one image: Eq. 2-3 scores, per-image normalisation, Eq. 4 weights,
    Eq. 5 aggregation; mode "all" is the plain mean of all R maps (module docstring).

    If no token passes the thresholds (``fallback`` = "no token passed the thresholds"), the map is
    the plain mean of all R maps (``fallback="all_mean"``, the default: an all-zero map would make
    every pixel tie) or zeros (``"empty"``). If R == 0, the map is zeros and ``fallback`` is
    "no reasoning tokens".

    Args:
        image_attn: (R, h, w) non-negative attention to the image-token grid, raster order.
        anomaly_attn: (R, E) attention to the prompt's anomaly-word tokens.
        tau_t, tau_i: :class:`~readl.localization.thresholds.ThresholdSpec` each (a number = fixed, e.g.
            calibrated, ``models/thresholds.json``; a rule name = that rule): a rule ("max_curvature",
            "median") is applied per image to that image's normalised scores (supplement Table 5: tau_i by
            maximum curvature, tau_t by median), by :func:`~readl.localization.thresholds.resolve_threshold`.
        alpha, beta, mode: see :func:`token_weights`.
        binarize: see :func:`~readl.localization.scores.spatial_entropy`.
        fallback: "all_mean" or "empty", see above (``localization.fallback``).
        ties: the tie rule of the per-image threshold rules (:func:`~readl.localization.thresholds.find_threshold`).

    Returns:
        ReALResult.

    Raises:
        ValueError: wrong ndim, mismatched R, NaN/inf or negative attention, bad mode, binarize,
            fallback or ties.
    """
    if fallback not in _FALLBACKS:
        raise ValueError(f"unknown fallback {fallback!r}; expected one of {_FALLBACKS}")
    a = checked_array("image_attn", image_attn, 3)  # (R, h, w)
    e = checked_array("anomaly_attn", anomaly_attn, 2)  # (R, E)
    if a.shape[0] != e.shape[0]:
        raise ValueError(f"image_attn has R={a.shape[0]} tokens but anomaly_attn has R={e.shape[0]}")
    s_t = semantic_relevance(e)  # (R,)
    s_i = spatial_entropy(a, binarize=binarize)  # (R,)
    s_t_hat, s_i_hat = normalize_scores(s_t, s_i)  # (R,), (R,)
    spec_t, spec_i = ThresholdSpec.of(tau_t), ThresholdSpec.of(tau_i)
    got_t, got_i = resolve_threshold(spec_t, s_t_hat, ties), resolve_threshold(spec_i, s_i_hat, ties)
    tau_t, tau_i = got_t.value, got_i.value
    fit_t = got_t if spec_t.rule != "fixed" else None  # how a per-image rule found it; None for given values
    fit_i = got_i if spec_i.rule != "fixed" else None
    w, keep = token_weights(s_t_hat, s_i_hat, tau_t, tau_i, alpha, beta, mode)  # (R,), (R,)
    r = a.shape[0]
    mean_w = np.full(r, 1.0 / max(r, 1))  # (R,) the plain mean over all tokens
    reason = None
    if mode == "all":
        w = mean_w
    if r == 0:
        reason = NO_TOKENS
    elif not keep.any():
        reason = NO_TOKEN_KEPT
        w = mean_w if fallback == "all_mean" else np.zeros(r)
    return ReALResult(aggregate(a, w), s_t, s_i, s_t_hat, s_i_hat, w, keep, reason, tau_t, tau_i, fit_t, fit_i)
