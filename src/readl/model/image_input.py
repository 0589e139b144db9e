"""The one image-size rule: how an RGB image becomes the model's square input (torch-free).

Every image the model sees (inference, the warm-up's SFT rows, CGRO's training rows) goes through
:func:`model_image`, so training and inference never resize differently.
"""

from __future__ import annotations

from PIL import Image

__all__ = ["model_image"]


def model_image(image: Image.Image, image_size: int) -> Image.Image:
    """``image`` as the model's input: mode RGB, ``image_size`` x ``image_size`` pixels, bicubic resampling.

    Args:
        image: any PIL image (decoded by :func:`readl.predictor.open_image` or a curated 420x420 PNG).
        image_size: output side, pixels (``model.image_size``; a multiple of 28, paper Sec. 5.1: 420).

    Returns:
        A new RGB image of size ``(image_size, image_size)`` (aspect ratio not kept: the model takes a square).
    """
    return image.convert("RGB").resize((image_size, image_size), Image.BICUBIC)


PATCH_MULTIPLE = 28
"""Side granularity of the model's input, pixels: Qwen2.5-VL's 14 px patches merged 2 x 2 (one image token)."""


def check_image_size(image_size: int) -> int:
    """``image_size`` if it is a valid model input side: a positive multiple of :data:`PATCH_MULTIPLE` (28).

    Raises:
        ValueError: it is not (the message gives the rule: patch 14 x spatial merge 2).
    """
    if image_size <= 0 or image_size % PATCH_MULTIPLE:
        raise ValueError(
            f"image_size must be a positive multiple of {PATCH_MULTIPLE} (patch 14 x merge 2), got {image_size}"
        )
    return image_size
