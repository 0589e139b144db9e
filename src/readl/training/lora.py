"""LoRA on the language and cross-modal layers of Qwen2.5-VL, vision encoder frozen (paper Sec. 5.1).

Qwen2.5-VL (transformers 5) names its linear layers:

- text decoder: ``model.language_model.layers.N.self_attn.{q,k,v,o}_proj`` and ``...mlp.{gate,up,down}_proj``;
- vision-language merger (the cross-modal projector): ``model.visual.merger.mlp.0`` and ``...mlp.2``;
- vision blocks: ``model.visual.blocks.N.attn.{qkv,proj}`` and ``model.visual.blocks.N.mlp.{gate,up,down}_proj``
  -- the same leaf names as the decoder's MLP, so a plain list ``["gate_proj", ...]`` would also adapt the
  frozen vision encoder. PEFT treats a string ``target_modules`` as a regex that must match the FULL module
  name, which pins the adapter to the decoder and the merger.
"""

from __future__ import annotations

import re

from peft import LoraConfig

__all__ = ["DEFAULT_TARGET_REGEX", "lora_config", "lora_targets"]

# Decoder attention + MLP projections, and the merger's two linear layers. An optional "base_model.model."
# prefix (PeftModel) and an optional leading "model." keep it valid across wrappings.
DEFAULT_TARGET_REGEX = (
    r"(?:.*\.)?language_model\.layers\.\d+\.(?:self_attn\.(?:q|k|v|o)_proj|mlp\.(?:gate|up|down)_proj)"
    r"|(?:.*\.)?visual\.merger\.mlp\.(?:0|2)"
)


def lora_config(r: int, alpha: float, dropout: float, target_regex: str = DEFAULT_TARGET_REGEX) -> LoraConfig:
    """A causal-LM ``LoraConfig`` adapting the modules whose full name matches ``target_regex``.

    Args:
        r: rank (> 0). alpha: scaling numerator (``lora_alpha``; effective scale alpha / r).
        dropout: LoRA dropout probability in [0, 1).
        target_regex: PEFT full-match regex over module names (default: decoder q/k/v/o/gate/up/down + merger).

    Raises:
        ValueError: ``target_regex`` does not compile.
    """
    try:
        re.compile(target_regex)
    except re.error as exc:
        raise ValueError(f"train.lora.target_modules is not a valid regex: {exc}") from exc
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_regex, bias="none", task_type="CAUSAL_LM"
    )


def lora_targets(model, target_regex: str = DEFAULT_TARGET_REGEX) -> list[str]:
    """Names of ``model``'s ``nn.Linear`` modules that ``target_regex`` adapts (full match, as PEFT does).

    Raises:
        ValueError: nothing matches, or a vision-block module (``visual.blocks``) would be adapted.
    """
    import torch

    pattern = re.compile(target_regex)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and pattern.fullmatch(n)]
    if not names:
        raise ValueError(f"LoRA target regex {target_regex!r} matches no linear layer of this model")
    vision = [n for n in names if ".visual.blocks." in f".{n}"]
    if vision:
        raise ValueError(f"LoRA target regex would adapt the frozen vision encoder: {vision[:3]} ...")
    return names
