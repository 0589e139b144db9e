"""LoRA on the language and cross-modal layers of the VLM, vision encoder frozen (paper Sec. 5.1).

Each backbone family names its targets (:attr:`readl.model.families.Family.lora_target_regex`;
:func:`default_target_regex` picks the model's). Qwen2.5-VL (transformers 5) names its linear layers:

- text decoder: ``model.language_model.layers.N.self_attn.{q,k,v,o}_proj`` and ``...mlp.{gate,up,down}_proj``;
- vision-language merger (the cross-modal projector): ``model.visual.merger.mlp.0`` and ``...mlp.2``;
- vision blocks: ``model.visual.blocks.N.attn.{qkv,proj}`` and ``model.visual.blocks.N.mlp.{gate,up,down}_proj``
  -- the same leaf names as the decoder's MLP, so a plain list ``["gate_proj", ...]`` would also adapt the
  frozen vision encoder. PEFT treats a string ``target_modules`` as a regex that must match the FULL module
  name, which pins the adapter to the decoder and the merger.

Qwen2-VL has the same decoder and merger names (its vision blocks use ``mlp.fc1/fc2``). Qwen3-VL's merger and
its DeepStack mergers (``visual.deepstack_merger_list.N``, which feed vision features into the first decoder
layers: cross-modal layers too) are ``linear_fc1`` / ``linear_fc2``. InternVL: the decoder (Qwen2) as above and
``multi_modal_projector.linear_{1,2}``; its vision encoder is ``vision_tower`` (``mlp.fc1/fc2`` there).
"""

from __future__ import annotations

import re

from peft import LoraConfig

from readl.model.families import QWEN2_TARGET_REGEX, family_of

__all__ = ["DEFAULT_TARGET_REGEX", "default_target_regex", "lora_config", "lora_targets"]

# Qwen2-VL / Qwen2.5-VL: decoder attention + MLP projections, and the merger's two linear layers.
DEFAULT_TARGET_REGEX = QWEN2_TARGET_REGEX


def default_target_regex(model) -> str:
    """The LoRA target regex of ``model``'s family (``train.lora.target_modules: null``).

    Raises:
        ValueError: an unsupported ``model_type``.
    """
    return family_of(model).lora_target_regex


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


def lora_targets(model, target_regex: str | None = None) -> list[str]:
    """Names of ``model``'s ``nn.Linear`` modules that ``target_regex`` adapts (full match, as PEFT does);
    ``None`` = the family's default (:func:`default_target_regex`).

    Raises:
        ValueError: nothing matches, or a vision-encoder module (``visual.blocks``, InternVL ``vision_tower``)
            would be adapted.
    """
    import torch

    target_regex = target_regex if target_regex is not None else default_target_regex(model)
    pattern = re.compile(target_regex)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and pattern.fullmatch(n)]
    if not names:
        raise ValueError(f"LoRA target regex {target_regex!r} matches no linear layer of this model")
    prefix = family_of(model).vision_prefix  # "visual.blocks." (Qwen), "vision_tower." (InternVL)
    vision = [n for n in names if f".{prefix}" in f".{n}"]
    if vision:
        raise ValueError(f"LoRA target regex would adapt the frozen vision encoder: {vision[:3]} ...")
    return names
