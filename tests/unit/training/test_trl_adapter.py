"""readl.training.trl_adapter: the one module that overrides TRL's private GRPOTrainer methods.

Pins the TRL release the overrides were written against, and the private methods' signatures: after a TRL
upgrade these fail first, saying what to re-check (issue 13, item 5).
"""

from __future__ import annotations

import inspect

import pytest
import torch
import trl
from trl import GRPOTrainer

from readl.config import Params
from readl.training.train import grpo_args
from readl.training.trainer import CGROTrainer
from readl.training.trl_adapter import PRIVATE_OVERRIDES, TRL_VERSION, GRPOAdapter, run_args
from readl.training.warmup import sft_args


def test_trl_is_the_version_the_adapter_was_written_against():
    assert trl.__version__ == TRL_VERSION, (
        f"TRL is {trl.__version__}, readl.training.trl_adapter was written against TRL {TRL_VERSION}: re-read "
        f"GRPOTrainer.{', .'.join(PRIVATE_OVERRIDES)} and _generate_and_score_completions (the extra_fields merge "
        f"into the rows before _calculate_rewards) in the new release, adapt GRPOAdapter, then update TRL_VERSION"
    )


def test_the_overridden_private_methods_still_exist_with_the_same_parameters():
    for name, params in PRIVATE_OVERRIDES.items():
        method = getattr(GRPOTrainer, name, None)
        assert method is not None, f"TRL {trl.__version__} has no GRPOTrainer.{name}: adapt readl.training.trl_adapter"
        got = tuple(p for p in inspect.signature(method).parameters if p != "self")
        assert got == params, f"GRPOTrainer.{name}{got} != the {params} GRPOAdapter overrides: adapt trl_adapter"


def test_only_the_adapter_overrides_trl_private_methods():
    """CGROTrainer uses the adapter's public hooks; no other readl class redefines a private GRPOTrainer method."""
    private = {
        n
        for n, _ in inspect.getmembers(GRPOTrainer, inspect.isfunction)
        if n.startswith("_") and not n.startswith("__")
    }
    assert set(PRIVATE_OVERRIDES) <= private
    assert private & set(vars(GRPOAdapter)) == set(PRIVATE_OVERRIDES)
    assert not private & set(vars(CGROTrainer)), sorted(private & set(vars(CGROTrainer)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grpo_and_sft_configs_share_the_run_args(tmp_path, dtype):
    """Precision follows the loaded model (never TRL's default bf16=True) in both trainers' configs."""
    model = torch.nn.Linear(2, 2).to(dtype)
    params = Params.model_validate({"warmup": {"learning_rate": 3e-5, "seed": 7}, "train": {"logging_steps": 3}})
    shared = run_args(model, params.train, tmp_path)
    assert shared["bf16"] == (dtype == torch.bfloat16) and not shared["fp16"] and shared["use_cpu"]
    for section, args in (
        (params.train, grpo_args(params, tmp_path, model)),
        (params.warmup, sft_args(params, tmp_path, model)),
    ):
        assert (args.bf16, args.fp16, args.use_cpu) == (shared["bf16"], False, True)
        assert (args.learning_rate, args.seed, args.logging_steps, args.save_steps) == (
            section.learning_rate,
            section.seed,
            section.logging_steps,
            section.save_steps,
        )
        assert args.save_strategy == "steps" and args.report_to == []
        assert not args.remove_unused_columns and args.dataloader_num_workers == 0 and args.disable_tqdm


def test_warmup_weight_decay_reaches_the_sft_config(tmp_path):
    """``warmup.weight_decay`` is AdamW's (a lever of benchmarks/robustness.py); the default stays 0 (no decay)."""
    model = torch.nn.Linear(2, 2)
    assert sft_args(Params(), tmp_path, model).weight_decay == 0.0
    params = Params.model_validate({"warmup": {"weight_decay": 0.05}})
    assert sft_args(params, tmp_path, model).weight_decay == 0.05
    with pytest.raises(ValueError, match="weight_decay"):
        Params.model_validate({"warmup": {"weight_decay": -1}})
