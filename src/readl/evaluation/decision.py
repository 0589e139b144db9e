"""The image-level OK/NG decision: ``anomalous`` when the image score P(Yes) >= a threshold fitted on the
calibration split (ours: the paper reports only the accuracy of the Yes/No answer, Sec. 5).

The score is the image score of ``readl evaluate``: P(Yes) (paper Sec. 4.1), or ``FALLBACK_SCORE`` for a
malformed answer (no ``<answer>Yes|No``) under ``evaluate.malformed: fallback``, so the decision of
``readl predict`` and of the served model is the one whose accuracy ``metrics.json`` reports
(``image.ACC_at_threshold``, next to the answer's ``image.ACC``).

Rules (params.yaml ``calibrate.decision``): ``f1_max`` = the threshold of the maximum F1 on the calibration
images; ``false_alarm_rate`` = the lowest threshold at which at most ``calibrate.false_alarm_rate`` of the
normal calibration images are decided ``anomalous`` (the most anomalies caught at that false-alarm budget).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from readl.localization.thresholds import read_thresholds_file

__all__ = [
    "FALLBACK_SCORE",
    "DEFAULT_THRESHOLD",
    "image_score",
    "decide",
    "decision_basis",
    "degenerate_decision",
    "fit_decision_threshold",
    "read_decision",
]

FALLBACK_SCORE = 0.5  # image score of a malformed answer under evaluate.malformed = fallback
DEFAULT_THRESHOLD = 0.5  # without a calibrated threshold: P(Yes) >= 0.5, the answer's own boundary


def image_score(score: float, malformed: bool, policy: str = "fallback") -> float:
    """The image score the decision thresholds: ``FALLBACK_SCORE`` when ``malformed`` and ``policy`` is
    ``fallback``, else ``score`` (P(Yes) in [0, 1])."""
    return FALLBACK_SCORE if (malformed and policy == "fallback") else float(score)


def decide(score: float, threshold: float) -> str:
    """``"anomalous"`` when ``score >= threshold``, else ``"normal"``."""
    return "anomalous" if float(score) >= float(threshold) else "normal"


def decision_basis(score: float, malformed: bool, policy: str, threshold: float, rule: str) -> str:
    """One sentence saying why the decision is what it is (an answer "Yes" with the decision "normal" is not a
    contradiction: the decision thresholds the score, and a malformed answer's score is the fallback 0.5)."""
    used = image_score(score, malformed, policy)
    what = (
        f"no parsable answer: the fallback score {used:.3f} (evaluate.malformed: fallback), not P(Yes) {score:.3f},"
        if used != float(score)
        else f"P(Yes) {used:.3f}"
    )
    return f"{what} {'>=' if used >= threshold else '<'} the threshold {threshold:.3f} ({rule})"


def degenerate_decision(record: dict) -> str | None:
    """A warning when a fitted threshold decides every calibration image alike (TPR = FPR = 1: everything
    anomalous; TPR = FPR = 0: nothing), else None; ``record`` is :func:`fit_decision_threshold`'s result."""
    c = record.get("calib") or {}
    tpr, fpr = c.get("TPR"), c.get("FPR")
    if tpr == 1.0 and fpr == 1.0:
        return (
            f"the decision threshold {record['value']:.4f} ({record['rule']}) flags EVERY calibration image as "
            f"anomalous (TPR = FPR = 1): the model's P(Yes) does not separate the classes on the calibration split"
        )
    if tpr == 0.0 and fpr == 0.0:
        return (
            f"the decision threshold {record['value']:.4f} ({record['rule']}) flags NO calibration image "
            f"(TPR = FPR = 0): the model's P(Yes) does not separate the classes on the calibration split"
        )
    return None


def _rates(scores: np.ndarray, labels: np.ndarray, t: float) -> dict:
    pred = scores >= t
    pos, neg = labels == 1, labels == 0
    tp, fp = int((pred & pos).sum()), int((pred & neg).sum())
    ratio = lambda a, b: a / b if b else math.nan  # noqa: E731
    return {
        "ACC": float(np.mean(pred == pos)) if labels.size else math.nan,
        "TPR": ratio(tp, int(pos.sum())),
        "FPR": ratio(fp, int(neg.sum())),
        "F1": ratio(2 * tp, tp + fp + int(pos.sum())),
    }


def fit_decision_threshold(scores, labels, rule: str = "f1_max", false_alarm_rate: float = 0.05) -> dict:
    """Fit the decision threshold on calibration images.

    Args:
        scores: ``(n,)`` image scores in [0, 1] (see :func:`image_score`).
        labels: ``(n,)`` 0 = normal, 1 = anomalous.
        rule: ``f1_max`` or ``false_alarm_rate`` (module docstring).
        false_alarm_rate: target share of normal images decided anomalous, in (0, 1) (rule ``false_alarm_rate``).

    Returns:
        ``{"value", "rule", "false_alarm_rate" (rule false_alarm_rate only), "fallback", "n_normal",
        "n_anomalous", "calib": {"ACC", "TPR", "FPR", "F1"}}``: ``fallback`` is None, or why the rule could not
        be applied (no anomalous / no normal image) and ``value`` is ``DEFAULT_THRESHOLD``; ``calib`` holds the
        rates at ``value`` on these images (NaN where undefined).

    Raises:
        ValueError: unknown rule, ``scores``/``labels`` of different lengths, or a non-finite score.
    """
    s, y = np.asarray(scores, np.float64).reshape(-1), np.asarray(labels, np.int64).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) differ in length")
    if not np.isfinite(s).all():
        raise ValueError(f"{int((~np.isfinite(s)).sum())} non-finite image score(s)")
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    value, fallback = DEFAULT_THRESHOLD, None
    if rule == "f1_max":
        if n_pos == 0:
            fallback = "no anomalous calibration image"
        else:
            from readl.evaluation.metrics import MetricUndefinedWarning, f1_max

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MetricUndefinedWarning)
                value = float(f1_max(s, y).threshold)
    elif rule == "false_alarm_rate":
        if n_neg == 0:
            fallback = "no normal calibration image"
        else:
            normal = np.sort(s[y == 0])[::-1]  # highest first
            k = int(math.floor(false_alarm_rate * n_neg + 1e-9))  # false alarms allowed
            # any t <= normal[k] flags k + 1 normal images: the lowest t above it keeps k
            value = float(np.nextafter(normal[k], np.inf)) if k < n_neg else float(s.min())
    else:
        raise ValueError(f"calibrate.decision must be 'f1_max' or 'false_alarm_rate', got {rule!r}")
    record = {
        "value": value,
        "rule": rule,
        "fallback": fallback,
        "n_normal": n_neg,
        "n_anomalous": n_pos,
        "calib": _rates(s, y, value),
    }
    if rule == "false_alarm_rate":
        record["false_alarm_rate"] = float(false_alarm_rate)
    return record


