"""AUPRO: area under the per-region-overlap (PRO) curve up to a false-positive-rate limit.

Bergmann et al., "The MVTec Anomaly Detection Dataset" (IJCV 2021) and the MVTec AD evaluation
code (``pro_curve_util.compute_pro`` + ``generic_util.trapezoid``):

* ground-truth regions: 8-connected components of each mask (``scipy.ndimage.label`` with
  ``np.ones((3, 3))``), counted over all images;
* at threshold t (anomalous when score >= t): FPR = false positives / all normal pixels of all
  images; PRO = mean over regions of (region pixels >= t) / (region size);
* curve points at every distinct score (ties: one point per group), plus (0, 0) and (1, 1),
  values clipped to <= 1; trapezoid area up to ``fpr_limit`` with the end point linearly
  interpolated; divided by ``fpr_limit``.

Differences from the reference: FPR in float64 (the reference casts it to float32), and an
optional histogram mode (``n_bins``, ``ProCurveAccumulator``) for large pixel sets, where the
curve points are the bin edges (ties inside a bin, as in BinaryCurveAccumulator).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from readl.evaluation.metrics._binning import Binner, HybridBinner, ScoreProfile, profiled_binner
from readl.evaluation.metrics._validate import (
    as_bool_chunk,
    as_labels,
    as_scores,
    finite_range,
    warn_undefined,
)

_STRUCTURE = np.ones((3, 3), dtype=int)  # 8-connectivity (scipy's default is 4-connected)
_PIECE = 1 << 16


def _regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-pixel PRO weight (1 / size of its 8-connected region; 0 for normal pixels) and the
    number of regions. masks: (N, H, W) bool."""
    w = np.zeros(masks.shape, np.float64)
    n_regions = 0
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=_STRUCTURE)
        if n:
            inv = np.zeros(n + 1)
            inv[1:] = 1.0 / np.bincount(lab.ravel(), minlength=n + 1)[1:]
            w[i] = inv[lab]
            n_regions += n
    return w, n_regions


def _maps_masks(maps: object, masks: object) -> tuple[np.ndarray, np.ndarray]:
    s = as_scores("maps", maps)
    if s.ndim == 2:
        s = s[None]
    if s.ndim != 3:
        raise ValueError(f"maps must be (N, H, W) or (H, W), got shape {s.shape}")
    y = np.asarray(masks)
    y = as_labels("masks", y[None] if y.ndim == 2 else y, s.shape)
    return s, as_bool_chunk(y)


def integrate_pro(fprs: np.ndarray, pros: np.ndarray, fpr_limit: float) -> float:
    """Normalised trapezoid area of a PRO curve from FPR 0 to ``fpr_limit`` (reference semantics).

    fprs: non-decreasing, starting at 0 and ending at 1; pros: same length. Returns area /
    fpr_limit in [0, 1]."""
    x, y = np.asarray(fprs, np.float64), np.asarray(pros, np.float64)
    correction = 0.0
    if not np.any(x == fpr_limit):
        ins = int(np.searchsorted(x, fpr_limit, side="right"))  # bisect.bisect
        x0, x1, y0, y1 = x[ins - 1], x[ins], y[ins - 1], y[ins]
        y_interp = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
        correction = 0.5 * (y_interp + y0) * (fpr_limit - x0)
    keep = x <= fpr_limit
    x, y = x[keep], y[keep]
    area = float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1]))) + correction
    return area / fpr_limit


def _curve(fp_cum: np.ndarray, pro_cum: np.ndarray, n_ok: float, n_regions: int) -> tuple[np.ndarray, np.ndarray]:
    """PRO curve from cumulative normal-pixel counts and PRO weights, thresholds descending."""
    fprs = np.minimum(fp_cum / n_ok, 1.0)
    pros = np.minimum(pro_cum / n_regions, 1.0)
    return np.r_[0.0, fprs, 1.0], np.r_[0.0, pros, 1.0]


