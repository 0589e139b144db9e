"""What a training run did, from the trainer's log records and the saved adapter (``models/train_run.json``).

The numbers that say whether GRPO had anything to learn from (paper Eq. 9-10: the advantage of a rollout is its
reward minus its group's mean, so a group whose G rewards are all equal contributes no gradient):

- ``frac_reward_zero_std`` (TRL): per log record, the share of groups (the G rollouts of one image) whose rewards
  all tie. A step counts as *learning* when this is < 1, i.e. at least one group had a non-zero reward std.
- ``max_abs_lora_B``: the largest |entry| of the adapter's LoRA B matrices. PEFT initialises every B to 0, so 0
  means the adapter is still its initialisation (no update reached it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["log_summary", "max_abs_lora_b", "train_summary"]


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(sum(vals) / len(vals)) if vals else None


def log_summary(log_history: Iterable[Mapping]) -> dict:
    """Summary of a ``Trainer``'s ``state.log_history`` (one record per ``train.logging_steps`` steps).

    Args:
        log_history: the trainer's log records; those without a ``reward`` key (the final train summary, eval
            records) are skipped. With ``logging_steps > 1`` each record averages its window (TRL), so the
            counts below are per log record, not per step.

    Returns:
        ``{"n_logged_steps", "frac_steps_nonzero_reward_std"`` (share of records with
        ``frac_reward_zero_std < 1``), ``"reward_std_mean"``, ``"frac_reward_zero_std_mean"``, ``"reward_mean"``,
        ``"J_mean"`` (mean of ``consistency/J_mean``; None without the consistency reward) and
        ``"rewards": {name: mean of rewards/<name>/mean}``}``. Means are over records; None when absent.
    """
    records = [r for r in log_history if "reward" in r]
    col = lambda key: [float(r[key]) for r in records if isinstance(r.get(key), (int, float))]  # noqa: E731
    zero = col("frac_reward_zero_std")
    names = sorted({k.split("/")[1] for r in records for k in r if k.startswith("rewards/") and k.endswith("/mean")})
    return {
        "n_logged_steps": len(records),
        "frac_steps_nonzero_reward_std": (sum(z < 1 for z in zero) / len(zero)) if zero else None,
        "reward_std_mean": _mean(col("reward_std")),
        "frac_reward_zero_std_mean": _mean(zero),
        "reward_mean": _mean(col("reward")),
        "J_mean": _mean(col("consistency/J_mean")),
        "rewards": {n: _mean(col(f"rewards/{n}/mean")) for n in names},
    }


def max_abs_lora_b(adapter_dir: str | Path) -> float:
    """Largest |value| over the ``lora_B`` tensors of a saved PEFT adapter (``adapter_model.safetensors``).

    Raises:
        FileNotFoundError: no ``adapter_model.safetensors`` in ``adapter_dir``.
        ValueError: the file holds no ``lora_B`` tensor (not a LoRA adapter).
    """
    from safetensors import safe_open

    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no adapter weights (run `readl train`)")
    best, found = 0.0, False
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            if "lora_B" in key:
                found = True
                best = max(best, float(f.get_tensor(key).abs().max()))
    if not found:
        raise ValueError(f"{path}: no lora_B tensors; not a LoRA adapter")
    return best


def train_summary(log_history: Iterable[Mapping], adapter_dir: str | Path) -> dict:
    """:func:`log_summary` plus ``max_abs_lora_B`` of the adapter in ``adapter_dir``."""
    return {**log_summary(log_history), "max_abs_lora_B": max_abs_lora_b(adapter_dir)}
