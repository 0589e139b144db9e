"""Pixel accuracy at a caller-chosen threshold."""

from __future__ import annotations

import math

import numpy as np

from readl.evaluation.metrics._validate import (
    as_bool_chunk,
    as_labels,
    as_scores,
    check_finite_number,
    finite_range,
    paired_chunks,
    warn_undefined,
)

_CHUNK = 1 << 22


def pixel_accuracy(maps: object, masks: object, threshold: float) -> float:
    """Fraction of pixels whose prediction ``map >= threshold`` equals the mask, pooled over images.

    The caller picks the threshold. Project default: the F1-max threshold of the pooled pixels,
    ``BinaryCurveAccumulator.f1_max().threshold`` (a bin edge, so this function then reproduces
    the histogram's confusion counts exactly); 0.5 for maps already in [0, 1] is the alternative.

    Args:
        maps: (N, H, W) (any shape works) real dtype, finite.
        masks: same shape, bool or integer 0/1 (1 = anomalous).
        threshold: finite float.
    Returns: float in [0, 1]; NaN with MetricUndefinedWarning for empty input.
    Raises: ValueError for NaN/inf maps (naming the count), masks not 0/1, shape mismatch, or a
        non-finite threshold.
    Memory: works in chunks of 4M pixels (~5 MiB of temporaries).
    """
    s = as_scores("maps", maps)
    y = as_labels("masks", masks, s.shape)
    t = np.float64(check_finite_number("threshold", threshold))  # compare in float64, not float32
    if finite_range("maps", s) is None:
        warn_undefined("pixel accuracy", "no pixels")
        return math.nan
    correct = 0
    for sc, yc in paired_chunks(s, y, _CHUNK):
        pred = sc >= t
        correct += int(np.count_nonzero(pred == as_bool_chunk(yc)))
    return correct / s.size
