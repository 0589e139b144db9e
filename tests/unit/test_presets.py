"""The paper recipe is one named preset: applied to params.yaml it gives the paper's values (Sec. 5.1, supplement
Tables 4-5), with warm-up off, and every value the paper does not give is marked as ours."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from readl.presets import PAPER, apply_preset
from readl.training.lora import default_target_regex, lora_targets

REPO = Path(__file__).resolve().parents[2]


def test_paper_preset_gives_the_papers_values():
    raw, p = apply_preset(yaml.safe_load((REPO / "params.yaml").read_text()), "paper")
    t = p.train
    assert p.model.base == "Qwen/Qwen2.5-VL-7B-Instruct" and p.model.image_size == 420
    assert p.warmup.enabled is False  # no cold start: GRPO starts from the Instruct model
    assert t.num_generations == 8
    # 16 images x G 8 per optimizer step on the README's 2 GPUs
    assert 2 * t.per_device_train_batch_size * t.gradient_accumulation_steps == 16 * t.num_generations
    assert (t.consistency.k, t.consistency.delta1, t.consistency.delta2, t.consistency.quantile) == (3, 0.3, 0.1, 0.95)
    for loc in (p.localization, t.localization):
        assert (loc.tau_i.rule, loc.tau_t.rule) == ("max_curvature", "median")
    assert t.rewards == ["format", "accuracy", "consistency"] and t.lora.target_modules is None
    assert [s.name for s in p.curate.eval] == ["mvtec_ad", "wfdd", "sdd", "dtd"]
    assert sum(s.normal + s.anomalous for s in p.curate.train) == 4000  # ~4K training images (Sec. 5.1)
    assert raw["runtime"] == yaml.safe_load((REPO / "params.yaml").read_text())["runtime"]  # the rest is kept


def test_every_preset_value_names_its_source():
    for key, (_, source) in PAPER.items():
        assert source.startswith(("paper ", "ours")), (key, source)
    ours = {k for k, (_, s) in PAPER.items() if s.startswith("ours")}
    assert {
        "train.learning_rate",
        "train.lora.r",
        "train.beta",
        "train.epsilon",
        "train.max_completion_length",
        "train.accuracy_requires_format",
        "train.consistency.require_format",
    } <= ours


def test_lora_of_the_preset_covers_language_and_merger_never_vision(tiny):
    model, _ = tiny
    _, p = apply_preset({}, "paper")
    names = lora_targets(model, p.train.lora.target_modules or default_target_regex(model))  # null = the family's
    assert any(".visual.merger" in n or "merger" in n for n in names)
    assert any("language_model" in n or ".layers." in n for n in names)
    assert not any(".visual.blocks." in n for n in names)


def test_cli_writes_the_preset_and_refuses_an_unknown_one(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    readl = [sys.executable, "-m", "readl.cli"]
    bad = subprocess.run([*readl, "preset", "nope", "--params", str(params)], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown preset 'nope'" in bad.stderr and "paper" in bad.stderr
    assert params.read_text() == (REPO / "params.yaml").read_text()  # nothing written
    ok = subprocess.run(
        [*readl, "preset", "paper", "--params", str(params)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert ok.returncode == 0, ok.stderr
    assert "ours: the paper gives no learning rate" in ok.stdout
    assert yaml.safe_load(params.read_text())["warmup"]["enabled"] is False
