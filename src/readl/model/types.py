"""Torch-free result and settings types of the model side: code that only needs numpy (evaluation, calibration,
reports, caches) imports these without importing torch or transformers."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from readl.model.prompting import Parsed

__all__ = ["GenerationSettings", "TokenAttention", "Prediction"]


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings. Greedy by default (predict / evaluate); GRPO samples (``do_sample=True``)."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass
class TokenAttention:
    """Attention of a completion's tokens, read in the teacher-forced pass.

    Attributes:
        image_attn: ``(T, h, w)`` float32, attention of each completion token to the image tokens on the
            merged-patch grid, raster order (15x15 for 420x420), mean over heads and layers (Eq. 1).
        anomaly_attn: ``(T, E)`` float32, attention to the E anomaly-word tokens of the question (Eq. 2).
        p_yes: P(Yes) in [0, 1]: the pooled Yes-spellings' share of Yes + No where the answer word is
            written (module docstring).
        reasoning: ``(T,)`` bool, which completion tokens are reasoning (:func:`reasoning_token_mask`).
    """

    image_attn: np.ndarray
    anomaly_attn: np.ndarray
    p_yes: float
    reasoning: np.ndarray


@dataclass
class Prediction:
    """One image's result before ReAL aggregation.

    Attributes:
        completion: decoded completion (special tokens removed).
        parsed: reasoning / answer / format validity.
        score: P(Yes) in [0, 1] (image anomaly score).
        tokens: the R reasoning tokens (decoded one by one).
        image_attn: ``(R, h, w)`` float32 maps of the reasoning tokens.
        anomaly_attn: ``(R, E)`` float32.
        image_size: ``(H, W)`` of the original image, pixels (the map is upsampled to it).
    """

    completion: str
    parsed: Parsed
    score: float
    tokens: list[str]
    image_attn: np.ndarray
    anomaly_attn: np.ndarray
    image_size: tuple[int, int]
    extra: dict = field(default_factory=dict)
