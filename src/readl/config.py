"""Typed view of ``params.yaml``: one pydantic model per section (DVC reads the same file).

Unknown keys are errors (a typo in params.yaml must not silently fall back to a default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = ["ModelConfig", "ThresholdConfig", "LocalizationConfig", "Params", "load_params"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Section):
    """``model:`` the base model and how it is prompted and decoded."""

    base: str = "tiny"  # "tiny" (local random Qwen2.5-VL kit) | HF id | local folder
    image_size: int = Field(420, gt=0, multiple_of=28)  # paper Sec. 5.1: images resized to 420x420
    max_new_tokens: int = Field(256, gt=0)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(4, gt=0)


class ThresholdConfig(_Section):
    """One ReAL threshold: a rule applied to normalised token scores, or a fixed value."""

    rule: Literal["max_curvature", "median", "fixed"]
    value: float | None = None

    @model_validator(mode="after")
    def _fixed_needs_value(self):
        if self.rule == "fixed" and self.value is None:
            raise ValueError("rule 'fixed' needs a value")
        return self


class LocalizationConfig(_Section):
    """``localization:`` ReAL (paper Sec. 4.1)."""

    layers: list[int] | None = None  # decoder layers averaged (Eq. 1); null = all
    binarize: Literal["mean"] | float = "mean"  # S_I binarisation (Eq. 3): above the map mean, or a quantile
    alpha: float = 1.0  # Eq. 4 weight of S_T^
    beta: float = 1.0  # Eq. 4 weight of S_I^
    mode: Literal["all", "s_i", "s_t", "both"] = "both"  # token selection (paper Table 3)
    tau_t: ThresholdConfig = ThresholdConfig(rule="median")  # supplement Table 5: median for tau_t
    tau_i: ThresholdConfig = ThresholdConfig(rule="max_curvature")  # supplement Table 5: max curvature for tau_i


class Params(BaseModel):
    """All of ``params.yaml``; sections not yet modelled here are kept as plain dicts."""

    model_config = ConfigDict(extra="allow", frozen=True)

    model: ModelConfig = ModelConfig()
    localization: LocalizationConfig = LocalizationConfig()


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; a missing file gives the defaults.

    Raises:
        ValueError: the file is not valid YAML or a value is invalid; the message names the file and
            the offending keys.
    """
    path = Path(path)
    if not path.is_file():
        return Params()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return Params.model_validate(raw)
    except (yaml.YAMLError, ValidationError) as exc:
        raise ValueError(f"{path}: invalid parameters:\n{exc}") from exc
