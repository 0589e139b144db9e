"""Score binning for the streaming histograms: monotone maps from scores to bin indices.

Every binner maps scores to ``0 .. n_bins - 1`` by a non-decreasing function, so a histogram's
cumulative counts from the top bin down are exact confusion counts at the bin edges, and scores
in one bin act as ties. Two binners:

``HybridBinner(lo, hi, n_bins)`` -- one pass, the range known up front. Index
``lin(x) + log(x)``:

* ``lin(x) = floor((x - lo) * (n_bins // 2) / (hi - lo))`` in float64: linear bins;
* ``log(x) = (key(float32(x)) >> shift) - (key(float32(lo)) >> shift)``, where ``key`` is the
  float32 bit pattern made monotone (negatives mirrored, -0.0 folded onto +0.0) and ``shift`` the
  smallest that keeps the part below ``n_bins - n_bins // 2``: bins of constant *relative* width.

The sum of two non-decreasing parts is non-decreasing; each bin is no wider than its linear or its
log bin, so two scores at least ``(hi - lo) / (n_bins // 2)`` apart never share a bin. A plain
linear histogram puts heavy-tailed scores into a handful of bins (AUROC errors of 0.01-0.26
measured); the log part keeps AUROC errors ~1e-7, AP errors up to ~2e-5 on extreme tails.

``AdaptiveBinner(profile, n_bins)`` -- two passes. The first pass (``ScoreProfile``) records the
exact min/max and a histogram of a subsample over 4096 coarse bins of the float32 key (1/8 of a
binade each). Each coarse bin then gets a power-of-two number of equal sub-bins in key space,
in proportion to ``mass / sqrt(mass at or above it)`` (fine where the scores are, finer towards
the top of the ranking, where AP is most sensitive), at least ``n_bins / (8 * coarse bins in
range)`` each. Index: ``offset[c] + ((key & 0xFFFFF) >> shift[c])`` with ``c = key >> 20``.
AP errors ~1e-6 on the same extreme cases. Resolution is at most float32's: float64 scores that
round to the same float32 share a bin.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from readl.evaluation.metrics._validate import as_scores, finite_range, flat_chunks

_MASK32 = np.int32(0x7FFFFFFF)
_COARSE_SHIFT = 20  # coarse bin = key >> 20: sign + 8 exponent bits + 3 mantissa bits
_N_COARSE = 1 << (32 - _COARSE_SHIFT)  # 4096, offset by half so that negative keys fit
_LOW = (1 << _COARSE_SHIFT) - 1


def _key32(x: np.ndarray, out: np.ndarray, tmp: np.ndarray, signed: bool) -> np.ndarray:
    """Monotone int32 key of float32(x) written to ``out`` (``tmp``: int32 scratch).

    ``signed=False`` is only valid when every score is > 0 (no sign bit, no -0.0)."""
    f = out.view(np.float32)
    if signed:  # -0.0 + 0.0 == +0.0, so that -0.0 and 0.0 tie
        with np.errstate(over="ignore"):
            np.add(x, np.float32(0.0), out=f, dtype=np.float32, casting="unsafe")
        np.right_shift(out, 31, out=tmp)
        np.bitwise_and(tmp, _MASK32, out=tmp)
        np.bitwise_xor(out, tmp, out=out)  # negatives: -1 - magnitude bits (order reversed)
    elif x.dtype == np.float32:
        np.copyto(out, x.view(np.int32))
    else:
        with np.errstate(over="ignore"):
            np.copyto(f, x, casting="unsafe")
    return out


def _scalar_key32(v: float) -> int:
    x = np.array([v], np.float64)
    return int(_key32(x, np.empty(1, np.int32), np.empty(1, np.int32), True)[0])


class Binner:
    """Common part: small-array indexing and exact threshold recovery (bin -> score edge)."""

    n_bins: int
    lo: float
    hi: float

    def index(self, x: np.ndarray, out: np.ndarray, t: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Bin indices of the 1-D in-range scores ``x`` written to ``out`` (int64, len(x)).

        Scratch: ``t`` float64 and ``k`` int32, each at least len(x) long; no other allocation
        beyond numpy's small ufunc buffers."""
        raise NotImplementedError

    def index_of(self, x: np.ndarray) -> np.ndarray:
        """Bin indices of a small array (allocates; used for thresholds and tests)."""
        x = np.ascontiguousarray(x).reshape(-1)
        n = x.size
        return self.index(x, np.empty(n, np.int64), np.empty(n, np.float64), np.empty(n, np.int32)).copy()

    def lower_edge(self, b: int) -> float:
        """Smallest float64 ``t`` in ``[lo, hi]`` with ``index(t) >= b``: then for every score x in
        range, ``x >= t`` exactly when ``index(x) >= b``. ``b <= index(lo)`` gives ``lo``; a ``b``
        above every bin gives +inf."""
        if self.index_of(np.array([self.lo]))[0] >= b:
            return self.lo
        if self.index_of(np.array([self.hi]))[0] < b:
            return math.inf
        lo_k, hi_k = _f64_key(self.lo), _f64_key(self.hi)
        # bisection on the ordered float64 keys: invariant index(lo_k) < b <= index(hi_k)
        while hi_k - lo_k > 1:
            mid = (lo_k + hi_k) // 2
            if self.index_of(np.array([_f64_from_key(mid)]))[0] >= b:
                hi_k = mid
            else:
                lo_k = mid
        return _f64_from_key(hi_k)


