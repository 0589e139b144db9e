"""Pictures people look at: anomaly-map overlays (and, later, the heat-map gallery)."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from PIL import Image

__all__ = ["overlay"]


def overlay(image: Image.Image, anomaly_map: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> Image.Image:
    """The image with its anomaly map blended on top.

    Args:
        image: any PIL image; converted to RGB.
        anomaly_map: ``(H, W)`` float map at the image's size; min-max scaled for display only (the
            JSON and the metrics keep the raw values).
        alpha: map opacity in [0, 1].
        cmap: a matplotlib colormap name.

    Returns:
        RGB PIL image of the same size.

    Raises:
        ValueError: the map's shape is not the image's ``(height, width)``.
    """
    rgb = image.convert("RGB")
    if anomaly_map.shape != (rgb.height, rgb.width):
        raise ValueError(f"map shape {anomaly_map.shape} != image (height, width) {(rgb.height, rgb.width)}")
    lo, hi = (float(anomaly_map.min()), float(anomaly_map.max())) if anomaly_map.size else (0.0, 0.0)
    scaled = (anomaly_map - lo) / (hi - lo) if hi > lo else np.zeros_like(anomaly_map)
    heat = (colormaps[cmap](scaled)[..., :3] * 255).astype(np.uint8)  # (H, W, 3)
    return Image.blend(rgb, Image.fromarray(heat), alpha)