def _check_limit(fpr_limit: float) -> float:
    f = float(fpr_limit)
    if not 0.0 < f <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit!r}")
    return f


def _undefined(n_ok: float, n_regions: int) -> bool:
    if n_ok == 0 or n_regions == 0:
        warn_undefined("AUPRO", "no normal pixels" if n_ok == 0 else "no anomalous region in any mask")
        return True
    return False


def pro_curve(maps: object, masks: object) -> tuple[np.ndarray, np.ndarray]:
    """Exact PRO curve (MVTec reference ``compute_pro``): (fprs, pros), float64 1-D arrays that
    start at (0, 0), end at (1, 1), with one point per distinct score, thresholds descending.

    Args/raises as ``aupro``. Memory: ~30 B/pixel (argsort + sorted copies)."""
    s, y = _maps_masks(maps, masks)
    finite_range("maps", s)
    w, n_regions = _regions(y)
    n_ok = float(y.size - np.count_nonzero(y))
    if _undefined(n_ok, n_regions):
        return np.array([0.0, 1.0]), np.array([math.nan, math.nan])
    flat = s.reshape(-1)
    order = np.argsort(flat)[::-1]
    ss = flat[order]
    last = np.r_[ss[1:] != ss[:-1], True]  # last pixel of each tie group
    del ss
    fp = np.cumsum(~y.reshape(-1)[order], dtype=np.int64)[last]
    pro = np.cumsum(w.reshape(-1)[order])[last]
    del order, w
    return _curve(fp.astype(np.float64), pro, n_ok, n_regions)


def aupro(maps: object, masks: object, fpr_limit: float = 0.3, *, n_bins: int | None = None) -> float:
    """AUPRO: PRO curve area up to FPR ``fpr_limit``, divided by ``fpr_limit`` (Bergmann et al.,
    MVTec AD; see the module docstring for the exact recipe).

    Args:
        maps: (N, H, W) (or one (H, W)) anomaly maps, real dtype, finite; higher = more anomalous.
        masks: same shape, bool or integer 0/1 ground truth.
        fpr_limit: integration limit in (0, 1]; 0.3 in the literature.
        n_bins: None (default) = exact, the reference algorithm (sorts all pixels, ~30 B/pixel);
            an int = two passes, ScoreProfile then a ProCurveAccumulator with that many adaptive
            bins (fast, fixed memory, ties inside a bin).
    Returns: float in [0, 1]; NaN with MetricUndefinedWarning if no mask has an anomalous pixel
        or no pixel is normal.
    Raises: ValueError for NaN/inf maps (naming the count), masks not 0/1, shape mismatch, maps
        not 2-D/3-D, fpr_limit outside (0, 1].
    """
    limit = _check_limit(fpr_limit)
    if n_bins is not None:
        s, y = _maps_masks(maps, masks)
        profile = ScoreProfile()
        profile.update(s)
        if profile.count == 0:
            _undefined(0.0, 0)
            return math.nan
        acc = ProCurveAccumulator.from_profile(profile, n_bins=n_bins)
        acc.update(s, y)
        return acc.compute(limit)
    fprs, pros = pro_curve(maps, masks)
    if np.isnan(pros[0]):
        return math.nan
    return integrate_pro(fprs, pros, limit)