def _check_bins(n_bins: object) -> int:
    if not isinstance(n_bins, (int, np.integer)) or not 4 <= n_bins <= 2**30:
        raise ValueError(f"n_bins must be an integer in [4, 2**30], got {n_bins!r}")
    return int(n_bins)


class HybridBinner(Binner):
    """Linear + log-spaced bins over a known range ``[lo, hi]`` (finite, lo <= hi)."""

    def __init__(self, lo: float, hi: float, n_bins: int):
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            raise ValueError(f"score range must be finite with lo <= hi, got ({lo!r}, {hi!r})")
        self.lo, self.hi, self.n_bins = lo, hi, _check_bins(n_bins)
        self.n_lin = self.n_bins // 2
        self.n_log = self.n_bins - self.n_lin
        width = hi - lo
        if not math.isfinite(width):
            raise ValueError(f"score range ({lo!r}, {hi!r}) is too wide for float64 arithmetic")
        self.scale = self.n_lin / width if width > 0 else 0.0
        if not math.isfinite(self.scale):
            raise ValueError(f"score range ({lo!r}, {hi!r}) is too narrow to bin")
        with np.errstate(over="ignore"):
            self.signed = not bool(np.float32(lo) > 0)
        klo, khi = _scalar_key32(lo), _scalar_key32(hi)
        shift = 0
        while (khi >> shift) - (klo >> shift) > self.n_log - 1:
            shift += 1
        self.shift, self.klo_shifted = shift, klo >> shift

    def index(self, x: np.ndarray, out: np.ndarray, t: np.ndarray, k: np.ndarray) -> np.ndarray:
        m = x.size
        out, t, k = out[:m], t[:m], k[:m]
        # linear part, float64 whatever the input dtype (identical bins for f32 and f64 inputs).
        # t >= 0, so truncation == floor; t <= n_lin * (1 + 2**-51) gives a linear part <= n_lin,
        # and the log part is <= n_log - 1: the sum stays <= n_bins - 1.
        np.subtract(x, self.lo, out=t, dtype=np.float64)
        np.multiply(t, self.scale, out=t)
        np.copyto(out, t, casting="unsafe")
        # log part on float32 bit patterns
        if x.dtype == np.float32 and not self.signed:
            np.right_shift(x.view(np.int32), self.shift, out=k)
        else:
            _key32(x, k, t.view(np.int32)[:m], self.signed)
            np.right_shift(k, self.shift, out=k)
        np.subtract(k, self.klo_shifted, out=k)
        np.add(out, k, out=out)
        return out


class ScoreProfile:
    """First pass of the two-pass API: exact (min, max) of the scores plus a coarse histogram of
    every ``sample_every``-th score, used to place the bins of the second pass.

    ``update(scores)``: any shape, real dtype; raises ValueError naming the number of NaN/inf
    values. ``bounds``: (lo, hi) floats; ValueError before any non-empty update. Costs one
    min/max pass plus ~1/``sample_every`` of a binning pass; 32 KiB state, ~2 MiB transient.
    """

    def __init__(self, sample_every: int = 8):
        if int(sample_every) != sample_every or sample_every < 1:
            raise ValueError(f"sample_every must be a positive integer, got {sample_every!r}")
        self.sample_every = int(sample_every)
        self.lo = math.inf
        self.hi = -math.inf
        self.count = 0
        self.coarse = np.zeros(_N_COARSE, np.int64)  # sampled scores per coarse key bin

    def update(self, scores: object) -> None:
        s = as_scores("scores", scores)
        r = finite_range("scores", s)
        if r is None:
            return
        self.lo, self.hi = min(self.lo, r[0]), max(self.hi, r[1])
        self.count += s.size
        for c in flat_chunks(s, 1 << 20):
            x = c[:: self.sample_every]
            k = _key32(x, np.empty(x.size, np.int32), np.empty(x.size, np.int32), True)
            c = (k >> _COARSE_SHIFT).astype(np.intp) + _N_COARSE // 2
            self.coarse += np.bincount(c, minlength=_N_COARSE)

    @property
    def bounds(self) -> tuple[float, float]:
        if self.count == 0:
            raise ValueError("ScoreProfile saw no scores")
        return self.lo, self.hi


