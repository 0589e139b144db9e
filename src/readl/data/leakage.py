"""Leakage guard of the curate stage: is a train/calib image a copy of an eval image?

The zero-shot protocol of the paper (Sec. 5.1) needs the evaluation images to be unseen in training.
A copy of an eval image may reach a training source exact, re-encoded (JPEG) or resized, so bytes
and file names are no guide. The guard is two-stage:

1. **Candidates** by the 64-bit DCT pHash (:func:`readl.data.phash.phash`) of the curated 420x420
   image: every eval image within ``leakage_max_distance`` bits. Fast (one XOR + popcount per
   eval image), but coarse: distinct photos of one object under one camera set-up share their
   low-frequency layout: on some real categories several percent of distinct pairs lie within
   3 bits (on hazelnut_toy: 0 at 3 bits, 6% at 8, 25% at 12).
2. **Confirmation** by SSIM (Wang et al., "Image quality assessment: from error visibility to
   structural similarity", IEEE TIP 2004; Gaussian window sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255)
   between 64x64 grey thumbnails (box-filtered from the curated image): a candidate is a copy when
   its highest SSIM over the pHash candidates is >= ``leakage_min_ssim``. On the bundled
   hazelnut_toy normals, exact / JPEG q80 / half- and quarter-size / 2x copies score >= 0.997 and
   distinct photos of the object <= 0.89 (``benchmarks/leakage.py`` prints the table), so the
   default 0.95 sits between the two. ``leakage_min_ssim = -1`` turns confirmation off
   (pHash alone).

The thumbnail size (64) is a readl choice: small enough to keep for every eval image (4 KB each),
large enough that SSIM sees texture that pHash's 8x8 DCT block discards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["THUMB_SIZE", "LeakageGuard", "ssim", "thumbnail"]

THUMB_SIZE = 64
"""Side of the grey thumbnail SSIM is computed on, pixels."""
_SIGMA = 1.5
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


def thumbnail(img: Image.Image | np.ndarray) -> np.ndarray:
    """64x64 grey thumbnail for :func:`ssim`.

    Args:
        img: PIL image (any mode) or uint8 array ``(H, W)`` / ``(H, W, 3)``.
    Returns:
        ``np.ndarray`` uint8, shape ``(THUMB_SIZE, THUMB_SIZE)``: PIL ``convert("L")`` then a box
        filter resize.
    """
    if isinstance(img, np.ndarray):
        img = Image.fromarray(np.asarray(img, dtype=np.uint8))
    grey = img.convert("L").resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BOX)
    return np.asarray(grey, dtype=np.uint8)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean structural similarity of two grey images of one shape (Wang et al. 2004).

    Args:
        a, b: arrays ``(H, W)``, values 0-255 (any real dtype).
    Returns:
        Mean SSIM over the image, in [-1, 1]; 1 for identical images.
    Raises:
        ValueError: shapes differ or are not 2-D.
    Source: Wang et al., IEEE TIP 2004, Eq. 13 with a Gaussian window (sigma 1.5, truncated at
        3.5 sigma: the 11x11 window of the paper), K1 = 0.01, K2 = 0.03, L = 255.
    """
    from scipy.ndimage import gaussian_filter

    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"ssim needs two 2-D arrays of one shape, got {x.shape} and {y.shape}")

    def blur(v: np.ndarray) -> np.ndarray:
        return gaussian_filter(v, _SIGMA, truncate=3.5)

    mu_x, mu_y = blur(x), blur(y)  # (H, W)
    var_x = blur(x * x) - mu_x * mu_x
    var_y = blur(y * y) - mu_y * mu_y
    cov = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + _C1) * (2 * cov + _C2)
    den = (mu_x * mu_x + mu_y * mu_y + _C1) * (var_x + var_y + _C2)
    return float(np.mean(num / den))


class LeakageGuard:
    """The eval images' pHashes and thumbnails, and the two-stage test (module docstring).

    Args:
        rows: ``(source, image_path, phash)`` of every accepted eval image (phash: 16 hex chars).
        thumbs: their :func:`thumbnail` arrays, in the same order.
        max_distance: pHash Hamming distance of a candidate, bits (0-64).
        min_ssim: SSIM a candidate needs to be a copy (-1: every candidate is one).
    """

    def __init__(
        self, rows: Sequence[tuple[str, str, str]], thumbs: Sequence[np.ndarray], max_distance: int, min_ssim: float
    ) -> None:
        if len(rows) != len(thumbs):
            raise ValueError(f"{len(rows)} eval rows but {len(thumbs)} thumbnails")
        order = sorted(range(len(rows)), key=lambda i: rows[i])
        self.rows = [rows[i] for i in order]
        self.thumbs = [thumbs[i] for i in order]
        self.hashes = np.array([int(h, 16) for _, _, h in self.rows], dtype=np.uint64)
        self.max_distance = max_distance
        self.min_ssim = min_ssim

    def match(self, digest: str, thumb: np.ndarray) -> dict[str, Any] | None:
        """The eval image ``(digest, thumb)`` copies, or None.

        Returns:
            ``{"eval_source", "eval_image_path", "eval_phash", "distance", "ssim"}`` for the
            candidate of highest SSIM (ties: smallest distance, then first in sorted order), when
            it is a copy; None otherwise (no candidate, or none reaches ``min_ssim``).
        """
        if not len(self.hashes):
            return None
        dist = np.bitwise_count(self.hashes ^ np.uint64(int(digest, 16)))  # (N,)
        best: tuple[float, int, int] | None = None  # (-ssim, distance, index)
        for i in np.flatnonzero(dist <= self.max_distance):
            key = (-ssim(thumb, self.thumbs[i]), int(dist[i]), int(i))
            best = key if best is None or key < best else best
        if best is None or -best[0] < self.min_ssim:
            return None
        src, path, h = self.rows[best[2]]
        return {
            "eval_source": src,
            "eval_image_path": path,
            "eval_phash": h,
            "distance": best[1],
            "ssim": round(-best[0], 6),
        }
