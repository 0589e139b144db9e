"""Load the base model (a tiny kit name, local folder or HF id), its processor, and a LoRA adapter.

Supported families (:mod:`readl.model.families`): Qwen2-VL, Qwen2.5-VL, Qwen3-VL, InternVL, detected from the
checkpoint's ``config.model_type``; ``tiny`` (Qwen2.5-VL), ``tiny-qwen2-vl``, ``tiny-qwen3-vl`` and
``tiny-internvl`` are the random-weight kits built offline (:mod:`readl.model.tiny`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoTokenizer

from readl.localization.attention import CAPTURE_IMPLEMENTATION, register_capture
from readl.model.families import FAMILIES, family_for_path, family_of
from readl.model.processor import register_auto_processor
from readl.model.tiny import KITS, ensure_tiny_model

__all__ = [
    "TINY",
    "KITS",
    "is_kit",
    "resolve_base",
    "base_digest",
    "BASE_HASH_MAX_BYTES",
    "pick_device_dtype",
    "load_processor",
    "load_model",
    "load_error_message",
]

log = logging.getLogger(__name__)
TINY = "tiny"
_SUPPORTED = ", ".join(f.label for f in FAMILIES.values())


def is_kit(base: str | Path) -> bool:
    """True for the names of the random-weight tiny kits (``tiny``, ``tiny-qwen2-vl``, ``tiny-qwen3-vl``,
    ``tiny-internvl``)."""
    return str(base) in KITS


def resolve_base(base: str | Path) -> str:
    """A kit name -> the kit's folder (built on first use); anything else is returned as a string.

    Args:
        base: ``"tiny"`` / ``"tiny-qwen2-vl"`` / ``"tiny-qwen3-vl"``, a local folder, or a Hugging Face model
            id such as ``"Qwen/Qwen3-VL-8B-Instruct"``.
    """
    return str(ensure_tiny_model(kit=str(base))) if is_kit(base) else str(base)


BASE_HASH_MAX_BYTES = 64 << 20  # local base model files above 64 MiB (weight shards) are hashed by name + size


def base_digest(base: str | Path) -> str | None:
    """Content hash of a local base model folder (a kit name resolves to one; files over
    :data:`BASE_HASH_MAX_BYTES` by name and size); None for a hub id (its name identifies it)."""
    from readl.digest import file_digest

    folder = Path(resolve_base(base))
    return file_digest([folder], max_bytes=BASE_HASH_MAX_BYTES) if folder.is_dir() else None


def pick_device_dtype(device: str | None = None, dtype: str | None = None) -> tuple[torch.device, torch.dtype]:
    """The device (CUDA when available) and dtype (bf16 on GPU, fp32 on CPU) unless given.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...; ``None`` = auto.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` or ``None``/``"auto"``.

    Raises:
        ValueError: an unknown dtype name.
    """
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype in (None, "auto"):
        return dev, torch.bfloat16 if dev.type == "cuda" else torch.float32
    try:
        return dev, {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16, float16 or auto") from None


def load_processor(base: str | Path):
    """The family's image-only processor for ``base`` (tokenizer + PIL image processor; no torchvision).

    The chat template is the tokenizer's own, else the family's (:mod:`readl.model.families`).

    Raises:
        ValueError: the tokenizer has no image token (``<|image_pad|>``), or the checkpoint's ``model_type`` is
            not a supported family.
        OSError: no config can be read for ``base`` (from transformers).
    """
    register_auto_processor()  # AutoProcessor.from_pretrained on a readl folder gives this processor back
    path = resolve_base(base)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    tokens = sorted({f.image_token for f in FAMILIES.values()})
    if all(tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id) for t in tokens):
        raise ValueError(f"{path}: tokenizer has no {'/'.join(tokens)} token; readl needs a {_SUPPORTED} model")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    family = family_of(config)
    return family.processor(tokenizer, family.image_processor_class.from_pretrained(path), config=config)


def load_model(
    base: str | Path = TINY,
    adapter: str | Path | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> tuple[torch.nn.Module, object]:
    """Load the model (in eval mode, attention = SDPA with ReAL capture) and its processor.

    Args:
        base: a tiny kit name (:func:`is_kit`), a local folder, or an HF id (``Qwen/Qwen2.5-VL-7B-Instruct``,
            ``Qwen/Qwen3-VL-8B-Instruct`` ...) of a supported family.
        adapter: folder of a PEFT LoRA adapter (``adapter_config.json`` inside) or ``None``.
        device, dtype: see :func:`pick_device_dtype` (default bf16 on GPU, fp32 on CPU).

    Returns:
        ``(model, processor)``; the model is a ``PeftModel`` when an adapter is given; the processor is the
        family's image-only one.

    Raises:
        ValueError: the checkpoint's ``model_type`` is not a supported family.
        FileNotFoundError: ``adapter`` is not a folder with ``adapter_config.json``.
    """
    path = resolve_base(base)
    dev, torch_dtype = pick_device_dtype(device, dtype)
    family = family_for_path(path)
    processor = load_processor(path)
    register_capture()  # importing readl registers nothing: the capture attention is registered here
    model = family.load_class().from_pretrained(path, dtype=torch_dtype, attn_implementation=CAPTURE_IMPLEMENTATION)
    if adapter is not None:
        adapter = Path(adapter)
        if not (adapter / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"{adapter}: no adapter_config.json; pass the folder written by `readl train` (models/adapter)"
            )
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    log.info("loaded %s%s on %s (%s)", path, f" + {adapter}" if adapter else "", dev, torch_dtype)
    return model.to(dev).eval(), processor


def load_error_message(base: str | Path, exc: OSError) -> str:
    """One line for a base model that :func:`load_model` could not open (``OSError`` from transformers / the hub):
    the folder or HF id, what is wrong and the fix (commands print it instead of a traceback)."""
    if Path(base).exists():
        return f"{base}: cannot load a {_SUPPORTED} model from this folder ({str(exc).splitlines()[0]})"
    return (
        f"{base}: not a local folder and not in the Hugging Face cache, and the hub cannot be reached (offline?). "
        f"Fix: download it once with network (`huggingface-cli download {base}`, or point HF_HOME at a cache "
        f"that has it), pass a local model folder, or use --model tiny (or tiny-qwen2-vl, tiny-qwen3-vl, tiny-internvl)"
    )
