"""Load the base Qwen2.5-VL (by HF id, local folder, or ``"tiny"``), its processor, and a LoRA adapter."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

from readl.localization.attention import CAPTURE_IMPLEMENTATION, register_capture
from readl.model.processor import Qwen2VLImageProcessorPil, ReadlQwenProcessor, register_auto_processor
from readl.model.tiny import CHAT_TEMPLATE, ensure_tiny_model

__all__ = ["TINY", "resolve_base", "pick_device_dtype", "load_processor", "load_model", "load_error_message"]

log = logging.getLogger(__name__)
TINY = "tiny"
def resolve_base(base: str | Path) -> str:
    """``"tiny"`` -> the tiny kit's folder (built on first use); anything else is returned as a string.

    Args:
        base: ``"tiny"``, a local folder, or a Hugging Face model id such as
            ``"Qwen/Qwen2.5-VL-7B-Instruct"``.
    """
    return str(ensure_tiny_model()) if str(base) == TINY else str(base)


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


def load_processor(base: str | Path) -> ReadlQwenProcessor:
    """The image-only processor for ``base`` (tokenizer + PIL image processor; no torchvision).

    Raises:
        ValueError: the tokenizer has no ``<|image_pad|>`` token, i.e. it is not a Qwen2.5-VL tokenizer.
    """
    register_auto_processor()  # AutoProcessor.from_pretrained on a readl folder gives this processor back
    path = resolve_base(base)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tokenizer.convert_tokens_to_ids("<|image_pad|>") in (None, tokenizer.unk_token_id):
        raise ValueError(f"{path}: tokenizer has no <|image_pad|> token; readl needs a Qwen2.5-VL model")
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(path)
    template = getattr(tokenizer, "chat_template", None) or CHAT_TEMPLATE
    return ReadlQwenProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)


def load_model(
    base: str | Path = TINY,
    adapter: str | Path | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> tuple[torch.nn.Module, ReadlQwenProcessor]:
    """Load the model (in eval mode, attention = SDPA with ReAL capture) and its processor.

    Args:
        base: ``"tiny"`` (local tiny kit), a local folder, or an HF id (``Qwen/Qwen2.5-VL-7B-Instruct``).
        adapter: folder of a PEFT LoRA adapter (``adapter_config.json`` inside) or ``None``.
        device, dtype: see :func:`pick_device_dtype` (default bf16 on GPU, fp32 on CPU).

    Returns:
        ``(model, processor)``; the model is a ``PeftModel`` when an adapter is given.

    Raises:
        ValueError: the checkpoint is not a Qwen2.5-VL model.
        FileNotFoundError: ``adapter`` is not a folder with ``adapter_config.json``.
    """
    path = resolve_base(base)
    dev, torch_dtype = pick_device_dtype(device, dtype)
    processor = load_processor(path)
    register_capture()  # importing readl registers nothing: the capture attention is registered here
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        path, dtype=torch_dtype, attn_implementation=CAPTURE_IMPLEMENTATION
    )
    if model.config.model_type != "qwen2_5_vl":
        raise ValueError(f"{path}: model_type is {model.config.model_type!r}; readl needs a Qwen2.5-VL model")
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
        return f"{base}: cannot load a Qwen2.5-VL model from this folder ({str(exc).splitlines()[0]})"
    return (f"{base}: not a local folder and not in the Hugging Face cache, and the hub cannot be reached (offline?). "
            f"Fix: download it once with network (`huggingface-cli download {base}`, or point HF_HOME at a cache "
            f"that has it), pass a local model folder, or use --model tiny")
