"""Backbone families: everything readl needs to know about a VLM architecture, behind one small spec.

ReAL (paper Sec. 4.1) and CGRO (Sec. 4.2) need five things from a backbone, and only these differ between
the supported families (the paper runs Qwen2.5-VL and names "a broader range of MLLMs" as future work):

- which token id stands for an image token in ``input_ids`` (their positions, in raster order, are the
  columns of Eq. 1);
- the image-token grid ``(h, w)`` of each image, read from the processor's own output (Qwen:
  ``image_grid_thw`` in patches, divided by the image processor's ``merge_size``, so an image that is not
  square or not 420x420 gets its real grid; InternVL: one 448 px tile, 14 px patches, pixel shuffle 0.5 ->
  16x16) and the vision inputs the model takes with them;
- the chat template (used when a checkpoint ships none: the tiny kits);
- the LoRA target modules (decoder projections + the vision-language merger; never the vision blocks);
- the processor class that needs no torchvision (images only, PIL image processor).

:func:`family_of` picks the spec from a model's ``config.model_type``; the ReAL/CGRO code calls the spec
and never branches on a family name. Supported: ``qwen2_vl`` (Qwen2-VL), ``qwen2_5_vl`` (Qwen2.5-VL),
``qwen3_vl`` (Qwen3-VL), ``internvl`` (InternVL3 ``-hf`` checkpoints: InternViT + Qwen2 decoder; one tile per
image, no dynamic tiling, so every image has one 16x16 grid).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from transformers import AutoProcessor, InternVLConfig, Qwen2VLConfig, Qwen3VLConfig
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
from transformers.models.internvl.processing_internvl import InternVLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

from readl.model.processor import ReadlQwenProcessor

__all__ = [
    "Family",
    "FAMILIES",
    "QWEN2_CHAT_TEMPLATE",
    "QWEN3_CHAT_TEMPLATE",
    "QWEN2_TARGET_REGEX",
    "QWEN3_TARGET_REGEX",
    "ReadlQwen2VLProcessor",
    "ReadlQwen3VLProcessor",
    "ReadlInternVLProcessor",
    "INTERNVL_CHAT_TEMPLATE",
    "INTERNVL_TARGET_REGEX",
    "family_of",
    "family_of_processor",
    "family_for_path",
    "fit_image_processor",
    "patch_factor",
    "pil_image_processor",
]

# Qwen2-VL / Qwen2.5-VL chat template (as shipped in the official tokenizer_config.json).
QWEN2_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen3-VL-Instruct's chat template reduced to the branches readl reaches (no tools, no tool role): no
# default system message; system / user / assistant render as in the official chat_template.json.
QWEN3_CHAT_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].content is string %}{{- messages[0].content }}{%- else %}"
    "{%- for content in messages[0].content %}{%- if 'text' in content %}{{- content.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- for message in messages %}{%- if message.role == 'user' or message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}"
    "{%- set image_count.value = image_count.value + 1 %}"
    "{%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif content.type == 'video' or 'video' in content %}{%- set video_count.value = video_count.value + 1 %}"
    "{%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in content %}{{- content.text }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# InternVL3 "-hf" chat template (no default system message; an image item is "<IMG_CONTEXT>\n", which the
# processor expands to <img> + 256 x <IMG_CONTEXT> + </img>).
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<IMG_CONTEXT>\n' }}{% elif content['type'] == 'video' %}{{ '<video>\n' }}{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# PEFT full-match regexes: decoder attention + MLP projections and the vision-language merger(s); an optional
# "base_model.model." prefix (PeftModel) and an optional leading "model." keep them valid across wrappings.
_DECODER = r"(?:.*\.)?language_model\.layers\.\d+\.(?:self_attn\.(?:q|k|v|o)_proj|mlp\.(?:gate|up|down)_proj)"
QWEN2_TARGET_REGEX = _DECODER + r"|(?:.*\.)?visual\.merger\.mlp\.(?:0|2)"
# Qwen3-VL: the merger and the DeepStack mergers (they feed vision features into the first decoder layers).
QWEN3_TARGET_REGEX = _DECODER + r"|(?:.*\.)?visual\.(?:merger|deepstack_merger_list\.\d+)\.linear_fc(?:1|2)"
# InternVL: the MLP projector between InternViT (after pixel shuffle) and the decoder.
INTERNVL_TARGET_REGEX = _DECODER + r"|(?:.*\.)?multi_modal_projector\.linear_(?:1|2)"


class _ImagesOnly:
    """Mixin: a stock transformers processor with attributes ``image_processor`` and ``tokenizer`` only (no video
    processor, so no torchvision); ``videos=`` raises ``ValueError``."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        kwargs.pop("video_processor", None)
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs)

    def __call__(self, images=None, text=None, videos=None, **kwargs):
        if videos is not None:
            raise ValueError(f"{type(self).__name__} handles images only; readl never feeds videos.")
        return super().__call__(images=images, text=text, **kwargs)


