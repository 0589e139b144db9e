"""Image-level F1-max (exact) and accuracy of binary predictions."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from readl.evaluation.metrics import _counts
from readl.evaluation.metrics._validate import (
    as_bool_chunk,
    as_labels,
    as_scores,
    finite_range,
    warn_undefined,
)


class F1Result(NamedTuple):
    """Best F1 and the threshold that reaches it (predict anomalous when score >= threshold).

    f1 in [0, 1]; both NaN when undefined (no positive samples).
    """

    f1: float
    threshold: float


def f1_max(scores: object, labels: object) -> F1Result:
    """Maximum F1 over all thresholds, exact (sorts the scores; meant for image-level counts).

    F1 = 2 TP / (TP + FP + P) at each distinct score taken as threshold (predict anomalous when
    score >= threshold); equal scores are decided together. Same values as the maximum of
    2 P R / (P + R) over scikit-learn ``precision_recall_curve``. The highest such threshold wins
    ties.

    Args: scores: any shape, real dtype, finite. labels: same shape, bool or integer 0/1.
    Returns: F1Result(f1, threshold); NaN/NaN with MetricUndefinedWarning if no label is 1
        (or the input is empty).
    Raises: ValueError for NaN/inf scores (naming the count), labels not 0/1, shape mismatch.
    """
    s = as_scores("scores", scores)
    y = as_labels("labels", labels, s.shape)
    finite_range("scores", s)
    values, pos, neg = _counts.exact_groups(s.reshape(-1), as_bool_chunk(y.reshape(-1)))
    if pos.sum() == 0:
        warn_undefined("F1", "no positive samples")
        return F1Result(math.nan, math.nan)
    f1, j = _counts.f1_best(pos.astype(np.float64), neg.astype(np.float64))
    return F1Result(f1, float(values[j]))


def image_accuracy(predictions: object, labels: object) -> float:
    """Fraction of images whose binary prediction equals the label (image ACC / answer accuracy).

    Args: predictions, labels: same shape, bool or integer 0/1 (1 = anomalous).
    Returns: float in [0, 1]; NaN with MetricUndefinedWarning for empty input.
    Raises: ValueError if either is not 0/1 or the shapes differ.
    """
    y = np.asarray(labels)
    p = as_labels("predictions", predictions, y.shape)
    y = as_labels("labels", y, y.shape)
    if y.size == 0:
        warn_undefined("accuracy", "no samples")
        return math.nan
    return float(np.count_nonzero(as_bool_chunk(p) == as_bool_chunk(y)) / y.size)
