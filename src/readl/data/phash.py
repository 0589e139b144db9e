"""Perceptual hashes of images (the curate stage's leakage guard, :mod:`readl.data.leakage`): DCT pHash,
Hamming distance, and decode + resize + hash in one pass.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image
from scipy.fft import dctn

from readl.data.images import DEFAULT_SIZE, load_rgb, to_rgb

__all__ = ["decode_resize_hash", "hamming", "phash"]


def phash(img: Image.Image | np.ndarray) -> str:
    """Standard DCT perceptual hash (pHash), as ``imagehash.phash`` with hash_size 8.

    Grey (PIL ``convert("L")``), LANCZOS resize to 32x32, 2-D DCT-II (``scipy.fft.dctn``, unnormalised),
    keep the top-left 8x8 coefficients (DC included), threshold at their median, pack the 64 bits
    row-major, most significant bit first.

    Args:
        img: PIL image (any mode) or ``np.ndarray`` uint8 of shape (H, W) or (H, W, 3).
    Returns:
        16 lowercase hex characters (64 bits).
    Source: Zauner, "Implementation and Benchmarking of Perceptual Image Hash Functions" (2010);
        the ``imagehash`` package's ``phash``.
    """
    if isinstance(img, np.ndarray):
        img = Image.fromarray(np.asarray(img, dtype=np.uint8))
    if img.mode not in ("L", "RGB"):
        img = to_rgb(img)
    grey = img.convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    coeffs = dctn(np.asarray(grey, dtype=np.float64), type=2)[:8, :8]
    bits = (coeffs > np.median(coeffs)).ravel()
    value = 0
    for b in bits:
        value = (value << 1) | int(b)
    return f"{value:016x}"


def hamming(a: str, b: str) -> int:
    """Number of differing bits between two 16-hex-char hashes from :func:`phash` (0-64).

    Raises:
        ValueError: a hash is not 16 hex characters.
    """
    for h in (a, b):
        if not isinstance(h, str) or len(h) != 16:
            raise ValueError(f"expected a 16-hex-character phash, got {h!r}")
    try:
        return (int(a, 16) ^ int(b, 16)).bit_count()
    except ValueError:
        raise ValueError(f"expected hex phashes, got {a!r} and {b!r}") from None


def decode_resize_hash(
    path: str | os.PathLike[str], size: tuple[int, int] | None = DEFAULT_SIZE, *, min_side: int = 1
) -> tuple[np.ndarray, str]:
    """Fast path for curate: decode (JPEG draft), orient, convert, resize, and pHash in one call.

    Args:
        path: image file.
        size: output ``(width, height)``, or ``None`` for the upright native size.
        min_side: as :func:`load_rgb`.
    Returns:
        ``(pixels, hash)``: ``np.ndarray`` uint8 of shape ``(height, width, 3)`` (RGB, 0-255) and
        the :func:`phash` of those resized pixels (16 hex chars). The hash of one picture at two
        different ``size`` values may differ by a few bits: compare hashes made at one size.
    Raises:
        BadImageError / RuntimeError: as :func:`load_rgb`.
    """
    img = load_rgb(path, size, min_side=min_side)
    return np.asarray(img, dtype=np.uint8), phash(img)