class ReadlQwen2VLProcessor(_ImagesOnly, Qwen2VLProcessor):
    """``Qwen2VLProcessor`` for images only (see :class:`readl.model.processor.ReadlQwenProcessor`)."""


class ReadlQwen3VLProcessor(_ImagesOnly, Qwen3VLProcessor):
    """``Qwen3VLProcessor`` for images only (see :class:`readl.model.processor.ReadlQwenProcessor`)."""


class ReadlInternVLProcessor(_ImagesOnly, InternVLProcessor):
    """``InternVLProcessor`` for images only, one tile per image (``crop_to_patches`` off: one token grid)."""

    images_kwargs = {"crop_to_patches": False}

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        if image_processor is not None:
            image_processor.crop_to_patches = False  # also when the image processor is called alone (training)
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs)


def _qwen_grids(family: Family, features: Mapping, image_processor) -> list[tuple[int, int]]:
    """Qwen2-VL / 2.5-VL / 3-VL: ``image_grid_thw`` (temporal, height, width) in patches // ``merge_size``."""
    if "image_grid_thw" not in features:
        raise ValueError(f"{family.label}: the processor batch has no image_grid_thw (no images were encoded)")
    merge = int(image_processor.merge_size)
    grids = []
    for t, h, w in features["image_grid_thw"].tolist():
        if t != 1:
            raise ValueError(f"{family.label}: image grid has {t} temporal patches; readl encodes still images")
        grids.append((int(h) // merge, int(w) // merge))
    return grids


def _tile_grids(family: Family, features: Mapping, image_processor) -> list[tuple[int, int]]:
    """InternVL: one ``(H, W)`` tile per image (``pixel_values`` ``(N, 3, H, W)``), InternViT's 14 px patches,
    pixel shuffle 0.5 (2x2 patches -> one token): ``(H / 28, W / 28)``, 448 px -> 16x16 (``image_seq_length`` 256)."""
    if "pixel_values" not in features:
        raise ValueError(f"{family.label}: the processor batch has no pixel_values (no images were encoded)")
    _, _, h, w = features["pixel_values"].shape
    return [(int(h) // 28, int(w) // 28)] * int(features["pixel_values"].shape[0])


def _qwen_vision_inputs(family: Family, features: Mapping, input_ids, image_token_id: int) -> dict:
    """``pixel_values``, ``image_grid_thw`` and ``mm_token_type_ids`` (1 at image tokens: M-RoPE positions)."""
    return {
        "pixel_values": features["pixel_values"],
        "image_grid_thw": features["image_grid_thw"],
        "mm_token_type_ids": (input_ids == image_token_id).long(),
    }


def _pixel_inputs(family: Family, features: Mapping, input_ids, image_token_id: int) -> dict:
    return {"pixel_values": features["pixel_values"]}


def _pin_pixels(image_processor, image_size: int):
    return fit_image_processor(image_processor, image_size)


def _fixed_tile(image_processor, image_size: int):
    """InternVL: every image is resized to the one tile size of the checkpoint (448 px); ``image_size`` only
    sets what readl resizes to first. Dynamic tiling stays off (one grid per image)."""
    ip = copy.deepcopy(image_processor)
    ip.crop_to_patches = False
    return ip


@dataclass(frozen=True)
class Family:
    """What readl needs to know about one backbone family (module docstring).

    Attributes:
        model_type: ``config.model_type`` of its checkpoints, e.g. ``"qwen3_vl"``.
        label: human name, e.g. ``"Qwen3-VL"``.
        model_class: name of the transformers class (``Qwen3VLForConditionalGeneration``).
        processor_class: the image-only processor class (no torchvision).
        chat_template: used when a checkpoint's tokenizer carries none.
        lora_target_regex: PEFT full-match regex of the LoRA targets (decoder + merger).
        kit: name of the random-weight tiny kit (``model.base``), e.g. ``"tiny-qwen3-vl"``.
        image_token: the text of the image placeholder token (one per image-grid cell in ``input_ids``).
        vision_prefix: module-name part of the frozen vision encoder's blocks (LoRA must not match it).
        image_processor_class: the torchvision-free (PIL) image processor class of its checkpoints.
        grids / vision_inputs / fit: the family's :meth:`token_grids`, :meth:`vision_inputs` and
            :meth:`fit_image_processor` (module-level functions above).
        processor_kwargs: extra processor arguments read from the model config (InternVL: ``image_seq_length``).
    """

    model_type: str
    label: str
    model_class: str
    processor_class: type
    chat_template: str
    lora_target_regex: str
    kit: str
    image_token: str = "<|image_pad|>"
    vision_prefix: str = "visual.blocks."
    image_processor_class: type = Qwen2VLImageProcessorPil
    grids: Callable = _qwen_grids
    vision_inputs_fn: Callable = _qwen_vision_inputs
    fit: Callable = _pin_pixels
    processor_kwargs: Callable = lambda config: {}  # noqa: E731

    def load_class(self) -> type:
        """The transformers model class (``from_pretrained`` loads a checkpoint of this family)."""
        import transformers

        return getattr(transformers, self.model_class)

    def image_token_id(self, config) -> int:
        """Id of the image token in ``input_ids`` (``config.image_token_id``)."""
        return int(config.image_token_id)

    def token_grids(self, features: Mapping, image_processor) -> list[tuple[int, int]]:
        """Image-token grid ``(h, w)`` of each image of a processor batch, in the order of the images; image
        token k of an image covers cell ``(k // w, k % w)`` (raster order).

        Qwen2-VL / 2.5-VL / 3-VL: ``image_grid_thw`` ``(N, 3)`` gives (temporal, height, width) in patches
        (14 px, 16 px for Qwen3-VL); ``merge_size`` x ``merge_size`` patches merge into one token, so
        ``(h, w) = (height, width) // merge_size``. A 420x420 image gives (15, 15) on Qwen2.5-VL and (13, 13)
        on Qwen3-VL (416 px after the processor's resize). InternVL: (16, 16) per 448 px tile.

        Raises:
            ValueError: the batch has no image features, or a Qwen image with more than one temporal patch.
        """
        return self.grids(self, features, image_processor)

    def vision_inputs(self, features: Mapping, input_ids, image_token_id: int) -> dict:
        """The model's vision keyword arguments for image-processor ``features`` and the full ``input_ids``
        ``(B, N)`` (Qwen: ``pixel_values``, ``image_grid_thw``, ``mm_token_type_ids``; InternVL: ``pixel_values``)."""
        return self.vision_inputs_fn(self, features, input_ids, image_token_id)

    def fit_image_processor(self, image_processor, image_size: int):
        """A copy of ``image_processor`` that gives every ``image_size``^2 image the same grid (training; Qwen:
        :func:`fit_image_processor`; InternVL: its fixed tile)."""
        return self.fit(image_processor, image_size)

    def processor(self, tokenizer, image_processor, chat_template: str | None = None, config=None):
        """The image-only processor for ``tokenizer`` + ``image_processor``; ``chat_template`` defaults to the
        tokenizer's own, else :attr:`chat_template`; ``config`` (the model's) gives :attr:`processor_kwargs`."""
        template = chat_template or getattr(tokenizer, "chat_template", None) or self.chat_template
        extra = self.processor_kwargs(config) if config is not None else {}
        return self.processor_class(
            image_processor=image_processor, tokenizer=tokenizer, chat_template=template, **extra
        )


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family(
            "qwen2_vl",
            "Qwen2-VL",
            "Qwen2VLForConditionalGeneration",
            ReadlQwen2VLProcessor,
            QWEN2_CHAT_TEMPLATE,
            QWEN2_TARGET_REGEX,
            "tiny-qwen2-vl",
        ),
        Family(
            "qwen2_5_vl",
            "Qwen2.5-VL",
            "Qwen2_5_VLForConditionalGeneration",
            ReadlQwenProcessor,
            QWEN2_CHAT_TEMPLATE,
            QWEN2_TARGET_REGEX,
            "tiny",
        ),
        Family(
            "qwen3_vl",
            "Qwen3-VL",
            "Qwen3VLForConditionalGeneration",
            ReadlQwen3VLProcessor,
            QWEN3_CHAT_TEMPLATE,
            QWEN3_TARGET_REGEX,
            "tiny-qwen3-vl",
        ),
        Family(
            "internvl",
            "InternVL",
            "InternVLForConditionalGeneration",
            ReadlInternVLProcessor,
            INTERNVL_CHAT_TEMPLATE,
            INTERNVL_TARGET_REGEX,
            "tiny-internvl",
            image_token="<IMG_CONTEXT>",
            vision_prefix="vision_tower.",
            image_processor_class=GotOcr2ImageProcessorPil,
            grids=_tile_grids,
            vision_inputs_fn=_pixel_inputs,
            fit=_fixed_tile,
            processor_kwargs=lambda config: {"image_seq_length": int(config.image_seq_length)},
        ),
    )
}


def _lookup(model_type: str | None, where: str) -> Family:
    try:
        return FAMILIES[model_type]
    except KeyError:
        names = ", ".join(f"{f.label} ({k})" for k, f in FAMILIES.items())
        raise ValueError(f"{where}: model_type is {model_type!r}; readl supports {names}") from None


def family_of(model_or_config) -> Family:
    """The family of a model (``PeftModel`` included) or config, by ``config.model_type``.

    Raises:
        ValueError: an unsupported ``model_type`` (the message lists the supported ones).
    """
    config = getattr(model_or_config, "config", model_or_config)
    return _lookup(getattr(config, "model_type", None), type(model_or_config).__name__)


def family_of_processor(processor) -> Family:
    """The family whose image-only processor class ``processor`` is an instance of.

    Raises:
        ValueError: ``processor`` is none of them (e.g. a bare tokenizer: TRL would then train text-only).
    """
    for family in FAMILIES.values():
        if isinstance(processor, family.processor_class):
            return family
    labels = " / ".join(f.label for f in FAMILIES.values())
    names = ", ".join(f.processor_class.__name__ for f in FAMILIES.values())
    raise ValueError(f"an image-only {labels} processor ({names}), got {type(processor).__name__}")


def family_for_path(path: str) -> Family:
    """The family of a checkpoint (local folder or Hugging Face id) from its ``config.json``'s ``model_type``.

    Raises:
        OSError: no config can be read (from transformers: missing folder, offline hub ...).
        ValueError: an unsupported ``model_type``.
    """
    from transformers import AutoConfig

    return _lookup(AutoConfig.from_pretrained(path).model_type, str(path))


def patch_factor(image_processor) -> int:
    """Pixels per image token along a side: ``patch_size * merge_size`` (28 for Qwen2/2.5-VL, 32 for Qwen3-VL)."""
    return int(image_processor.patch_size) * int(image_processor.merge_size)


def fit_image_processor(image_processor, image_size: int):
    """A copy of ``image_processor`` that keeps ``image_size`` x ``image_size`` images at the nearest side the
    patch grid allows: ``round(image_size / f) * f`` with ``f`` = :func:`patch_factor` (420 -> 420 for
    Qwen2.5-VL, a 15x15 token map; 420 -> 416 for Qwen3-VL, 13x13), by pinning both pixel bounds.

    Raises:
        ValueError: ``image_size`` is smaller than one token's side ``f``.
    """
    f = patch_factor(image_processor)
    if image_size < f:
        raise ValueError(f"image_size must be at least {f} px (one image token of this model), got {image_size}")
    side = round(image_size / f) * f
    pixels = side * side
    ip = copy.deepcopy(image_processor)
    size = getattr(ip, "size", None)
    ip.size = (
        type(size)(shortest_edge=pixels, longest_edge=pixels)
        if hasattr(size, "shortest_edge")
        else {"shortest_edge": pixels, "longest_edge": pixels}
    )
    for attr in ("min_pixels", "max_pixels"):
        if getattr(ip, attr, None) is not None:
            setattr(ip, attr, pixels)
    return ip


def pil_image_processor(patch_size: int = 14, image_mean=None, image_std=None) -> Qwen2VLImageProcessorPil:
    """The torchvision-free Qwen image processor with a family's patch size and normalisation (defaults: CLIP's)."""
    kw = {k: v for k, v in (("image_mean", image_mean), ("image_std", image_std)) if v is not None}
    return Qwen2VLImageProcessorPil(patch_size=patch_size, **kw)


def register_family_processors() -> None:
    """Make ``AutoProcessor.from_pretrained`` on a saved folder of each family give its image-only processor back
    (:func:`readl.model.processor.register_auto_processor` calls this; importing readl registers nothing).
    Idempotent."""
    AutoProcessor.register(Qwen2VLConfig, ReadlQwen2VLProcessor, exist_ok=True)
    AutoProcessor.register(Qwen3VLConfig, ReadlQwen3VLProcessor, exist_ok=True)
    AutoProcessor.register(InternVLConfig, ReadlInternVLProcessor, exist_ok=True)
