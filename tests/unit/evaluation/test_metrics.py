"""Tests for readl.evaluation.metrics: AUROC/AUPR (exact and histogram), F1-max, accuracy, AUPRO."""

from __future__ import annotations

import math
import tracemalloc
import warnings

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve, roc_auc_score

from readl.evaluation.metrics import (
    BinaryCurveAccumulator,
    MetricUndefinedWarning,
    ProCurveAccumulator,
    ScoreProfile,
    aupro,
    auroc_aupr,
    f1_max,
    image_accuracy,
    integrate_pro,
    pixel_accuracy,
    pro_curve,
)
from readl.evaluation.metrics._binning import HybridBinner


def _sk(y, s):
    y, s = np.ravel(y), np.ravel(s)
    return roc_auc_score(y, s), average_precision_score(y, s)


def _hist(s, y, n_bins=1 << 20):
    """Two-pass binned path: ScoreProfile + adaptive bins."""
    return auroc_aupr(s, y, exact=False, n_bins=n_bins)


def _one_pass(s, y, n_bins=1 << 20):
    """One-pass binned path: fixed hybrid linear/log bins over [min, max]."""
    acc = BinaryCurveAccumulator(float(np.min(s)), float(np.max(s)), n_bins=n_bins)
    acc.update(s, y)
    return acc.compute()


def _continuous(n, rng, pos=0.05):
    y = rng.random(n) < pos
    return np.where(y, rng.normal(0.6, 0.15, n), rng.normal(0.4, 0.15, n)), y


# --- AUROC / AUPR vs scikit-learn -------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_continuous_vs_sklearn(dtype):
    rng = np.random.default_rng(0)
    s, y = _continuous(200_000, rng)
    s = s.astype(dtype)
    ra, rp = _sk(y, s)
    ex = auroc_aupr(s, y, exact=True)
    assert abs(ex.auroc - ra) < 1e-12 and abs(ex.aupr - rp) < 1e-12
    assert ex.auroc_error_bound == 0.0 and (ex.n_pos, ex.n_neg) == (y.sum(), (~y).sum())
    h = _hist(s, y)
    assert abs(h.auroc - ra) <= 1e-5 and abs(h.aupr - rp) <= 1e-5
    assert abs(h.auroc - ra) <= h.auroc_error_bound + 1e-12


@pytest.mark.parametrize(
    "make",
    [
        lambda r, y: np.round(r.random(y.size) * 0.7 + 0.3 * y, 1),  # steps of 0.1
        lambda r, y: r.integers(0, 40, y.size) + 3 * y,  # integers
        lambda r, y: np.round(r.normal(0, 1, y.size) + y, 1) - 0.0,  # negatives, -0.0 and 0.0
        lambda r, y: np.where(r.random(y.size) < 0.5, -0.0, 0.0) + y * (r.random(y.size) < 0.5),
    ],
    ids=["round0.1", "integers", "signed", "signed-zeros"],
)
def test_ties_equal_sklearn_exactly(make):
    """Few distinct values -> one value per bin -> histogram == sklearn (tie groups) to 1e-12."""
    rng = np.random.default_rng(1)
    y = rng.random(50_000) < 0.2
    s = make(rng, y)
    ra, rp = _sk(y, s)
    s32 = s.astype(np.float32)
    for r in (_hist(s, y), _hist(s32, y), _one_pass(s, y), _one_pass(s32, y), auroc_aupr(s, y, exact=True)):
        assert abs(r.auroc - ra) < 1e-12 and abs(r.aupr - rp) < 1e-12


def _skewed_cases(n, rng):
    y = rng.random(n) < 0.03
    expo = np.where(y, rng.exponential(0.05, n), rng.exponential(0.01, n))
    yield "exp+pareto", expo + (rng.random(n) < 1e-3) * rng.pareto(1.0, n), y
    yield "lognormal", np.where(y, rng.lognormal(-1.5, 1.5, n), rng.lognormal(-3, 1.5, n)), y
    sink = np.where(y, np.abs(rng.normal(0, 3e-4, n)), np.abs(rng.normal(0, 1e-4, n)))
    sink[:5] = 100.0  # a few huge spikes stretch the range (attention sinks)
    yield "sink", sink, y


