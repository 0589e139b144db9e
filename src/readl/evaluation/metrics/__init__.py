"""Anomaly-detection metrics: pixel/image AUROC and AUPR, F1-max, accuracy, AUPRO.

* AUROC / AUPR follow scikit-learn ``roc_auc_score`` / ``average_precision_score``; AUPR is the
  average precision (step sum), not a trapezoid area. Pixel metrics pool all pixels of all test
  images (normal images included): stream them through ``BinaryCurveAccumulator`` (histogram,
  fixed memory, ~1 s per 1e8 pixels) or call ``auroc_aupr`` on in-memory arrays.
* ``f1_max`` (exact, image level), ``image_accuracy`` (binary predictions),
  ``pixel_accuracy`` (caller's threshold; ``BinaryCurveAccumulator.f1_max`` gives the pooled
  F1-optimal one).
* ``aupro``: MVTec AD reference algorithm (Bergmann et al.), exact or histogram.

Undefined values (one class absent) are NaN with a ``MetricUndefinedWarning``; NaN/inf scores and
non-binary labels raise ValueError.
"""

from readl.evaluation.metrics._binning import ScoreProfile
from readl.evaluation.metrics._validate import MetricUndefinedWarning
from readl.evaluation.metrics.binary_curve import (
    DEFAULT_BINS,
    EXACT_MAX_SIZE,
    BinaryCurveAccumulator,
    CurveMetrics,
    auroc_aupr,
)
from readl.evaluation.metrics.f1 import F1Result, f1_max, image_accuracy
from readl.evaluation.metrics.pixel import pixel_accuracy
from readl.evaluation.metrics.pro import ProCurveAccumulator, aupro, integrate_pro, pro_curve

__all__ = [
    "DEFAULT_BINS",
    "EXACT_MAX_SIZE",
    "BinaryCurveAccumulator",
    "CurveMetrics",
    "F1Result",
    "MetricUndefinedWarning",
    "ProCurveAccumulator",
    "ScoreProfile",
    "aupro",
    "auroc_aupr",
    "f1_max",
    "image_accuracy",
    "integrate_pro",
    "pixel_accuracy",
    "pro_curve",
]
