"""The tiny model kits: real Qwen2-VL / Qwen2.5-VL / Qwen3-VL / InternVL architectures, random weights, built locally.

Tests, CI and the embedded default pipeline (`model.base: tiny`) run on them: no network, no hub, no
torchvision. Each is the family's real ``...ForConditionalGeneration`` class (vision tower, patch merger,
M-RoPE, GQA decoder; Qwen3-VL with DeepStack and interleaved M-RoPE), just small:

| ``model.base`` | family | patch | 420x420 image -> token grid |
|---|---|---|---|
| ``tiny`` | Qwen2.5-VL (windowed + full vision attention) | 14 px | 420 px, 15x15 = 225 tokens |
| ``tiny-qwen2-vl`` | Qwen2-VL | 14 px | 420 px, 15x15 |
| ``tiny-qwen3-vl`` | Qwen3-VL | 16 px | 416 px, 13x13 = 169 tokens |
| ``tiny-internvl`` | InternVL (InternViT + Qwen2 decoder, pixel shuffle 0.5) | 14 px | one 448 px tile, 16x16 = 256 tokens |

Each kit has:

- a byte-level BPE tokenizer trained here on a small corpus of the prompt's words, the answer words
  and anomaly vocabulary, carrying the family's special tokens (``<|im_start|>``, ``<|image_pad|>`` ...;
  Qwen3-VL also ``<think>``, ``</think>`` ... as added tokens) and its chat template, so prompting,
  image-token expansion and the Yes/No score run exactly as with the real tokenizer (any text still
  encodes: byte-level BPE has all 256 bytes);
- the PIL image processor pinned so that a 420x420 image keeps the nearest size the patch grid allows;
- the family's image-only processor (:mod:`readl.model.families`).

Everything is saved with ``save_pretrained`` and loads back with ``from_pretrained``.
"""  # noqa: E501 (its tables)

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import InternVLConfig, PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2VLConfig, Qwen3VLConfig
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

from readl.atomic import atomic_dir
from readl.model.families import FAMILIES, QWEN2_CHAT_TEMPLATE, fit_image_processor, pil_image_processor
from readl.model.prompting import ANOMALY_WORDS, QUESTION, SYSTEM_PROMPT

__all__ = [
    "QWEN_SPECIAL_TOKENS",
    "QWEN3_ADDED_TOKENS",
    "CHAT_TEMPLATE",
    "KITS",
    "TinySpec",
    "kit_config",
    "build_tiny_model",
    "default_kit_dir",
    "default_tiny_dir",
    "ensure_tiny_model",
]

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen3-VL's tokenizer also carries these as added, NOT special, tokens (decoded as text): <think> and
# </think> are single tokens there, so the reasoning mask must work on them.
QWEN3_ADDED_TOKENS = [
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
]

# InternVL3-hf's image tokens: special, and named on the tokenizer (the processor reads tokenizer.start_image_token ...)
INTERNVL_IMAGE_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}

CHAT_TEMPLATE = QWEN2_CHAT_TEMPLATE  # the Qwen2.5-VL kit's (kept under its old name)

# Words the tiny vocabulary is trained on: the prompts, the answer format and an inspection lexicon.
_LEXICON = """
The image shows a metal grid plate hazelnut screw cable capsule bottle carpet leather tile wood fabric
surface texture pattern object product part. There is a visible scratch crack hole stain dent cut tear
contamination spot mark thread glue bent broken missing misplaced color colour discoloration fold
rough split rot mold print defect defects defective anomaly anomalies anomalous abnormal abnormality
damage damaged. The region near the top bottom left right center edge corner appears normal uniform
regular smooth consistent clean intact healthy good. No signs of any damage were found, so the product
is normal. It deviates from the typical appearance, which indicates a defect.
<think> </think> <answer>Yes</answer> <answer>No</answer> Yes No yes no
"""


class TinySpec:
    """Sizes of the tiny kit (fixed: tests and cached folders depend on them)."""

    text_hidden = 64
    text_layers = 2
    text_heads = 4
    text_kv_heads = 2
    text_intermediate = 128
    vision_hidden = 32
    vision_depth = 2
    vision_heads = 2
    vision_intermediate = 64
    vocab_size = 1024
    image_size = 420
    seed = 0


