"""Per-token ReAL scores: semantic relevance S_T (paper Eq. 2), spatial entropy S_I (Eq. 3),
and their min-max normalisation (paper Sec. 4.1, "Aggregating the reasoning-driven anomaly map").

All functions are pure numpy/scipy and vectorised over the R reasoning tokens of one image.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

Binarize = str | float  # "mean" or a quantile in (0, 1)

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)  # scipy's default structure is 4-connected


def checked_array(name: str, arr: object, ndim: int) -> np.ndarray:
    """Return ``arr`` as an ndarray after checking its ndim and that every value is finite."""
    a = np.asarray(arr)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real-valued, got dtype {a.dtype}")
    if a.size and not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return a


def semantic_relevance(anomaly_attn: np.ndarray) -> np.ndarray:
    """S_T of each reasoning token: summed attention to the prompt's anomaly words (paper Eq. 2).

    Args:
        anomaly_attn: (R, E) attention of each of R reasoning tokens to the E anomaly-word
            tokens of the prompt (averaged over heads and layers). E may be 0.

    Returns:
        (R,) float64, S_T^r = sum_e A_{r,e}; >= 0 for attention inputs. E == 0 gives zeros.

    Raises:
        ValueError: ``anomaly_attn`` is not 2-D or holds NaN/inf.
    """
    a = checked_array("anomaly_attn", anomaly_attn, 2)  # (R, E)
    return a.sum(axis=1, dtype=np.float64)  # (R,)


def _check_binarize(binarize: Binarize) -> Binarize:
    if isinstance(binarize, str):
        if binarize != "mean":
            raise ValueError(f"binarize must be 'mean' or a quantile in (0, 1), got {binarize!r}")
        return binarize
    q = float(binarize)
    if not 0.0 < q < 1.0:
        raise ValueError(f"binarize quantile must lie in (0, 1), got {binarize!r}")
    return q


def _on_cells(attn: np.ndarray, binarize: Binarize) -> np.ndarray:
    """Binarised maps (R, h, w) bool: a cell is on when strictly above the per-map threshold."""
    flat = attn.reshape(attn.shape[0], -1)  # (R, h*w)
    if binarize == "mean":
        cut = flat.mean(axis=1, keepdims=True)  # (R, 1)
    else:
        cut = np.quantile(flat, binarize, axis=1, keepdims=True)  # (R, 1)
    return (flat > cut).reshape(attn.shape)  # (R, h, w)


def spatial_entropy(image_attn: np.ndarray, binarize: Binarize = "mean") -> np.ndarray:
    """S_I of each reasoning token: entropy of its attention mass over connected regions (paper Eq. 3).

    For each token r with map A_r (h, w):

    1. Binarise: a cell is "on" when A_r[cell] > t_r (strict). With ``binarize="mean"`` (default)
       t_r is the map's mean, i.e. the uniform share 1/(h*w) of the map's total mass: a cell is on
       when it gets more than its even share. With a float q in (0, 1), t_r is the q-quantile of
       the map's values (``np.quantile``, linear interpolation).
    2. Label the on-cells into 8-connected components C_1..C_N (diagonal neighbours connect).
    3. P(C_i) = sum of A_r over C_i / sum of A_r over all on-cells.
    4. S_I^r = -sum_i P(C_i) log P(C_i), natural log.

    A map with no on-cell (a flat map, or e.g. all-equal values) gets S_I = log(h*w), the entropy
    of attention spread evenly over every cell: it is treated as maximally diffuse. This is the
    largest value any map can get (N <= h*w components), so such tokens rank last after the
    inverted normalisation.

    Implementation: all R maps are labelled in ONE ``scipy.ndimage.label`` call over a mosaic in
    which the maps are stacked vertically with a one-row zero gutter between them, so components
    cannot merge across maps; masses and entropies come from ``np.bincount``. No loop over tokens.

    Args:
        image_attn: (R, h, w) non-negative attention of each reasoning token to the image-token
            grid, raster order. Any float dtype; computed in float64.
        binarize: "mean" or a quantile float in (0, 1); see step 1.

    Returns:
        (R,) float64 in [0, log(h*w)]; 0 means a single region. R == 0 gives an empty array.

    Raises:
        ValueError: ``image_attn`` is not 3-D, has an empty grid, holds NaN/inf or negative
            values, or ``binarize`` is invalid.
    """
    a = checked_array("image_attn", image_attn, 3).astype(np.float64, copy=False)  # (R, h, w)
    n_tok, h, w = a.shape
    if h == 0 or w == 0:
        raise ValueError(f"image_attn has an empty grid, shape {a.shape}")
    if (a < 0).any():
        raise ValueError("image_attn contains negative values; attention weights must be >= 0")
    binarize = _check_binarize(binarize)
    if n_tok == 0:
        return np.zeros(0, dtype=np.float64)

    on = _on_cells(a, binarize)  # (R, h, w)
    mosaic = np.zeros((n_tok, h + 1, w), dtype=bool)  # (R, h+1, w): last row = zero gutter
    mosaic[:, :h] = on
    labels, n_comp = ndimage.label(mosaic.reshape(n_tok * (h + 1), w), structure=_EIGHT_CONNECTED)
    labels = labels.reshape(n_tok, h + 1, w)[:, :h].reshape(-1)  # (R*h*w,), 0 = off
    owner = np.repeat(np.arange(n_tok), h * w)  # (R*h*w,) map index of each cell

    mass = np.bincount(labels, weights=a.reshape(-1), minlength=n_comp + 1)[1:]  # (N,)
    comp_map = np.zeros(n_comp + 1, dtype=np.intp)  # (N+1,) component -> map index
    comp_map[labels] = owner
    comp_map = comp_map[1:]  # (N,)
    on_mass = np.bincount(comp_map, weights=mass, minlength=n_tok)  # (R,)

    p = mass / on_mass[comp_map]  # (N,) on-cells are > t_r >= 0, so mass > 0
    ent = -np.bincount(comp_map, weights=p * np.log(p), minlength=n_tok)  # (R,)
    ent = np.abs(ent)  # turn -0.0 of single-component maps into 0.0
    has_on = on.reshape(n_tok, -1).any(axis=1)  # (R,)
    return np.where(has_on, ent, np.log(h * w))  # (R,)


def normalize_scores(s_t: np.ndarray, s_i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Min-max normalise S_T and S_I over the given tokens, S_I inverted (paper Sec. 4.1).

    s_t_hat = (s_t - min) / (max - min); s_i_hat = (max - s_i) / (max - min), so a high
    s_i_hat means concentrated attention (low entropy). Min and max are taken over the tokens
    passed in: one image's tokens, or all rollouts of one image concatenated.

    A constant vector (max == min, which includes R == 1) maps to all 1.0: nothing tells the
    tokens apart, so the normalisation excludes none of them (with tau < 1 they all pass).

    Args:
        s_t: (R,) S_T scores. s_i: (R,) S_I scores. Same length R (may be 0).

    Returns:
        (s_t_hat, s_i_hat), each (R,) float64 in [0, 1]. R == 0 gives two empty arrays.

    Raises:
        ValueError: an input is not 1-D, the lengths differ, or a value is NaN/inf.
    """
    t = checked_array("s_t", s_t, 1).astype(np.float64)  # (R,)
    i = checked_array("s_i", s_i, 1).astype(np.float64)  # (R,)
    if t.shape != i.shape:
        raise ValueError(f"s_t and s_i must have the same length, got {t.shape[0]} and {i.shape[0]}")
    return _minmax(t, invert=False), _minmax(i, invert=True)


def _minmax(x: np.ndarray, invert: bool) -> np.ndarray:
    if x.size == 0:
        return x.copy()
    lo, hi = x.min(), x.max()
    if hi == lo:
        return np.ones_like(x)
    out = (hi - x) / (hi - lo) if invert else (x - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0)