class ProCurveAccumulator:
    """Streaming AUPRO (histogram, like BinaryCurveAccumulator: ``ProCurveAccumulator(lo, hi)``
    for a known range in one pass, or ``ProCurveAccumulator.from_profile(profile)`` after a
    ScoreProfile pass); regions are labelled per map as maps arrive.

    Args: lo, hi: finite, lo <= hi; every map value must lie in it. n_bins: histogram bins
        (default 2**20; memory 16 * n_bins bytes). chunk_size: pixels per np.bincount call
        (buffers 16 * chunk_size bytes; default 2**21).
    ``update(maps, masks)``: (N, H, W) or (H, W) maps and masks as in ``aupro``; raises ValueError
        for NaN/inf or out-of-range values (naming the count), masks not 0/1, shape mismatch.
    ``compute(fpr_limit=0.3)`` -> float; NaN with MetricUndefinedWarning when undefined.
    ``curve()`` -> (fprs, pros) at the bin edges, as ``pro_curve``.
    """

    def __init__(self, lo: float, hi: float, n_bins: int = 1 << 20, chunk_size: int = 1 << 21):
        self._setup(HybridBinner(lo, hi, n_bins), chunk_size)

    @classmethod
    def from_profile(
        cls, profile: ScoreProfile, n_bins: int = 1 << 20, chunk_size: int = 1 << 21
    ) -> ProCurveAccumulator:
        """Adaptive bins from a ScoreProfile pass over the maps (see BinaryCurveAccumulator)."""
        self = cls.__new__(cls)
        self._setup(profiled_binner(profile, n_bins), chunk_size)
        return self

    def _setup(self, binner: Binner, chunk_size: int) -> None:
        self._binner = binner
        self.lo, self.hi, self.n_bins = self._binner.lo, self._binner.hi, self._binner.n_bins
        self._sums = np.zeros(2 * self.n_bins, np.float64)  # [normal-pixel counts | PRO weights]
        self.n_regions = 0
        self._chunk = max(int(chunk_size), _PIECE)
        self._idx = np.empty(self._chunk, np.int64)  # buffered bin indices ...
        self._w = np.empty(self._chunk, np.float64)  # ... and weights, one bincount per chunk
        self._fill = 0
        self._t = np.empty(_PIECE, np.float64)
        self._k = np.empty(_PIECE, np.int32)

    def update(self, maps: object, masks: object) -> None:
        s, y = _maps_masks(maps, masks)
        r = finite_range("maps", s)
        if r is None:
            return
        if r[0] < self.lo or r[1] > self.hi:
            lo, hi = np.float64(self.lo), np.float64(self.hi)
            bad = int(np.count_nonzero((s < lo) | (s > hi)))
            raise ValueError(f"{bad} map values lie outside the accumulator range [{self.lo!r}, {self.hi!r}]")
        for sm, ym in zip(s, y, strict=True):
            w, n = _regions(ym[None])
            self.n_regions += n
            w = w.reshape(-1)
            yf = ym.reshape(-1)
            w[~yf] = 1.0  # weight: 1 per normal pixel (first block), 1/region size (second block)
            flat = sm.reshape(-1)
            for a in range(0, flat.size, _PIECE):
                m = min(_PIECE, flat.size - a)
                if self._fill + m > self._chunk:
                    self._flush()
                out = self._idx[self._fill : self._fill + m]
                self._binner.index(flat[a : a + m], out, self._t, self._k)
                np.add(out, self.n_bins, out=out, where=yf[a : a + m])
                self._w[self._fill : self._fill + m] = w[a : a + m]
                self._fill += m

    def _flush(self) -> None:
        if self._fill:
            c = np.bincount(self._idx[: self._fill], weights=self._w[: self._fill])
            self._sums[: c.size] += c
            self._fill = 0

    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        self._flush()
        ok, pro = self._sums[: self.n_bins], self._sums[self.n_bins :]
        n_ok = float(ok.sum())
        if _undefined(n_ok, self.n_regions):
            return np.array([0.0, 1.0]), np.array([math.nan, math.nan])
        keep = np.flatnonzero((ok + pro) > 0)[::-1]
        return _curve(np.cumsum(ok[keep]), np.cumsum(pro[keep]), n_ok, self.n_regions)

    def compute(self, fpr_limit: float = 0.3) -> float:
        limit = _check_limit(fpr_limit)
        fprs, pros = self.curve()
        if np.isnan(pros[0]):
            return math.nan
        return integrate_pro(fprs, pros, limit)