class AdaptiveBinner(Binner):
    """Bins placed from a ScoreProfile (see module docstring); scores must lie in its bounds."""

    def __init__(self, profile: ScoreProfile, n_bins: int):
        self.lo, self.hi = profile.bounds
        budget = _check_bins(n_bins)
        self.signed = not bool(np.float32(self.lo) > 0)
        c_lo = (_scalar_key32(self.lo) >> _COARSE_SHIFT) + _N_COARSE // 2
        c_hi = (_scalar_key32(self.hi) >> _COARSE_SHIFT) + _N_COARSE // 2
        n_in = c_hi - c_lo + 1
        if 2 * n_in > budget:
            raise ValueError(f"n_bins={budget} is too small for this score range (needs >= {2 * n_in})")
        self.n_coarse_in_range = n_in
        mass = profile.coarse.astype(np.float64)
        mass[:c_lo] = mass[c_hi + 1 :] = 0.0
        at_or_above = np.cumsum(mass[::-1])[::-1]
        w = mass / np.sqrt(np.maximum(at_or_above, 1.0))
        floor = 1 << max(0, min(_COARSE_SHIFT, int(math.log2(budget / (8 * n_in)))))
        rest = budget - floor * n_in
        target = np.zeros(_N_COARSE)
        share = rest * w[c_lo : c_hi + 1] / w.sum() if w.sum() > 0 else rest / n_in
        target[c_lo : c_hi + 1] = floor + share
        log2r = np.clip(np.floor(np.log2(np.maximum(target, 1.0))), 0, _COARSE_SHIFT).astype(np.int64)
        r = np.where(target > 0, np.left_shift(1, log2r), 0)
        # spend what rounding down left over: double the most under-served coarse bins
        left = budget - int(r.sum())
        for c in np.argsort(-(target / np.maximum(r, 1)), kind="stable"):
            if target[c] > 0 and log2r[c] < _COARSE_SHIFT and r[c] <= left:
                left -= int(r[c])
                r[c] *= 2
                log2r[c] += 1
        offsets = np.concatenate(([0], np.cumsum(r)[:-1]))
        shifts = np.where(r > 0, _COARSE_SHIFT - log2r, 0)
        self._table = (offsets << 5) | shifts  # int64: offset << 5 | shift, one gather per score
        self.n_bins = int(r.sum())  # <= budget

    def index(self, x: np.ndarray, out: np.ndarray, t: np.ndarray, k: np.ndarray) -> np.ndarray:
        m = x.size
        out, t, k = out[:m], t[:m], k[:m]
        if x.dtype == np.float32 and not self.signed:
            key = x.view(np.int32)
        else:
            key = _key32(x, k, t.view(np.int32)[:m], self.signed)
        c = t.view(np.int64)  # scratch, free again once the key is in k
        np.right_shift(key, _COARSE_SHIFT, out=c)
        np.add(c, _N_COARSE // 2, out=c)
        np.take(self._table, c, out=out, mode="clip")
        np.bitwise_and(out, 31, out=c)  # per-score shift
        np.bitwise_and(key, _LOW, out=k)
        np.right_shift(k, c, out=k, casting="unsafe")
        np.right_shift(out, 5, out=out)  # offset of the coarse bin
        np.add(out, k, out=out)
        return out


def profiled_binner(profile: ScoreProfile, n_bins: int) -> Binner:
    """AdaptiveBinner for the profile, or HybridBinner over its bounds when ``n_bins`` is below
    twice the number of coarse bins the range spans (at most 8192; only tiny n_bins)."""
    try:
        return AdaptiveBinner(profile, n_bins)
    except ValueError as e:
        if "too small" not in str(e):
            raise
        return HybridBinner(*profile.bounds, n_bins)


def _f64_key(v: float) -> int:
    (i,) = struct.unpack("<q", struct.pack("<d", v + 0.0))
    return i if i >= 0 else -(i & 0x7FFFFFFFFFFFFFFF)


def _f64_from_key(k: int) -> float:
    i = k if k >= 0 else (-k) | -0x8000000000000000
    (v,) = struct.unpack("<d", struct.pack("<q", i))
    return v
