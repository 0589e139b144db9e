"""The OK/NG decision threshold on P(Yes): F1-max and false-alarm-rate rules, fallbacks, reading thresholds.json."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from readl.evaluation.decision import DEFAULT_THRESHOLD, decide, fit_decision_threshold, image_score, read_decision

SCORES = [0.1, 0.2, 0.3, 0.6, 0.7, 0.9]
LABELS = [0, 0, 1, 0, 1, 1]


def test_f1_max_rule_picks_the_best_threshold_on_the_calibration_images():
    d = fit_decision_threshold(SCORES, LABELS, "f1_max")
    # t=0.3: TP 3, FP 1 -> F1 6/7 (t=0.7: 4/5, t=0.6: 4/6, t=0.2: 6/8)
    assert d["value"] == pytest.approx(0.3) and d["fallback"] is None and d["rule"] == "f1_max"
    assert d["calib"]["F1"] == pytest.approx(6 / 7) and d["calib"]["ACC"] == pytest.approx(5 / 6)
    assert (d["calib"]["TPR"], d["calib"]["FPR"]) == (pytest.approx(1.0), pytest.approx(1 / 3))
    assert (d["n_normal"], d["n_anomalous"]) == (3, 3)


@pytest.mark.parametrize(("rate", "fpr", "tpr"), [(0.2, 0.0, 2 / 3), (0.34, 1 / 3, 1.0), (0.99, 2 / 3, 1.0)])
def test_false_alarm_rule_keeps_the_budget_and_catches_the_most(rate, fpr, tpr):
    d = fit_decision_threshold(SCORES, LABELS, "false_alarm_rate", false_alarm_rate=rate)
    s, y = np.array(SCORES), np.array(LABELS)
    flagged_normals = float(np.mean(s[y == 0] >= d["value"]))
    assert (
        flagged_normals <= rate and d["calib"]["FPR"] == pytest.approx(fpr) and d["calib"]["TPR"] == pytest.approx(tpr)
    )
    # the lowest such threshold: any lower score taken as threshold breaks the budget or catches no more
    lower = [t for t in s if t < d["value"]]
    assert all(np.mean(s[y == 0] >= t) > rate or np.mean(s[y == 1] >= t) == tpr for t in lower)
    assert d["false_alarm_rate"] == rate


def test_one_class_calibration_falls_back_to_the_default_and_says_why():
    d = fit_decision_threshold([0.2, 0.4], [0, 0], "f1_max")
    assert d["value"] == DEFAULT_THRESHOLD and d["fallback"] == "no anomalous calibration image"
    d = fit_decision_threshold([0.2, 0.4], [1, 1], "false_alarm_rate")
    assert d["value"] == DEFAULT_THRESHOLD and d["fallback"] == "no normal calibration image"
    assert math.isnan(d["calib"]["FPR"])
    with pytest.raises(ValueError, match="calibrate.decision"):
        fit_decision_threshold(SCORES, LABELS, "youden")


def test_decide_and_the_malformed_image_score():
    assert decide(0.3, 0.3) == "anomalous" and decide(0.2999, 0.3) == "normal"
    assert image_score(0.9, malformed=True, policy="fallback") == 0.5
    assert image_score(0.9, malformed=True, policy="score") == 0.9 and image_score(0.9, False) == 0.9


def test_read_decision_names_its_source(tmp_path):
    assert read_decision(None)["value"] == DEFAULT_THRESHOLD and "no thresholds.json" in read_decision(None)["source"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"tau_t": {"value": 0.4}, "tau_i": {"value": 0.5}}))
    d = read_decision(old)
    assert d["value"] == DEFAULT_THRESHOLD and d["rule"] == "default" and "re-run `readl calibrate`" in d["source"]
    new = tmp_path / "thresholds.json"
    new.write_text(json.dumps({"decision": {"value": 0.37, "rule": "f1_max", "malformed": "score"}}))
    assert read_decision(new) == {"value": 0.37, "rule": "f1_max", "malformed": "score", "source": str(new)}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"decision": {"value": "high"}}))
    with pytest.raises(ValueError, match="decision.value"):
        read_decision(bad)


def test_a_threshold_that_flags_every_calibration_image_is_called_out():
    """Issue: a calibrated threshold with TPR = FPR = 1.0 (every image anomalous) passed without a word."""
    from readl.evaluation.decision import degenerate_decision

    inverted = fit_decision_threshold([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1], "f1_max")  # P(Yes) higher on normals
    assert (inverted["calib"]["TPR"], inverted["calib"]["FPR"]) == (1.0, 1.0)
    assert "EVERY calibration image" in degenerate_decision(inverted)
    assert degenerate_decision(fit_decision_threshold(SCORES, LABELS, "f1_max")) is None


def test_the_decision_basis_explains_an_answer_that_disagrees_with_the_decision():
    """Issue: answer "Yes" with decision "normal", and a malformed answer with P(Yes) 0.997 decided "normal", had no
    explanation in the record."""
    from readl.evaluation.decision import decision_basis

    assert decision_basis(0.964, False, "fallback", 0.993, "f1_max") == "P(Yes) 0.964 < the threshold 0.993 (f1_max)"
    text = decision_basis(0.997, True, "fallback", 0.7, "f1_max")
    assert "fallback score 0.500" in text and "not P(Yes) 0.997" in text and "< the threshold 0.700" in text
