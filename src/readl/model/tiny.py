"""The tiny model kit: a real Qwen2.5-VL architecture with random weights, built locally.

Tests, CI and the embedded default pipeline (`model.base: tiny`) run on it: no network, no hub, no
torchvision. It is the real ``Qwen2_5_VLForConditionalGeneration`` class (vision tower with windowed
and full attention, patch merger, M-RoPE, GQA decoder), just small, with:

- a byte-level BPE tokenizer trained here on a small corpus of the prompt's words, the answer words
  and anomaly vocabulary, carrying Qwen's special tokens (``<|im_start|>``, ``<|image_pad|>`` ...) and
  Qwen2-VL's chat template, so prompting, image-token expansion and the Yes/No score run exactly as
  with the real tokenizer (any text still encodes: byte-level BPE has all 256 bytes);
- the PIL image processor set to keep 420x420 images at 420x420 (grid (1, 30, 30), 225 image tokens);
- the image-only processor (:class:`readl.model.processor.ReadlQwenProcessor`).

Everything is saved with ``save_pretrained`` and loads back with ``from_pretrained``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from readl.atomic import atomic_dir
from readl.model.processor import ReadlQwenProcessor, image_processor_for
from readl.model.prompting import ANOMALY_WORDS, QUESTION, SYSTEM_PROMPT

__all__ = ["QWEN_SPECIAL_TOKENS", "CHAT_TEMPLATE", "TinySpec", "build_tiny_model", "ensure_tiny_model"]

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip

# Qwen2-VL / Qwen2.5-VL chat template (as shipped in the official tokenizer_config.json).
CHAT_TEMPLATE = (
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


def _build_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    corpus = [SYSTEM_PROMPT, QUESTION, " ".join(ANOMALY_WORDS), _LEXICON] * 20
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=QWEN_SPECIAL_TOKENS,
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
        chat_template=CHAT_TEMPLATE,
    )
    # Qwen's tokenizer_config carries these two; the processor reads them.
    tok.image_token = "<|image_pad|>"
    tok.video_token = "<|video_pad|>"
    return tok


def build_tiny_model(out_dir: str | Path, spec: type[TinySpec] = TinySpec) -> Path:
    """Build and save the tiny Qwen2.5-VL (model, tokenizer, processor) into ``out_dir``.

    Weights are random but deterministic (``torch.manual_seed(spec.seed)``), fp32. The folder loads
    with :func:`readl.model.loading.load_model` or ``Qwen2_5_VLForConditionalGeneration.from_pretrained``
    plus ``ReadlQwenProcessor.from_pretrained``. The folder is written to a temporary sibling and renamed
    into place, so an interrupted build never leaves a half-written model.

    Args:
        out_dir: target folder; created (its parent too) if missing, replaced if it exists.
        spec: the sizes (see :class:`TinySpec`).

    Returns:
        ``out_dir`` as a ``Path``.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tok = _build_tokenizer(spec.vocab_size)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    head_dim = spec.text_hidden // spec.text_heads
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=spec.text_hidden,
            intermediate_size=spec.text_intermediate,
            num_hidden_layers=spec.text_layers,
            num_attention_heads=spec.text_heads,
            num_key_value_heads=spec.text_kv_heads,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": _mrope_section(head_dim)},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
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
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(spec.seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    processor = ReadlQwenProcessor(image_processor=image_processor_for(spec.image_size), tokenizer=tok)
    processor.chat_template = CHAT_TEMPLATE

    with atomic_dir(out_dir) as tmp:  # the mode of a plain mkdir (umask), replaces an older kit
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "readl_tiny.json").write_text(json.dumps({k: v for k, v in vars(spec).items() if not k.startswith("_")}))
    return out_dir


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (temporal, height, width) like Qwen's [16, 24, 24]."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def default_tiny_dir() -> Path:
    """Where the tiny kit is cached: ``$READL_TINY_DIR`` or ``~/.cache/readl/tiny-qwen2_5_vl``."""
    env = os.environ.get("READL_TINY_DIR")
    return Path(env) if env else Path.home() / ".cache" / "readl" / "tiny-qwen2_5_vl"


def ensure_tiny_model(path: str | Path | None = None) -> Path:
    """Return the tiny kit's folder, building it first if it is missing or incomplete.

    Args:
        path: folder to use; default :func:`default_tiny_dir`.
    """
    path = Path(path) if path is not None else default_tiny_dir()
    if not (path / "readl_tiny.json").is_file():
        build_tiny_model(path)
    return path
