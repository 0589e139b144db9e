"""Threshold rules in readl.localization.thresholds (max curvature, median, fixed)."""

import dataclasses

import numpy as np
import pytest

from readl.localization.thresholds import (
    Threshold,
    find_threshold,
    fixed,
    max_curvature,
    median,
)


def two_segments(n, bend, slow=0.1, fast=2.0):
    """Convex increasing piecewise-linear curve with its bend at index ``bend``."""
    i = np.arange(n, dtype=float)
    return np.where(i <= bend, slow * i, slow * bend + fast * (i - bend))


@pytest.mark.parametrize("n, bend", [(100, 10), (100, 37), (100, 50), (100, 80), (7, 3), (250, 201)])
def test_finds_bend_of_two_segment_curve_exactly(n, bend):
    s = two_segments(n, bend)
    t = max_curvature(s)
    assert (t.index, t.value, t.n, t.fallback, t.rule) == (bend, s[bend], n, None, "max_curvature")
    shuffled = np.random.default_rng(bend).permutation(s)
    assert max_curvature(shuffled) == t


def test_plateaus_and_ties():
    s = np.array([0, 0, 0, 0, 0, 0, 1, 5, 9, 13], dtype=float)  # d = x - y peaks at i = 6
    t = max_curvature(s)
    assert t.index == 6 and t.value == 1.0
    t = max_curvature(np.array([3.0, 0.0, 1.0, 0.0]))  # d = [0, 1/3, 1/3, 0]: first max wins
    assert t.index == 1 and t.value == 0.0


