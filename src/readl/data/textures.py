"""Textures of the DRAEM recipe (:func:`readl.data.synthetic.draem`): Perlin noise (the anomaly-shape masks) and a
procedural texture (a stand-in for DTD images), both seeded.

Source: Zavrtanik et al., "DRAEM - A discriminatively trained reconstruction embedding for surface anomaly
detection", ICCV 2021; Perlin, "Improving noise", SIGGRAPH 2002.
"""

from __future__ import annotations

import numpy as np

__all__ = ["perlin_noise", "procedural_texture"]


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D Perlin noise (DRAEM's ``rand_perlin_2d_np``), float64 (H, W), values in about [-0.7, 0.7].

    Computed on the next multiple of ``res`` covering ``shape`` and cropped, so any size works.

    Args:
        shape: (H, W) output size. res: periods per axis (ints >= 1). rng: consumed.
    """
    H, W = shape
    ry, rx = int(res[0]), int(res[1])
    if ry < 1 or rx < 1:
        raise ValueError(f"Perlin periods must be >= 1, got {res}")
    cy, cx = -(-H // ry), -(-W // rx)  # cell size (pixels), ceil
    fade = lambda t: 6 * t**5 - 15 * t**4 + 10 * t**3  # noqa: E731
    angles = 2 * np.pi * rng.random((ry + 1, rx + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)  # (ry+1, rx+1, 2)
    fy = np.tile((np.arange(cy) / cy), ry)[:, None]  # (gh, 1) position in its cell
    fx = np.tile((np.arange(cx) / cx), rx)[None, :]  # (1, gw)

    def dot(oy: int, ox: int) -> np.ndarray:  # each pixel's corner gradient . offset to that corner
        g = np.repeat(np.repeat(grads[oy : oy + ry, ox : ox + rx], cy, 0), cx, 1)  # (gh, gw, 2)
        return g[..., 0] * (fy - oy) + g[..., 1] * (fx - ox)

    ty, tx = fade(fy), fade(fx)
    n0 = dot(0, 0) * (1 - tx) + dot(0, 1) * tx
    n1 = dot(1, 0) * (1 - tx) + dot(1, 1) * tx
    return (np.sqrt(2) * (n0 * (1 - ty) + n1 * ty))[:H, :W]


def procedural_texture(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A stand-in for DRAEM's DTD textures (not bundled): two random colours mixed by Perlin noise.

    ``t = c1 * n + c2 * (1 - n)`` with ``n`` the sum of two Perlin octaves (periods ``2**k``, k in 1..3, and
    twice that) rescaled to [0, 1], plus Gaussian grain of sigma 8 grey levels; ``c1``, ``c2`` uniform in
    [0, 255]^3. Unlike the image's own (rolled) pixels it differs from the object in colour and structure,
    the property DRAEM's out-of-distribution textures have (Zavrtanik et al. 2021, Sec. 3.3).

    Args:
        shape: (H, W). rng: consumed.

    Returns:
        (H, W, 3) uint8.
    """
    H, W = shape
    k = int(rng.integers(1, 4))
    n = perlin_noise((H, W), (2**k, 2**k), rng) + 0.5 * perlin_noise((H, W), (2 ** (k + 1), 2 ** (k + 1)), rng)
    n = (n - n.min()) / max(float(np.ptp(n)), 1e-9)  # (H, W) in [0, 1]
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    tex = c1 * n[..., None] + c2 * (1 - n[..., None]) + rng.normal(0.0, 8.0, (H, W, 3))  # (H, W, 3)
    return np.clip(np.rint(tex), 0, 255).astype(np.uint8)