def test_skewed_vs_sklearn():
    """Heavy tails / outliers: a linear 2**20-bin histogram is off by up to ~0.25 here. Two-pass
    adaptive bins: AP errors ~1e-6; one-pass hybrid bins: AUROC fine, AP up to ~2e-5 ("sink")."""
    rng = np.random.default_rng(2)
    for name, s, y in _skewed_cases(300_000, rng):
        s = s.astype(np.float32)
        ra, rp = _sk(y, s)
        h = _hist(s, y)
        assert abs(h.auroc - ra) <= 1e-6 and abs(h.aupr - rp) <= 5e-6, name
        o = _one_pass(s, y)
        assert abs(o.auroc - ra) <= 1e-6 and abs(o.aupr - rp) <= 5e-5, name
        assert abs(h.auroc - ra) <= h.auroc_error_bound and abs(o.auroc - ra) <= o.auroc_error_bound


def test_tiny_inputs():
    y = np.array([0, 1])
    assert auroc_aupr([0.1, 0.9], y).auroc == 1.0 and _hist([0.1, 0.9], y).auroc == 1.0
    assert _hist([0.9, 0.1], y).auroc == 0.0 and _hist([0.5, 0.5], y).auroc == 0.5
    s, y = np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])  # sklearn's doc example
    assert auroc_aupr(s, y).auroc == pytest.approx(0.75, abs=1e-12)
    assert auroc_aupr(s, y).aupr == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert _hist(s, y).aupr == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert _hist(s, y).auroc == pytest.approx(0.75, abs=1e-12)
    r = _hist(s, y, n_bins=4)  # coarse bins: ties, but within the reported bound
    assert abs(r.auroc - 0.75) <= r.auroc_error_bound
    s1 = np.array([[3.0]])
    with pytest.warns(MetricUndefinedWarning):
        assert math.isnan(_hist(s1, np.array([[1]])).auroc)


@pytest.mark.parametrize("value", [0, 1])
@pytest.mark.parametrize("exact", [True, False])
def test_one_class_is_nan_with_warning(value, exact):
    s = np.random.default_rng(3).random(100)
    y = np.full(100, value, dtype=bool)
    with pytest.warns(MetricUndefinedWarning, match="no (positive|negative) samples"):
        r = auroc_aupr(s, y, exact=exact)
    assert math.isnan(r.auroc) and math.isnan(r.aupr)
    assert (r.n_pos, r.n_neg) == ((100, 0) if value else (0, 100))


def test_empty_is_nan_with_warning():
    with pytest.warns(MetricUndefinedWarning, match="no samples"):
        assert math.isnan(auroc_aupr(np.zeros(0), np.zeros(0, bool)).auroc)
    acc = BinaryCurveAccumulator(0, 1)
    with pytest.warns(MetricUndefinedWarning):
        assert math.isnan(acc.compute().aupr)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_raise_with_count(bad):
    s = np.random.default_rng(4).random((4, 8, 8)).astype(np.float32)
    s[0, 0, :3] = bad
    y = np.zeros(s.shape, bool)
    y[1] = True
    for call in (
        lambda: auroc_aupr(s, y),
        lambda: auroc_aupr(s, y, exact=False),
        lambda: BinaryCurveAccumulator(0, 1).update(s, y),
        lambda: ScoreProfile().update(s),
        lambda: f1_max(s, y),
        lambda: pixel_accuracy(s, y, 0.5),
        lambda: aupro(s, y),
    ):
        with pytest.raises(ValueError, match=r"\b3 non-finite"):
            call()