@pytest.mark.parametrize("scale, shift", [(3.7, -5.0), (1e-4, 0.0), (250.0, 1e3), (1.0, 0.123)])
def test_invariant_to_scaling_and_shifting(scale, shift):
    rng = np.random.default_rng(1)
    s = np.exp(4 * rng.random(300))
    t = max_curvature(s)
    u = max_curvature(scale * s + shift)
    assert t.fallback is None and u.index == t.index
    assert u.value == pytest.approx(scale * t.value + shift, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("s", [[], [2.0], [1.0, 5.0]])
def test_falls_back_when_too_few_scores(s):
    t = max_curvature(np.array(s))
    assert t.fallback == f"fewer than 3 scores (n={len(s)})"
    assert t.index is None and t.rule == "max_curvature"
    assert t.value == (np.median(s) if s else 0.0)


@pytest.mark.parametrize(
    "s, reason",
    [
        (np.full(10, 0.4), "flat curve"),
        (np.linspace(0.0, 3.0, 50), "no knee stands out"),
    ],
)
def test_falls_back_on_flat_and_straight(s, reason):
    t = max_curvature(np.random.default_rng(0).permutation(s))
    assert t.fallback is not None and t.fallback.startswith(reason)
    assert t.value == pytest.approx(np.median(s)) and t.index is None


@pytest.mark.parametrize(
    "s",
    [
        two_segments(200, 60),
        two_segments(200, 140, slow=0.5, fast=3.0),
        two_segments(500, 333),
        np.exp(np.linspace(0, 5, 200)),
        np.exp(np.linspace(0, 10, 500)),
        np.linspace(0, 1, 300) ** 6,
    ],
    ids=["pl60", "pl140", "pl333", "exp5", "exp10", "pow6"],
)
def test_agrees_with_kneed(s):
    kneed = pytest.importorskip("kneed")
    n = len(s)
    ref = kneed.KneeLocator(np.arange(n), np.sort(s), curve="convex", direction="increasing").knee
    assert ref is not None
    assert abs(max_curvature(s).index - ref) <= 0.01 * n


@pytest.mark.parametrize(
    "s",
    [np.sqrt(np.linspace(0.0, 1.0, 200)), np.log1p(np.linspace(0, 50, 300)), 1.0 - np.exp(-np.linspace(0, 6, 200))],
    ids=["sqrt", "log", "1-exp"],
)
def test_a_concave_curve_gets_its_knee_as_kneed_finds_it(s):
    """Kneedle's concave increasing case (sorted scores rising fast, then flat): a knee, not the median fallback."""
    t = max_curvature(np.random.default_rng(0).permutation(s))
    assert t.fallback is None and t.curve == "concave" and t.value == s[t.index]
    kneed = pytest.importorskip("kneed")
    ref = kneed.KneeLocator(np.arange(len(s)), np.sort(s), curve="concave", direction="increasing").knee
    assert ref is not None and abs(t.index - ref) <= 0.01 * len(s)
    assert max_curvature(np.exp(np.linspace(0, 5, 200))).curve == "convex"


def test_median_and_fixed():
    assert median(np.array([3.0, 1.0, 2.0])) == Threshold(2.0, "median", None, 3, None)
    assert median(np.array([4.0, 1.0, 2.0, 3.0])).value == 2.5
    assert median(np.zeros(0)) == Threshold(0.0, "median", None, 0, "no scores")
    assert fixed(0.3) == Threshold(0.3, "fixed", None, 0, None)
    with pytest.raises(ValueError, match="finite"):
        fixed(float("nan"))


def test_threshold_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        median(np.ones(3)).value = 1.0


def test_find_threshold_dispatch():
    s = two_segments(100, 37)
    assert find_threshold(s, "max_curvature") == max_curvature(s)
    assert find_threshold(s, "median") == median(s)
    assert find_threshold(s, "fixed", 0.25) == Threshold(0.25, "fixed", None, 100, None)
    assert find_threshold(None, "fixed", 0.25).value == 0.25


@pytest.mark.parametrize(
    "args, match",
    [
        ((np.ones(3), "knee"), "unknown threshold rule 'knee'"),
        ((np.ones(3), "fixed"), "needs a value"),
        ((np.ones(3), "median", 0.3), "takes no value"),
        ((None, "median"), "needs scores"),
        ((np.ones((3, 1)), "max_curvature"), "1-D"),
        ((np.array([1.0, np.inf, 2.0]), "median"), "NaN or inf"),
    ],
)
def test_find_threshold_errors(args, match):
    with pytest.raises(ValueError, match=match):
        find_threshold(*args)


def _tied_at_one(seed=0):
    """100 normalised S_I^ of one image: 60 tied at 1 (one-region maps), the most diffuse token at 0, 29 diffuse
    in [0.4, 0.5), 10 concentrated in [0.85, 0.95). Sorted, the curve lies above its chord (concave): its knee,
    like the median, is 1.0, and no score is strictly above it."""
    rng = np.random.default_rng(seed)
    return rng.permutation(np.r_[np.ones(60), 0.0, rng.uniform(0.4, 0.5, 29), rng.uniform(0.85, 0.95, 10)])


@pytest.mark.parametrize("rule", ["max_curvature", "median"])
def test_a_tied_top_block_keeps_the_untied_concentrated_tokens(rule):
    s = _tied_at_one()
    t = find_threshold(s, rule)
    kept = s > t.value
    assert kept[s == 1.0].all() and t.top_tied == 60
    assert kept[(s >= 0.85) & (s < 1.0)].all()  # the untied concentrated tokens
    if rule == "max_curvature":  # the 40 untied scores (0, then the diffuse block from 0.4) are concave: the
        # knee is where the curve flattens, right after the lone 0 (Kneedle, concave increasing)
        assert t.fallback is None and t.curve == "concave" and t.index == 1 and t.value == np.sort(s)[1]
        assert kept.sum() == 98
    # the rule as written (ties="strict"): tau = 1.0 and no score is strictly above it
    strict = find_threshold(s, rule, ties="strict")
    assert strict.value == 1.0 and not (s > strict.value).any() and strict.top_tied == 0


@pytest.mark.parametrize("rule", ["max_curvature", "median"])
def test_all_scores_tied_keeps_them_all(rule):
    t = find_threshold(np.ones(5), rule)
    assert t.top_tied == 5 and (np.ones(5) > t.value).all() and t.value < 1.0


def test_tie_rule_leaves_working_rules_alone():
    s = two_segments(100, 37)
    assert find_threshold(s, "max_curvature") == max_curvature(s)  # top_tied == 0: nothing to repair
    s = np.r_[np.zeros(10), np.ones(5)]  # a tie at the top, but the median (0) already keeps the 5
    t = find_threshold(s, "median")
    assert t.value == 0.0 and t.top_tied == 0
    with pytest.raises(ValueError, match="ties"):
        find_threshold(s, "median", ties="loose")


# --- one spec, one resolver (issue 13, item 2) -------------------------------------------------------------------
def test_threshold_spec_validates_and_coerces():
    from readl.localization.thresholds import ThresholdSpec

    assert ThresholdSpec.of(0.25) == ThresholdSpec("fixed", 0.25) and ThresholdSpec.of(1) == ThresholdSpec("fixed", 1.0)
    assert ThresholdSpec.of("median") == ThresholdSpec("median")
    assert ThresholdSpec("fixed", 0.25).label == 0.25 and ThresholdSpec("max_curvature").label == "max_curvature"
    with pytest.raises(ValueError, match="needs a value"):
        ThresholdSpec("fixed")
    with pytest.raises(ValueError, match="finite"):
        ThresholdSpec("fixed", float("nan"))
    with pytest.raises(ValueError, match="takes no value"):
        ThresholdSpec("median", 0.3)
    with pytest.raises(ValueError, match="unknown threshold rule"):
        ThresholdSpec.of("mean")


def test_resolve_threshold_is_the_one_rule_for_every_caller():
    from readl.localization.thresholds import ThresholdSpec, resolve_threshold

    s = np.array([0.1, 0.2, 0.4, 0.9])
    assert resolve_threshold(ThresholdSpec("median"), s) == find_threshold(s, "median")
    assert resolve_threshold("max_curvature", s, ties="strict") == find_threshold(s, "max_curvature", ties="strict")
    got = resolve_threshold(ThresholdSpec("fixed", 0.3), s)
    assert (got.value, got.rule, got.n) == (0.3, "fixed", 4)
    assert resolve_threshold(0.3, None).value == 0.3  # a fixed value needs no scores
    for rule in ("median", "max_curvature"):  # no tokens: 0.0, said so (not the rule's own n < 3 fallback)
        assert resolve_threshold(rule, np.zeros(0)) == Threshold(0.0, rule, None, 0, "no scores")
    with pytest.raises(ValueError, match="needs scores"):
        resolve_threshold("median", None)
    with pytest.raises(ValueError, match="ties"):
        resolve_threshold("median", np.zeros(0), ties="loose")


def test_resolve_taus_reads_calibrated_values_or_the_configured_specs(tmp_path):
    from readl.config import LocalizationConfig
    from readl.localization.thresholds import ThresholdPair, ThresholdSpec, resolve_taus

    cfg = LocalizationConfig()
    assert resolve_taus(cfg, None) == ThresholdPair(ThresholdSpec("median"), ThresholdSpec("max_curvature"))
    f = tmp_path / "thresholds.json"
    f.write_text('{"tau_t": {"value": 0.4, "rule": "median"}, "tau_i": {"value": 0.7}}')
    taus = resolve_taus(cfg, f)
    assert taus.tau_t == ThresholdSpec("fixed", 0.4) and taus.tau_i == ThresholdSpec("fixed", 0.7)
    for bad in ('{"tau_t": {"value": 0.4}}', '{"tau_t": {"value": NaN}, "tau_i": {"value": 0.7}}'):
        f.write_text(bad)
        with pytest.raises(ValueError, match=rf"{f.name}: needs finite tau_t.value and tau_i.value"):
            resolve_taus(cfg, f)


def test_params_threshold_is_the_spec_type_and_rejects_bad_keys():
    from readl.config import Params
    from readl.localization.thresholds import ThresholdSpec

    p = Params.model_validate({"localization": {"tau_t": {"rule": "fixed", "value": 0.2}}})
    assert p.localization.tau_t == ThresholdSpec("fixed", 0.2) and p.train.localization.tau_i == ThresholdSpec(
        "max_curvature"
    )
    for bad, match in [
        ({"rule": "median", "vaule": 1}, "vaule"),
        ({"rule": "fixed"}, "needs a value"),
        ({"rule": "median", "value": 0.3}, "takes no value"),
    ]:
        with pytest.raises(ValueError, match=match):
            Params.model_validate({"localization": {"tau_t": bad}})


def test_a_broken_thresholds_file_is_one_clear_error_for_every_reader(tmp_path):
    """thresholds.json is read in one place (readl.localization.thresholds.read_thresholds_file): not JSON, or not a
    JSON object, is a ValueError naming the file and the fix for the ReAL thresholds and the decision alike (the ReAL
    reader used to raise a bare JSONDecodeError)."""
    from readl.config import LocalizationConfig
    from readl.evaluation.decision import read_decision
    from readl.localization.thresholds import resolve_taus

    for text in ("{not json", "[1, 2]"):
        bad = tmp_path / "thresholds.json"
        bad.write_text(text)
        for read in (lambda f: resolve_taus(LocalizationConfig(), f), read_decision):
            with pytest.raises(ValueError, match=r"thresholds.json: .*re-run `readl calibrate`"):
                read(bad)
