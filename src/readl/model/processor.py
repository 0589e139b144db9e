"""An image-only Qwen2.5-VL processor that needs no torchvision.

transformers' stock ``Qwen2_5_VLProcessor`` wants a video processor, and the default Qwen2-VL
video/image processors import torchvision (a CUDA build on PyPI that does not import here). readl only
ever feeds still images, so this subclass carries the PIL image processor and the tokenizer and
nothing else. :func:`register_auto_processor` (called when readl loads or builds a processor; importing
this module registers nothing) registers it with ``AutoProcessor`` so ``from_pretrained`` on a saved
folder gives the full processor back instead of silently returning only the tokenizer (transformers
falls back to the tokenizer alone when the processor class cannot be resolved).
"""

from __future__ import annotations

from transformers import AutoProcessor, Qwen2_5_VLConfig
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from readl.model.image_input import check_image_size

__all__ = ["ReadlQwenProcessor", "Qwen2VLImageProcessorPil", "image_processor_for", "register_auto_processor"]


class ReadlQwenProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` for images only: attributes ``image_processor`` and ``tokenizer``.

    Behaves like the stock processor for ``images=`` and ``text=`` (``<|image_pad|>`` expansion to
    ``prod(image_grid_thw) / merge_size**2`` tokens, ``pixel_values``, ``image_grid_thw``,
    ``mm_token_type_ids``); passing ``videos=`` raises ``ValueError``.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        kwargs.pop("video_processor", None)
        # The parent sets the image/video token names and ids, then ProcessorMixin checks attributes.
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs)

    def __call__(self, images=None, text=None, videos=None, **kwargs):
        if videos is not None:
            raise ValueError("ReadlQwenProcessor handles images only; readl never feeds videos.")
        return super().__call__(images=images, text=text, **kwargs)


def image_processor_for(image_size: int) -> Qwen2VLImageProcessorPil:
    """PIL image processor that maps an ``image_size`` x ``image_size`` image to itself.

    Args:
        image_size: side in pixels, a multiple of 28 (patch 14 x spatial merge 2); 420 -> grid (1, 30, 30)
            -> 225 image tokens = a 15x15 map (paper Sec. 5.1: 420x420 images).

    Raises:
        ValueError: ``image_size`` is not a positive multiple of 28.
    """
    pixels = check_image_size(image_size) ** 2
    return Qwen2VLImageProcessorPil(size={"shortest_edge": pixels, "longest_edge": pixels})


def register_auto_processor() -> None:
    """Make ``AutoProcessor`` resolve a Qwen2.5-VL folder to :class:`ReadlQwenProcessor` (and each other family's
    folder to its image-only processor, :func:`readl.model.families.register_family_processors`). Idempotent."""
    from readl.model.families import register_family_processors  # families builds on this module

    AutoProcessor.register(Qwen2_5_VLConfig, ReadlQwenProcessor, exist_ok=True)
    register_family_processors()
