"""Input checks and the warning shared by the metric modules (internal)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np

CHECK_CHUNK = 1 << 22  # elements per slice when counting bad values (bounds temporaries)


class MetricUndefinedWarning(UserWarning):
    """A metric is undefined for the input (e.g. no positives or no negatives); NaN is returned."""


def warn_undefined(metric: str, why: str) -> None:
    warnings.warn(f"{metric} is undefined: {why}; returning NaN", MetricUndefinedWarning, stacklevel=3)


def as_scores(name: str, x: object) -> np.ndarray:
    """Array of real scores (float/int/bool dtype), any shape; no copy when already an ndarray."""
    a = np.asarray(x)
    if a.dtype.kind not in "fiub":
        raise ValueError(f"{name} must hold real numbers, got dtype {a.dtype}")
    return a


def as_labels(name: str, y: object, shape: tuple[int, ...]) -> np.ndarray:
    """Binary labels: bool, or an integer dtype whose values are all 0 or 1; same shape as scores.

    Raises ValueError for another dtype (binarise float masks first, e.g. ``mask > 0.5``), for a
    value other than 0/1, or for a shape mismatch.
    """
    a = np.asarray(y)
    if a.shape != tuple(shape):
        raise ValueError(f"{name} shape {a.shape} does not match scores shape {tuple(shape)}")
    if a.dtype == np.bool_:
        return a
    if a.size == 0:
        return a.astype(np.bool_)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name} must be bool or integer 0/1, got dtype {a.dtype} (binarise first)")
    if a.size and (a.min() < 0 or a.max() > 1):
        bad = sum(int(np.count_nonzero((c != 0) & (c != 1))) for c in flat_chunks(a))
        raise ValueError(f"{name} must be 0 or 1; {bad} values are not")
    return a


def as_bool_chunk(y: np.ndarray) -> np.ndarray:
    """A validated 0/1 label chunk as bool (a view for 1-byte ints, else a small copy)."""
    if y.dtype == np.bool_:
        return y
    if y.dtype.itemsize == 1:
        return y.view(np.bool_)
    return y != 0


def flat_chunks(a: np.ndarray, size: int = CHECK_CHUNK) -> Iterator[np.ndarray]:
    """1-D pieces of ``a`` (views of C-contiguous arrays; row by row otherwise), each <= size."""
    if a.ndim <= 1 or a.flags.c_contiguous:
        f = a.reshape(-1)
        for i in range(0, f.size, size):
            yield f[i : i + size]
    else:
        for row in a:
            yield from flat_chunks(row, size)


def paired_chunks(a: np.ndarray, b: np.ndarray, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Aligned 1-D pieces of two same-shape arrays (views where both are C-contiguous)."""
    if a.ndim <= 1 or (a.flags.c_contiguous and b.flags.c_contiguous):
        fa, fb = a.reshape(-1), b.reshape(-1)
        for i in range(0, fa.size, size):
            yield fa[i : i + size], fb[i : i + size]
    else:
        for ra, rb in zip(a, b, strict=True):
            yield from paired_chunks(ra, rb, size)


def finite_range(name: str, a: np.ndarray) -> tuple[float, float] | None:
    """(min, max) of a score array, or None when empty. Raises ValueError on NaN/inf, naming the
    number of bad values. Costs two reductions, no temporaries (the count runs only on error)."""
    if a.size == 0:
        return None
    lo, hi = a.min(), a.max()
    if a.dtype.kind == "f" and not (np.isfinite(lo) and np.isfinite(hi)):
        bad = sum(int(c.size - np.count_nonzero(np.isfinite(c))) for c in flat_chunks(a))
        raise ValueError(f"{name} contain {bad} non-finite values (NaN or +-inf) out of {a.size}")
    return float(lo), float(hi)


def check_finite_number(name: str, v: object) -> float:
    f = float(v)  # type: ignore[arg-type]
    if not np.isfinite(f):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    return f
