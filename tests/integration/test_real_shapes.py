"""benchmarks/real_shapes.py on its smallest published configuration (Qwen2-VL-2B: hidden 1536, 12 query heads over 2
key/value heads, head dim 128, 152k vocabulary), random weights on CPU, and its memory plan."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _benchmark():
    spec = importlib.util.spec_from_file_location("real_shapes", REPO / "benchmarks/real_shapes.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["real_shapes"] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_smallest_real_configuration_captures_exactly_and_adapts_no_vision_block(sample_images):
    row = _benchmark().measure("qwen2-vl-2b", layers=1, rank=16, images=sample_images[:2])
    assert row.shape == "1536/12q/2kv/d128" and row.grid == "15x15"  # 420 px / 14 px patches / merge 2
    assert row.diff <= 1e-5  # capture == eager output_attentions at 6:1 grouping and head dim 128
    assert row.lora == row.lora_shapes == 18_735_104  # full depth (meta device) = r x (in + out) per layer
    assert row.vision_lora == 0
    # one CGRO step (LoRA, G = 2, capture pass) ran through readl's trainer
    step = row.cgro_stats
    assert 0 < row.cgro_step_s < 600
    assert math.isfinite(step["loss"]) and math.isfinite(step["grad_norm"])
    assert step["completions/mean_length"] > 0  # the G rollouts were sampled
    assert step["consistency/capture_s"] > 0  # the consistency reward's capture pass ran
    # a reward spread moves the LoRA weights; random weights' rollouts all score 0 (no advantage, no gradient)
    assert (row.lora_change > 0) == (step["reward_std"] > 0)


def test_the_memory_plan_follows_its_formula():
    plan = _benchmark()
    fixed, ckpt, plain = plan.memory_plan("qwen2.5-vl-7b")
    assert 15 < fixed < 17  # ~8.3 B parameters in bf16 + LoRA state
    assert 0.5 < ckpt < plain  # checkpointing keeps one layer's activations, not 28
    assert plan.fits(fixed, ckpt, 80) > plan.fits(fixed, ckpt, 48) > plan.fits(fixed, plain, 48) >= 0