def read_decision(thresholds_file: str | Path | None) -> dict:
    """The decision threshold to apply: ``{"value", "rule", "malformed", "source"}``.

    From ``thresholds.json`` (key ``decision``, written by ``readl calibrate``); ``DEFAULT_THRESHOLD`` with
    ``rule`` ``default`` when no file is given or the file predates the decision (``source`` says so and how
    to fix it). ``malformed`` is the ``evaluate.malformed`` policy the threshold was fitted with.

    Raises:
        ValueError: the file is not JSON or its ``decision.value`` is not a number.
    """
    if thresholds_file is None:
        return {
            "value": DEFAULT_THRESHOLD,
            "rule": "default",
            "malformed": "fallback",
            "source": f"default {DEFAULT_THRESHOLD} (no thresholds.json)",
        }
    d = read_thresholds_file(thresholds_file).get("decision")
    if not isinstance(d, dict):
        return {
            "value": DEFAULT_THRESHOLD,
            "rule": "default",
            "malformed": "fallback",
            "source": f"{thresholds_file} has no decision threshold: default {DEFAULT_THRESHOLD} "
            f"(re-run `readl calibrate` to fit one)",
        }
    try:
        value = float(d["value"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{thresholds_file}: decision.value must be a number; re-run `readl calibrate`") from exc
    return {
        "value": value,
        "rule": str(d.get("rule", "unknown")),
        "malformed": str(d.get("malformed", "fallback")),
        "source": str(thresholds_file),
    }
