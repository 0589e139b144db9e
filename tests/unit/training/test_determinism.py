"""One result per commit: seeded runs repeat bit for bit, the thread count is a parameter, rows are balanced."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from readl.config import Params, RuntimeConfig
from readl.runtime import configure
from readl.training.data import balanced_rows
from readl.training.trl_adapter import GRPOAdapter


def test_balanced_rows_repeat_the_minority_until_both_labels_count_alike():
    labels = [1, 1, 1, 1, 1, 0, 0, 1]  # 6 anomalous, 2 normal
    rows = balanced_rows(labels, seed=0)
    assert rows[:8] == list(range(8))  # every row once, in order
    picked = np.asarray(labels)[rows]
    assert (picked == 0).sum() == (picked == 1).sum() == 6
    assert Counter(rows[8:]) == {5: 2, 6: 2}  # only normal rows are repeated, each twice (cycled permutation)
    assert balanced_rows(labels, seed=0) == rows  # seeded
    assert balanced_rows([0, 0, 0], seed=0) == [0, 1, 2] and balanced_rows([0, 1], seed=3) == [0, 1]


@pytest.fixture
def restore_runtime():
    """The stages set torch's threads and deterministic mode for the process: put them back after a test."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def test_runtime_pins_threads_and_deterministic_algorithms(restore_runtime):
    torch.use_deterministic_algorithms(False)
    record = configure(RuntimeConfig(threads=1, deterministic=True))
    assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
    assert record["threads"] == 1 and record["deterministic"] is True and record["torch"] == torch.__version__
    with pytest.raises(ValueError):
        RuntimeConfig(threads=0)


def _files(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` but ``readl_base.json`` (it names the MLflow run: a new id per run)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "readl_base.json"
    }


@pytest.mark.slow
def test_warmup_then_train_twice_gives_identical_weights_and_completions(
    tiny_dir, sample_dir, tmp_path, monkeypatch, restore_runtime, resolve_model_calls
):
    """The pipeline's two learning stages, run twice with the same params on one machine: byte-identical warm
    start and adapter files, and the same sampled GRPO completions (token ids) at every step."""
    from readl.stages.train import run as train
    from readl.stages.warmup import run as warmup

    paths = sorted((sample_dir / "hazelnut_toy/hazelnut/train/good").glob("*.jpg"))[:3]
    paths += sorted((sample_dir / "hazelnut_toy/hazelnut/test/colour").glob("*.jpg"))[:5]
    frame = pd.DataFrame(
        {
            "image_path": [str(p) for p in paths],
            "label": [0] * 3 + [1] * 5,
            "source": "s",
            "category": "hazelnut",
            "defect_type": ["good"] * 3 + ["colour"] * 5,
        }
    )
    manifest = tmp_path / "train.parquet"
    frame.to_parquet(manifest)
    params = Params.model_validate(
        {
            "runtime": {"threads": 1},
            "model": {"base": "tiny", "image_size": 112},
            "warmup": {"max_steps": 4, "per_device_train_batch_size": 4, "logging_steps": 2, "save_steps": 100},
            "train": {
                "max_steps": 2,
                "num_generations": 2,
                "per_device_train_batch_size": 4,
                "max_completion_length": 8,
                "save_steps": 100,
                "lora": {"r": 4, "alpha": 8},
                "consistency": {"require_format": False},
            },
        }
    )
    completions: list[list[list[int]]] = []
    original = GRPOAdapter._calculate_rewards

    def record(self, inputs, prompts, completions_, completion_ids_list):
        completions[-1].append([list(map(int, c)) for c in completion_ids_list])
        return original(self, inputs, prompts, completions_, completion_ids_list)

    monkeypatch.setattr(GRPOAdapter, "_calculate_rewards", record)
    runs = []
    for attempt in ("a", "b"):
        out = tmp_path / attempt
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / attempt}.db")
        monkeypatch.chdir(tmp_path)  # each attempt its own folder; train's base is <output_dir>/warmup
        completions.append([])
        warm = warmup(params, manifest=manifest, output_dir=out, device="cpu", root="/")
        monkeypatch.chdir(out.parent)
        Path("models").unlink(missing_ok=True)
        Path("models").symlink_to(out)
        # as dvc runs it: output_dir "models" (relative; the adapter config names its base, models/warmup)
        record_ = train(params, manifest=manifest, output_dir=Path("models"), device="cpu", root="/")
        assert warm["global_step"] == 4 and record_["global_step"] == 2 and record_["runtime"]["threads"] == 1
        assert len(resolve_model_calls) == len(runs) + 1  # train decides its model once (warmup: model.base)
        assert record_["base"] == str(Path("models") / "warmup")
        runs.append((_files(out / "warmup"), _files(out / "adapter")))
    assert "model.safetensors" in runs[0][0] and "adapter_model.safetensors" in runs[0][1]
    assert runs[0] == runs[1]  # every file of the warm start and of the adapter, byte for byte
    assert len(completions[0]) == 2 and completions[0] == completions[1]  # 2 steps of sampled token ids