def _build_tokenizer(
    vocab_size: int, chat_template: str, added: tuple[str, ...] = (), named: dict[str, str] | None = None
) -> PreTrainedTokenizerFast:
    corpus = [SYSTEM_PROMPT, QUESTION, " ".join(ANOMALY_WORDS), _LEXICON] * 20
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=QWEN_SPECIAL_TOKENS + list((named or {}).values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=32768,
        chat_template=chat_template,
        **({"extra_special_tokens": named} if named else {}),
    )
    if added:
        tok.add_tokens(list(added))  # plain added tokens (special=False): decoded as text, like Qwen3's <think>
    # Qwen's tokenizer_config carries these two; the processor reads them.
    tok.image_token = "<|image_pad|>"
    tok.video_token = "<|video_pad|>"
    return tok


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (temporal, height, width) like Qwen2.5's [16, 24, 24]."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def _interleaved_mrope_section(head_dim: int) -> list[int]:
    """Qwen3-VL's interleaved split of head_dim/2 frequencies, shaped like its [24, 20, 20] (h = w = 5/16)."""
    half = head_dim // 2
    hw = max(1, half * 5 // 16)
    return [half - 2 * hw, hw, hw]


def _text(spec, ids: dict[str, int], vocab: int, mrope: list[int], theta: float) -> dict:
    return dict(
        vocab_size=vocab,
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_intermediate,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_kv_heads,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": theta, "mrope_section": mrope},
        pad_token_id=ids["<|endoftext|>"],
    )


def _token_ids(ids: dict[str, int]) -> dict:
    return dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def _qwen2_5_config(spec, ids: dict[str, int], vocab: int) -> Qwen2_5_VLConfig:
    text = _text(spec, ids, vocab, _mrope_section(spec.text_hidden // spec.text_heads), 1e6)
    text.update(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"])
    vision = dict(
        depth=spec.vision_depth,
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_intermediate,
        num_heads=spec.vision_heads,
        out_hidden_size=spec.text_hidden,
        fullatt_block_indexes=[spec.vision_depth - 1],
        window_size=112,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **_token_ids(ids))


def _qwen2_config(spec, ids: dict[str, int], vocab: int) -> Qwen2VLConfig:
    text = _text(spec, ids, vocab, _mrope_section(spec.text_hidden // spec.text_heads), 1e6)
    text.update(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"])
    vision = dict(
        depth=spec.vision_depth,
        embed_dim=spec.vision_hidden,
        hidden_size=spec.text_hidden,
        mlp_ratio=spec.vision_intermediate // spec.vision_hidden,
        num_heads=spec.vision_heads,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    return Qwen2VLConfig(text_config=text, vision_config=vision, **_token_ids(ids))


def _qwen3_config(spec, ids: dict[str, int], vocab: int) -> Qwen3VLConfig:
    head_dim = spec.text_hidden // spec.text_heads
    text = _text(spec, ids, vocab, _interleaved_mrope_section(head_dim), 5e6)
    text["head_dim"] = head_dim
    text["rope_parameters"]["mrope_interleaved"] = True
    vision = dict(
        depth=spec.vision_depth,
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_intermediate,
        num_heads=spec.vision_heads,
        out_hidden_size=spec.text_hidden,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        num_position_embeddings=576,
        deepstack_visual_indexes=[0],
    )
    return Qwen3VLConfig(text_config=text, vision_config=vision, **_token_ids(ids))


def _internvl_config(spec, ids: dict[str, int], vocab: int) -> InternVLConfig:
    """InternVL3-style: InternViT (448 px tile, 14 px patches, CLS token) + pixel shuffle 0.5 + MLP projector + a
    Qwen2 decoder (1-D RoPE)."""
    text = _text(spec, ids, vocab, [], 1e6)
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6}
    text.update(model_type="qwen2", bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"])
    vision = dict(
        hidden_size=spec.vision_hidden,
        num_hidden_layers=spec.vision_depth,
        num_attention_heads=spec.vision_heads,
        intermediate_size=spec.vision_intermediate,
        image_size=[448, 448],
        patch_size=[14, 14],
    )
    return InternVLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<IMG_CONTEXT>"],
        image_seq_length=256,
        downsample_ratio=0.5,
    )


@dataclass(frozen=True)
class _Kit:
    """How one family's kit is built: its config, patch size, normalisation and extra tokens."""

    model_type: str
    config: Callable
    patch_size: int = 14
    image_mean: tuple[float, ...] | None = None  # None: the image processor's default (OpenAI CLIP)
    image_std: tuple[float, ...] | None = None
    added_tokens: tuple[str, ...] = ()
    named_tokens: dict | None = None  # named special tokens (InternVL's image tokens)
    image_processor: Callable | None = None  # () -> image processor; None = the Qwen PIL one, pinned to image_size

    @property
    def folder(self) -> str:
        return f"tiny-{self.model_type}"


KITS: dict[str, _Kit] = {
    FAMILIES["qwen2_5_vl"].kit: _Kit("qwen2_5_vl", _qwen2_5_config),
    FAMILIES["qwen2_vl"].kit: _Kit("qwen2_vl", _qwen2_config),
    FAMILIES["qwen3_vl"].kit: _Kit(
        "qwen3_vl", _qwen3_config, 16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), tuple(QWEN3_ADDED_TOKENS)
    ),
    FAMILIES["internvl"].kit: _Kit(
        "internvl",
        _internvl_config,
        named_tokens=INTERNVL_IMAGE_TOKENS,
        image_processor=lambda: GotOcr2ImageProcessorPil(size={"height": 448, "width": 448}, crop_to_patches=False),
    ),
}


def _kit(kit: str) -> _Kit:
    if kit not in KITS:
        raise ValueError(f"unknown tiny kit {kit!r}; use one of {sorted(KITS)}")
    return KITS[kit]


def _record(kit: str, spec) -> dict:
    sizes = {k: v for k, v in vars(spec).items() if not k.startswith("_")}
    return {"kit": kit, "model_type": KITS[kit].model_type, **sizes}


def kit_tokenizer(kit: str = "tiny", spec: type[TinySpec] = TinySpec) -> PreTrainedTokenizerFast:
    """The kit's tokenizer (trained here, deterministic) with its family's special tokens and chat template."""
    k = _kit(kit)
    return _build_tokenizer(spec.vocab_size, FAMILIES[k.model_type].chat_template, k.added_tokens, k.named_tokens)


def kit_config(kit: str, tokenizer, spec: type[TinySpec] = TinySpec):
    """The kit's model config for ``tokenizer`` (token ids) at the sizes of ``spec`` (tests and benchmarks
    build other sizes of the same architecture with it).

    Raises:
        ValueError: an unknown kit name.
    """
    build = _kit(kit).config
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS + list(INTERNVL_IMAGE_TOKENS.values())}
    return build(spec, ids, len(tokenizer))


def build_tiny_model(out_dir: str | Path, spec: type[TinySpec] = TinySpec, kit: str = "tiny") -> Path:
    """Build and save a tiny kit (model, tokenizer, processor) into ``out_dir``.

    Weights are random but deterministic (``torch.manual_seed(spec.seed)``), fp32. The folder loads
    with :func:`readl.model.loading.load_model` or the family's ``...ForConditionalGeneration.from_pretrained``
    plus ``AutoProcessor.from_pretrained``. The folder is written to a temporary sibling and renamed
    into place, so an interrupted build never leaves a half-written model.

    Args:
        out_dir: target folder; created (its parent too) if missing, replaced if it exists.
        spec: the sizes (see :class:`TinySpec`).
        kit: ``"tiny"`` (Qwen2.5-VL), ``"tiny-qwen2-vl"``, ``"tiny-qwen3-vl"`` or ``"tiny-internvl"`` (:data:`KITS`).

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        ValueError: an unknown kit name.
    """
    k = _kit(kit)
    family = FAMILIES[k.model_type]
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tok = kit_tokenizer(kit, spec)
    config = kit_config(kit, tok, spec)
    torch.manual_seed(spec.seed)
    model = family.load_class()(config).eval()
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tok.convert_tokens_to_ids("<|endoftext|>")
    if k.image_processor is not None:
        image_processor = k.image_processor()
    else:
        image_processor = fit_image_processor(
            pil_image_processor(k.patch_size, k.image_mean, k.image_std), spec.image_size
        )
    processor = family.processor(tok, image_processor, config=config)

    with atomic_dir(out_dir) as tmp:  # the mode of a plain mkdir (umask), replaces an older kit
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "readl_tiny.json").write_text(json.dumps(_record(kit, spec)))
    return out_dir


def default_kit_dir(kit: str = "tiny") -> Path:
    """Where a kit is cached: ``$READL_TINY_DIR`` for ``tiny``; else ``$READL_KITS_DIR/<folder>`` or
    ``~/.cache/readl/<folder>`` (folder ``tiny-qwen2_5_vl``, ``tiny-qwen2_vl``, ``tiny-qwen3_vl``)."""
    k = _kit(kit)
    env = os.environ.get("READL_TINY_DIR")
    if kit == "tiny" and env:
        return Path(env)
    root = os.environ.get("READL_KITS_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "readl") / k.folder


def default_tiny_dir() -> Path:
    """Where the ``tiny`` (Qwen2.5-VL) kit is cached (:func:`default_kit_dir`)."""
    return default_kit_dir("tiny")


def ensure_tiny_model(path: str | Path | None = None, kit: str = "tiny") -> Path:
    """Return a kit's folder, building it first if it is missing, incomplete or of other sizes / another kit.

    Args:
        path: folder to use; default :func:`default_kit_dir`.
        kit: the kit name (:data:`KITS`).
    """
    path = Path(path) if path is not None else default_kit_dir(kit)
    marker = path / "readl_tiny.json"
    try:
        current = json.loads(marker.read_text()) if marker.is_file() else None
    except (OSError, ValueError):
        current = None
    # a kit written before the record named its kit is the Qwen2.5-VL one
    if current is not None and "kit" not in current:
        current = {"kit": "tiny", "model_type": "qwen2_5_vl", **current}
    if current != _record(kit, TinySpec):
        build_tiny_model(path, kit=kit)
    return path