def test_label_validation():
    s = np.linspace(0, 1, 10)
    with pytest.raises(ValueError, match="bool or integer"):
        auroc_aupr(s, (s > 0.5).astype(np.float32))  # float masks: binarise first
    with pytest.raises(ValueError, match="2 values are not"):
        auroc_aupr(s, np.array([0, 1, 2, 0, 1, 0, -1, 0, 1, 0]))
    with pytest.raises(ValueError, match="shape"):
        auroc_aupr(s, np.zeros(9, bool))
    with pytest.raises(ValueError, match="real numbers"):
        auroc_aupr(s.astype(complex), np.zeros(10, bool))
    ints = np.array([0, 0, 0, 1, 0, 1, 1, 0, 1, 1], dtype=np.int64)
    assert auroc_aupr(s, ints).auroc == auroc_aupr(s, ints.astype(bool)).auroc
    assert _hist(s, ints.astype(np.uint8)).auroc == _hist(s, ints.astype(bool)).auroc


# --- streaming ------------------------------------------------------------------------------


def test_streaming_equals_single_call():
    rng = np.random.default_rng(5)
    maps = rng.random((20, 32, 32)).astype(np.float32)
    masks = rng.random(maps.shape) < 0.1
    maps += masks * 0.3 * rng.random(maps.shape).astype(np.float32)
    lo, hi = float(maps.min()), float(maps.max())
    one = BinaryCurveAccumulator(lo, hi)
    one.update(maps, masks)
    # per map, tiny chunk size (buffer flushes inside and across updates), int labels
    many = BinaryCurveAccumulator(lo, hi, chunk_size=1000)
    for m, k in zip(maps, masks, strict=True):
        many.update(m, k.astype(np.int32))
    for a, b in zip(one.counts(), many.counts(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert one.compute() == many.compute()
    prof = ScoreProfile()  # two-pass API, per map
    for m in maps:
        prof.update(m)
    two = BinaryCurveAccumulator.from_profile(prof)
    for m, k in zip(maps, masks, strict=True):
        two.update(m, k)
    assert two.compute() == _hist(maps, masks)
    # non-contiguous views
    strided = BinaryCurveAccumulator(lo, hi)
    strided.update(maps[:, ::2], masks[:, ::2])
    strided.update(maps[:, 1::2], masks[:, 1::2])
    assert strided.compute() == one.compute()
    ra, rp = _sk(masks, maps)
    r = one.compute()
    assert abs(r.auroc - ra) <= 1e-5 and abs(r.aupr - rp) <= 1e-5


def test_two_pass_range_and_out_of_range():
    rng = np.random.default_rng(6)
    batches = [rng.normal(size=(5, 16)) for _ in range(3)]
    labels = [rng.random((5, 16)) < 0.3 for _ in range(3)]
    sr = ScoreProfile()
    for b in batches:
        sr.update(b)
    acc = BinaryCurveAccumulator(*sr.bounds)
    for b, y in zip(batches, labels, strict=True):
        acc.update(b, y)
    ra, rp = _sk(np.concatenate(labels), np.concatenate(batches))
    assert abs(acc.compute().auroc - ra) < 1e-12 and abs(acc.compute().aupr - rp) < 1e-12
    with pytest.raises(ValueError, match="saw no scores"):
        _ = ScoreProfile().bounds
    acc = BinaryCurveAccumulator(0.0, 1.0)
    with pytest.raises(ValueError, match=r"^2 scores lie outside"):
        acc.update(np.array([0.5, 1.5, -0.1]), np.array([0, 1, 1]))
    assert acc.n_pos + acc.n_neg == 0  # a rejected batch adds nothing
    f32 = np.float32(0.1)  # float32 0.1 > float64 0.1: in range [0.1, 1] ...
    BinaryCurveAccumulator(0.1, 1.0).update(np.array([f32]), np.array([1]))
    with pytest.raises(ValueError, match="outside"):  # ... float32 0.099999994 is not
        BinaryCurveAccumulator(float(f32), 1.0).update(np.array([0.1]), np.array([1]))
    with pytest.raises(ValueError, match="lo <= hi"):
        BinaryCurveAccumulator(1.0, 0.0)
    with pytest.raises(ValueError, match="n_bins"):
        BinaryCurveAccumulator(0.0, 1.0, n_bins=2)


def test_profile_bins_budget_and_fallback():
    rng = np.random.default_rng(13)
    s = rng.lognormal(-3, 2, 100_000).astype(np.float32)
    prof = ScoreProfile()
    prof.update(s)
    for n_bins in (1 << 20, 1 << 14, 1000, 16):  # 16: too few for adaptive -> hybrid fallback
        acc = BinaryCurveAccumulator.from_profile(prof, n_bins=n_bins)
        assert acc.n_bins <= n_bins
        k = acc._binner.index_of(np.sort(s))
        assert k.min() >= 0 and k.max() < acc.n_bins and np.all(np.diff(k) >= 0)
    with pytest.raises(ValueError, match="saw no scores"):
        BinaryCurveAccumulator.from_profile(ScoreProfile())


def test_constant_scores_single_bin():
    y = np.array([0, 1, 1, 0, 1])
    r = auroc_aupr(np.full(5, 0.7), y, exact=False)
    assert r.auroc == 0.5 and r.aupr == pytest.approx(0.6)


def test_dtype_invariance_of_bins():
    """float32 scores and the same values as float64 land in the same bins."""
    rng = np.random.default_rng(7)
    s32 = np.r_[rng.random(5000).astype(np.float32), -rng.random(5000).astype(np.float32), 0.0, -0.0]
    for lo, hi in ((float(s32.min()), float(s32.max())), (0.0, 1.0)):
        s = s32 if lo < 0 else np.abs(s32)
        b = HybridBinner(lo, hi, 1 << 12)
        np.testing.assert_array_equal(b.index_of(s), b.index_of(s.astype(np.float64)))


def test_binner_monotone_and_lower_edge():
    rng = np.random.default_rng(8)
    for lo, hi, n_bins in ((0.0, 1.0, 1 << 10), (-3.0, 5.0, 1 << 12), (1e-9, 1e3, 1 << 16), (2.0, 2.0, 16)):
        logs = np.exp(rng.uniform(np.log(max(lo, 1e-12)), np.log(hi), 3000))
        x = np.sort(np.r_[lo, hi, rng.uniform(lo, hi, 3000), logs])
        x = x[(x >= lo) & (x <= hi)]
        k = HybridBinner(lo, hi, n_bins).index_of(x)
        assert k.min() >= 0 and k.max() <= n_bins - 1 and np.all(np.diff(k) >= 0)
        b = HybridBinner(lo, hi, n_bins)
        for j in np.unique(k)[:: max(1, np.unique(k).size // 20)]:
            t = b.lower_edge(int(j))
            np.testing.assert_array_equal(x >= t, k >= j)


def test_memory_stays_small():
    """Peak extra memory of the binned path, ~ 1 B/score index buffer + 48 B/bin + ~2 MB, stays
    well below the float32 score array (a float64 copy alone would be 2x)."""
    s = np.random.default_rng(9).random(1 << 22, dtype=np.float32)
    y = s > 0.9
    _hist(s[:1000], y[:1000], n_bins=1 << 16)  # warm up imports / caches
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        _hist(s, y, n_bins=1 << 16)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 0.6 * s.nbytes, peak


# --- F1 / accuracy ----------------------------------------------------------------------------


def _f1_brute(y, s):
    p, r, _ = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return f.max()


@pytest.mark.parametrize("seed", range(5))
def test_f1_max_vs_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    y = rng.random(n) < rng.uniform(0.1, 0.9)
    y[0] = True
    s = rng.normal(size=n) + y * rng.uniform(0, 2)
    if seed % 2:
        s = np.round(s, 1)  # ties
    res = f1_max(s, y)
    assert res.f1 == pytest.approx(_f1_brute(y, s), abs=1e-12)
    assert f1_score(y, s >= res.threshold) == pytest.approx(res.f1, abs=1e-12)


def test_f1_max_edge_cases():
    assert f1_max([0.2, 0.9], [0, 1]) == (1.0, 0.9)
    assert f1_max([0.5, 0.5, 0.5], [1, 1, 1]).f1 == 1.0
    with pytest.warns(MetricUndefinedWarning):
        r = f1_max([0.1, 0.2], [0, 0])
    assert math.isnan(r.f1) and math.isnan(r.threshold)


def test_accumulator_f1_threshold_reproduces_counts():
    rng = np.random.default_rng(10)
    s, y = _continuous(100_000, rng, pos=0.1)
    s = s.astype(np.float32)
    prof = ScoreProfile()
    prof.update(s)
    coarse = (  # coarse bins on purpose: thresholds must still reproduce the binned counts
        BinaryCurveAccumulator(float(s.min()), float(s.max()), n_bins=1 << 12),
        BinaryCurveAccumulator.from_profile(prof, n_bins=1 << 14),
    )
    for acc in coarse:
        acc.update(s, y)
        res = acc.f1_max()
        pred = s >= res.threshold
        assert f1_score(y, pred) == pytest.approx(res.f1, abs=1e-12)
        assert pixel_accuracy(s, y, res.threshold) == pytest.approx(np.mean(pred == y), abs=1e-15)
        assert abs(res.f1 - _f1_brute(y, s)) < 2e-3  # near the exact optimum
    fine = BinaryCurveAccumulator(float(s.min()), float(s.max()))
    fine.update(s, y)
    assert abs(fine.f1_max().f1 - f1_max(s, y).f1) < 1e-5


def test_image_accuracy():
    assert image_accuracy([1, 0, 1, 1], [1, 0, 0, 1]) == 0.75
    assert image_accuracy(np.array([True, False]), np.array([1, 0], dtype=np.uint8)) == 1.0
    with pytest.raises(ValueError, match="0 or 1"):
        image_accuracy([2, 0], [1, 0])
    with pytest.raises(ValueError, match="shape"):
        image_accuracy([1, 0, 1], [1, 0])
    with pytest.warns(MetricUndefinedWarning):
        assert math.isnan(image_accuracy([], []))


def test_pixel_accuracy():
    maps = np.array([[[0.1, 0.6], [0.5, 0.9]]], dtype=np.float32)
    masks = np.array([[[0, 1], [0, 1]]], dtype=bool)
    assert pixel_accuracy(maps, masks, 0.5) == 0.75  # 0.5 >= 0.5 predicted anomalous
    assert pixel_accuracy(maps, masks, 0.55) == 1.0
    # threshold compared in float64: float32(0.1) = 0.10000000149 >= 0.1000000001
    assert pixel_accuracy(np.array([np.float32(0.1)]), np.array([True]), 0.1000000001) == 1.0
    assert pixel_accuracy(np.array([np.float32(0.1)]), np.array([True]), 0.1000000015) == 0.0
    with pytest.raises(ValueError, match="finite"):
        pixel_accuracy(maps, masks, float("nan"))


# --- AUPRO ------------------------------------------------------------------------------------


def _hand_case():
    """2 images 4x4. Image 0: one 8-connected region {(0,0),(1,1)} (two regions if
    4-connected); image 1: region {(3,3)}. 29 normal pixels, all 0 except (0,3)=0.8, (0,0)=0.6
    in image 1. Region pixels: 0.9, 0.5 and 0.7."""
    maps = np.zeros((2, 4, 4))
    masks = np.zeros((2, 4, 4), bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[1, 3, 3] = True
    maps[0, 0, 0], maps[0, 1, 1], maps[1, 3, 3] = 0.9, 0.5, 0.7
    maps[0, 0, 3], maps[1, 0, 0] = 0.8, 0.6
    return maps, masks


def test_aupro_hand_case():
    maps, masks = _hand_case()
    fprs, pros = pro_curve(maps, masks)
    # t=0.9: PRO (1/2 + 0)/2; 0.8: 1 FP; 0.7: region 2 found; 0.6: 2 FP; 0.5: region 1 complete
    np.testing.assert_allclose(fprs, [0, 0, 1 / 29, 1 / 29, 2 / 29, 2 / 29, 1, 1])
    np.testing.assert_allclose(pros, [0, 0.25, 0.25, 0.75, 0.75, 1, 1, 1])
    # area to 0.3: 0.25/29 + 0.75/29 + (0.3 - 2/29) * 1 = 0.3 - 1/29
    expected = (0.3 - 1 / 29) / 0.3
    assert aupro(maps, masks) == pytest.approx(expected, abs=1e-12)
    assert aupro(maps, masks, n_bins=1 << 10) == pytest.approx(expected, abs=1e-12)
    assert aupro(maps, masks.astype(np.uint8), fpr_limit=1.0) == pytest.approx(1 - 1 / 29 + 0.0, abs=1e-12)


def test_aupro_perfect_inverted_and_interpolation():
    maps, masks = _hand_case()
    perfect = masks.astype(np.float32)
    assert aupro(perfect, masks) == 1.0 and aupro(perfect, masks, n_bins=1 << 8) == 1.0
    assert aupro(1.0 - perfect, masks) == 0.0 and aupro(1.0 - perfect, masks, n_bins=1 << 8) == 0.0
    x, y = np.array([0, 0.2, 0.5, 1.0]), np.array([0, 0.4, 0.7, 1.0])
    # 0.5*0.4*0.2 + 0.5*(0.4 + 0.5)*0.1, interpolated end point y(0.3) = 0.5
    assert integrate_pro(x, y, 0.3) == pytest.approx((0.04 + 0.045) / 0.3, abs=1e-15)
    assert integrate_pro(x, y, 0.2) == pytest.approx(0.04 / 0.2, abs=1e-15)


def _pro_brute(maps, masks, limit):
    """Direct definition: every distinct score as threshold, count per region; np.interp end."""
    labels = [ndimage.label(m, structure=np.ones((3, 3)))[0] for m in masks]
    regions = [(i, lab == k) for i, lab in enumerate(labels) for k in range(1, lab.max() + 1)]
    normal = ~masks
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        xs.append(np.count_nonzero(pred & normal) / np.count_nonzero(normal))
        ys.append(np.mean([np.count_nonzero(pred[i][r]) / np.count_nonzero(r) for i, r in regions]))
    xs, ys = np.array(xs + [1.0]), np.array(ys + [1.0])
    keep = xs <= limit
    xe, ye = np.r_[xs[keep], limit], np.r_[ys[keep], 0.0]
    j = np.searchsorted(xs, limit, side="right")
    if j < xs.size:  # interpolate the end point
        ye[-1] = ys[j - 1] + (ys[j] - ys[j - 1]) * (limit - xs[j - 1]) / (xs[j] - xs[j - 1])
    else:
        ye[-1] = ys[-1]
    return np.trapezoid(ye, xe) / limit


def test_aupro_random_vs_brute_force_and_histogram():
    rng = np.random.default_rng(11)
    masks = np.zeros((6, 12, 12), bool)
    masks[0, 2:5, 2:5] = masks[0, 8, 8:11] = masks[2, 5:9, 1:3] = masks[3, 0, 0] = masks[3, 1, 1] = True
    maps = np.round(rng.random(masks.shape) + masks * rng.random(masks.shape), 2)  # with ties
    for limit in (0.3, 0.05, 1.0):
        ref = _pro_brute(maps, masks, limit)
        assert aupro(maps, masks, limit) == pytest.approx(ref, abs=1e-12)
        assert aupro(maps, masks, limit, n_bins=1 << 16) == pytest.approx(ref, abs=1e-12)
    big_masks = rng.random((30, 40, 40)) < 0.02
    big_masks = ndimage.binary_dilation(big_masks, np.ones((1, 3, 3)))
    big = (rng.normal(size=big_masks.shape) + big_masks).astype(np.float32)
    exact = aupro(big, big_masks)
    acc = ProCurveAccumulator(float(big.min()), float(big.max()), chunk_size=5000)
    prof = ScoreProfile()
    prof.update(big)
    two = ProCurveAccumulator.from_profile(prof)
    for m, k in zip(big, big_masks, strict=True):
        acc.update(m, k)
        two.update(m[None], k[None])
    assert abs(acc.compute() - exact) < 1e-5 and abs(two.compute() - exact) < 1e-5
    assert two.compute() == aupro(big, big_masks, n_bins=1 << 20)


def test_aupro_undefined_and_errors():
    maps = np.random.default_rng(12).random((2, 4, 4))
    with pytest.warns(MetricUndefinedWarning, match="no anomalous region"):
        assert math.isnan(aupro(maps, np.zeros((2, 4, 4), bool)))
    with pytest.warns(MetricUndefinedWarning, match="no normal pixels"):
        assert math.isnan(aupro(maps, np.ones((2, 4, 4), bool), n_bins=64))
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(maps, maps > 0.5, fpr_limit=0.0)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        aupro(maps[0, 0], maps[0, 0] > 0.5)
    with pytest.raises(ValueError, match="outside"):
        ProCurveAccumulator(0.0, 0.5).update(maps, maps > 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert 0.0 <= aupro(maps[0], maps[0] > 0.7) <= 1.0  # one (H, W) map


def test_accuracy_at_f1_max_matches_pixel_accuracy_at_that_threshold():
    from readl.evaluation.metrics import BinaryCurveAccumulator, pixel_accuracy

    rng = np.random.default_rng(7)
    masks = rng.random((6, 16, 16)) < 0.1
    maps = np.where(masks, rng.normal(0.7, 0.2, masks.shape), rng.normal(0.3, 0.2, masks.shape)).astype(np.float32)
    acc = BinaryCurveAccumulator(float(maps.min()), float(maps.max()))
    acc.update(maps, masks)
    thr = acc.f1_max().threshold
    assert acc.accuracy_at_f1_max() == pytest.approx(pixel_accuracy(maps, masks, thr), abs=1e-12)
    assert 0.5 < acc.accuracy_at_f1_max() < 1.0


def test_the_dvc_headline_is_flat_short_and_equal_to_the_record():
    from readl.evaluation.report import headline_metrics

    ds = {"image": {"AUROC": 0.8, "AUROC_ci": [0.7, 0.9]}, "pixel": {"AUROC": float("nan"), "AUROC_ci": [0.1, 0.2]}}
    record = {
        "n_images": 24,
        "format_rate": 0.5,
        "image": {"AUROC": 0.8, "AUPR": 0.7, "F1_max": 0.6, "ACC": 0.5},
        "pixel": {"AUROC": 0.9, "AUPRO": 0.3},
        "reasoning": {"ROUGE_L": 0.2, "SBERT": 0.4, "n": 3},
        "datasets": {"mvtec_ad": ds, "synthetic": ds},
        "bootstrap": {"resamples": list(range(1000))},
    }
    flat = headline_metrics(record)
    assert all(isinstance(v, (int, float, type(None))) for v in flat.values()) and len(flat) <= 40
    assert flat["image.AUROC"] == 0.8 and flat["pixel.AUPRO"] == 0.3 and flat["mvtec_ad.image.AUROC"] == 0.8
    assert flat["synthetic.pixel.AUROC"] is None and flat["n_images"] == 24 and flat["reasoning.SBERT"] == 0.4
