"""Curve statistics from per-threshold-group counts (internal).

Input: ``pos[k]``, ``neg[k]`` = numbers of positive/negative samples whose score falls in group
``k``; groups in ascending score order (a histogram bin, or one distinct score value). A sample
is predicted positive at group ``k``'s threshold when its group is ``>= k``, so the confusion
counts at that threshold are the cumulative sums from the top. Samples inside one group are ties
(scikit-learn's tie semantics: one ROC point per group, a diagonal ROC segment through it).
"""

from __future__ import annotations

import numpy as np


def nonempty(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop empty groups. Returns (pos, neg, kept group indices); counts as float64 (exact: < 2**53)."""
    keep = np.flatnonzero((pos + neg) > 0)
    return pos[keep].astype(np.float64), neg[keep].astype(np.float64), keep


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Trapezoid area under the ROC curve; each negative scores 1 per positive above it, 1/2 per
    positive tied with it (same group): sum_k neg_k (2 TP_above_k + pos_k) / (2 P N)."""
    tp_above = np.cumsum(pos[::-1])[::-1] - pos  # positives in groups strictly above k
    return float(np.dot(neg, 2.0 * tp_above + pos) / (2.0 * pos.sum() * neg.sum()))


def average_precision(pos: np.ndarray, neg: np.ndarray) -> float:
    """Step-sum AP, sum_k (R_k - R_{k-1}) P_k: each group's positives weighted by the precision at
    that group's threshold (scikit-learn ``average_precision_score``)."""
    tp = np.cumsum(pos[::-1])
    fp = np.cumsum(neg[::-1])
    p = pos[::-1]
    k = p > 0
    return float(np.dot(p[k], tp[k] / (tp[k] + fp[k])) / tp[-1])


def tie_bound(pos: np.ndarray, neg: np.ndarray) -> float:
    """Largest possible |AUROC error| from treating a group's positive/negative pairs as ties:
    sum_k pos_k neg_k / (2 P N) (0 when no group holds both classes)."""
    return float(np.dot(pos, neg) / (2.0 * pos.sum() * neg.sum()))


def f1_best(pos: np.ndarray, neg: np.ndarray) -> tuple[float, int]:
    """Max over thresholds of F1 = 2 TP / (TP + FP + P); returns (f1, group index in the input
    order). First (highest-threshold) group wins ties. Needs P > 0."""
    tp = np.cumsum(pos[::-1])
    fp = np.cumsum(neg[::-1])
    f1 = 2.0 * tp / (tp + fp + tp[-1])
    j = int(np.argmax(f1))
    return float(f1[j]), pos.size - 1 - j


def exact_groups(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group equal scores by sorting. Returns (distinct values ascending, pos counts, neg counts).

    ``scores`` 1-D finite, ``labels`` 1-D bool. O(n log n) time, O(n) memory.
    """
    if scores.size == 0:
        z = np.zeros(0, np.int64)
        return scores[:0], z, z
    order = np.argsort(scores)
    s = scores[order]
    y = labels[order]
    del order
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos = np.add.reduceat(y.astype(np.int64), starts)
    neg = np.diff(np.r_[starts, s.size]) - pos
    return s[starts], pos, neg
