"""The supervised cold start (readl warmup): targets from image-level information only, the weighted token
loss, and a seeded warm start that teaches the tiny random model the answer format."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from readl.config import Params, WarmupConfig, load_params
from readl.model.prompting import parse_completion
from readl.paths import ModelRef, Paths, resolve_model
from readl.training.reasoning_targets import OPENING, POOLS, target_completion, targets_for, template_reasoning
from readl.training.warmup import sft_dataset, token_weights_from_labels

REPO = Path(__file__).resolve().parents[3]


def test_templates_use_image_level_information_only():
    frame = pd.DataFrame(
        {
            "image_path": ["a/x.png", "a/y.png", "b/z.png"],
            "label": [1, 0, 1],
            "category": ["hazelnut", "metal_plate", "grid"],
            "defect_type": ["colour", "good", "cutpaste"],
            "mask_path": ["m/x.png", None, "m/z.png"],
        }
    )
    with_masks = targets_for(frame, seed=0)
    without = targets_for(frame.drop(columns=["mask_path"]), seed=0)
    assert with_masks == without  # masks never shape the targets
    for text, label in zip(with_masks, frame["label"]):
        parsed = parse_completion(text)
        assert parsed.format_ok and parsed.answer == ("Yes" if label else "No")
        assert parsed.reasoning.startswith(OPENING[label])  # the decision opens the reasoning
    # the image's own category; defects in an inspector's words, a synthetic recipe never by its name
    assert "discoloured patch" in with_masks[0] and "metal plate" in with_masks[1] and "grid" in with_masks[2]
    assert "displaced patch" in with_masks[2].lower() and "cutpaste" not in with_masks[2].lower()
    assert targets_for(frame, seed=0) == with_masks  # stable


def test_targets_do_not_depend_on_where_the_repository_is():
    """The phrase of each row is keyed by the image's content (pHash) and name, not its folder: a clone elsewhere
    (or data reached through a symlink, as in benchmarks/robustness.py) trains on the same targets."""
    names = [f"{i:03d}.png" for i in range(40)]
    frame = pd.DataFrame(
        {
            "image_path": [f"/home/a/readl/data/curated/images/train/s/c/{n}" for n in names],
            "label": [i % 2 for i in range(40)],
            "category": "bottle",
            "defect_type": ["good", "draem"] * 20,
            "phash": [f"{i:016x}" for i in range(40)],
        }
    )
    moved = frame.assign(image_path=[f"/tmp/x/y/data/curated/images/train/s/c/{n}" for n in names])
    assert targets_for(moved, seed=0) == targets_for(frame, seed=0)
    assert targets_for(frame, seed=1) != targets_for(frame, seed=0)  # the phrase seed still matters


def _four_grams(sentence: str) -> set[tuple[str, ...]]:
    """Word 4-grams of a template sentence, its placeholders read as one word each ({category} == {obj})."""
    text = re.sub(r"\{(category|obj)\}", " OBJ ", sentence)
    text = re.sub(r"\{(defect|Defect|what)\}", " WHAT ", text).lower()
    words = re.findall(r"[a-z]+", text)
    return {tuple(words[i : i + 4]) for i in range(len(words) - 3)}


def test_warmup_phrases_share_no_sentence_with_the_references():
    """Separate phrase pools (issue: ROUGE-L / SBERT rewarded copying the warm-up's targets, near-copies of the
    references): no 4-word sequence of a warm-up sentence is in a reference sentence."""
    from readl.data.references import REFERENCE_SENTENCES

    refs = set().union(*(_four_grams(r) for r in REFERENCE_SENTENCES.values()))
    for label, pool in POOLS.items():
        for sentence in (OPENING[label], *pool):
            assert not _four_grams(sentence) & refs, sentence


def test_reasoning_metrics_do_not_reward_copying_the_warmup_targets():
    """The issue's examples, scored: a copy of the reference scores 1, every warm-up target far less (ROUGE-L
    <= 0.4, SBERT < 0.9: it is not the reference), and the wrong-label targets less than the right-label ones."""
    from readl.data.references import template_reference
    from readl.evaluation.reasoning import rouge_l, sbert_cosine

    ref = template_reference("grid", "bent", 1)
    right = [f"{OPENING[1]} " + p.format(category="grid", defect="a bent part", Defect="A bent part") for p in POOLS[1]]
    wrong = [f"{OPENING[0]} " + p.format(category="grid") for p in POOLS[0]]
    texts = [ref, *right, *wrong]
    rouge, sbert = rouge_l(texts, [ref] * len(texts)), sbert_cosine(texts, [ref] * len(texts))
    n = len(right)
    assert rouge[0] == pytest.approx(1.0) and sbert[0] == pytest.approx(1.0, abs=1e-5)
    assert rouge[1 : n + 1].max() <= 0.4 and sbert[1 : n + 1].max() < 0.9
    # SBERT ranks every wrong-label text below every right-label one; ROUGE-L (word overlap) only on average
    assert sbert[n + 1 :].max() < sbert[1 : n + 1].min() and rouge[n + 1 :].mean() < rouge[1 : n + 1].mean()


def test_reasoning_column_is_used_when_present():
    frame = pd.DataFrame(
        {
            "image_path": ["a.png", "b.png"],
            "label": [1, 0],
            "category": ["pill", "pill"],
            "reasoning": ["A crack runs across the pill.", None],
        }
    )
    out = targets_for(frame)
    assert out[0] == target_completion("A crack runs across the pill.", 1)
    assert out[1].startswith("<think>" + OPENING[0])
    with pytest.raises(ValueError, match="label"):
        template_reasoning(2, "pill", None, key="x")


def test_token_weights_mark_the_decision_and_the_answer_word():
    think, answer, space = [7, 8], [9], {5}
    # labels: -100 prompt, then <think>(7 8) d1 d2 r r </think>(6) <answer>(9) ' '(5) Yes(3) end(4)
    labels = torch.tensor([[-100, -100, 7, 8, 11, 12, 13, 13, 6, 9, 5, 3, 4]])
    w = token_weights_from_labels(
        labels, think, answer, space, decision_tokens=2, decision_weight=10.0, answer_weight=4.0
    )
    assert w.tolist()[0] == [0, 0, 1, 1, 10, 10, 1, 1, 1, 1, 1, 4, 1]


def test_sft_rows_never_carry_masks(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 40), (10, 20, 30)).save(tmp_path / "a.png")
    frame = pd.DataFrame({"image_path": [str(tmp_path / "a.png")], "label": [1], "mask_path": ["/nonexistent.png"]})
    row = sft_dataset(frame, 28, ["<think>x</think><answer>Yes</answer>"])[0]
    assert set(row) == {"prompt", "completion", "image"} and row["image"].size == (28, 28)


def test_augment_is_a_seeded_symmetry_of_the_square():
    from PIL import Image

    from readl.training.warmup import augment

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    a = [np.asarray(augment(img, np.random.default_rng([0, r, 0]), grayscale=0.0)) for r in range(40)]
    b = [np.asarray(augment(img, np.random.default_rng([0, r, 0]), grayscale=0.0)) for r in range(40)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # seeded
    symmetries = [np.rot90(m, k) for m in (arr, arr[:, ::-1]) for k in range(4)]
    assert all(any(np.array_equal(x, s) for s in symmetries) for x in a)  # pixels moved, never changed
    assert len({x.tobytes() for x in a}) == 8  # all 8 symmetries occur
    grey = np.asarray(augment(img, np.random.default_rng(1), grayscale=1.0))
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def test_sft_dataset_reads_are_grey_with_the_given_probability(tmp_path):
    """``warmup.augment_grayscale`` reaches every augmented read: 1 = every read grey, 0 = never."""
    from PIL import Image

    Image.new("RGB", (28, 28), (200, 20, 30)).save(tmp_path / "a.png")
    frame = pd.DataFrame({"image_path": [str(tmp_path / "a.png")], "label": [1]})
    for p, grey in ((1.0, True), (0.0, False)):
        ds = sft_dataset(frame, 28, ["<think>x</think><answer>Yes</answer>"], augment_seed=0, grayscale=p)
        for _ in range(5):
            px = np.asarray(ds[0]["image"])
            assert (px[..., 0] == px[..., 1]).all() == grey


def test_the_stages_model_follows_warmup(tmp_path, caplog):
    paths = Paths(tmp_path)
    assert resolve_model(Params(), paths) == ModelRef("tiny", "tiny") and "run `dvc repro warmup`" in caplog.text
    (tmp_path / "warmup").mkdir()
    (tmp_path / "warmup" / "config.json").write_text("{}")
    warm = resolve_model(Params(), paths)
    assert warm == ModelRef(str(tmp_path / "warmup"), "tiny") and warm.warm_started
    assert resolve_model(Params(warmup=WarmupConfig(enabled=False)), paths) == ModelRef("tiny", "tiny")
    assert load_params(REPO / "params.yaml").warmup.enabled


@pytest.mark.slow
def test_warm_start_teaches_the_answer_format(tiny_dir, sample_dir, tmp_path, monkeypatch):
    """Seeded SFT of the tiny random kit on bundled images: format rate 0 before, >= 0.9 after."""
    from PIL import Image

    from readl.model.inference import GenerationSettings, Predictor
    from readl.model.loading import load_model
    from readl.stages.warmup import run as warmup

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    paths = sorted((sample_dir / "hazelnut_toy/hazelnut/train/good").glob("*.jpg"))[:6]
    paths += sorted((sample_dir / "hazelnut_toy/hazelnut/test/colour").glob("*.jpg"))[:6]
    frame = pd.DataFrame(
        {
            "image_path": [str(p) for p in paths],
            "label": [0] * 6 + [1] * 6,
            "category": "hazelnut",
            "defect_type": ["good"] * 6 + ["colour"] * 6,
        }
    )
    manifest = tmp_path / "train.parquet"
    frame.to_parquet(manifest)
    params = Params.model_validate(
        {
            "model": {"base": "tiny", "image_size": 112},
            "warmup": {
                "max_steps": 200,
                "per_device_train_batch_size": 4,
                "logging_steps": 40,
                "save_steps": 100,
                "lr_scheduler_type": "constant",
            },  # at full rate (the default decays to 0)
        }
    )
    images = [Image.open(p).convert("RGB") for p in paths[::2]]

    def format_rate(base: str) -> float:
        model, processor = load_model(base, device="cpu")
        pred = Predictor(model, processor, image_size=112, generation=GenerationSettings(max_new_tokens=48))
        return float(np.mean([p.parsed.format_ok for p in pred.predict(images)]))

    before = format_rate("tiny")
    torch.manual_seed(0)
    record = warmup(params, manifest=manifest, output_dir=tmp_path / "models", device="cpu", root="/")
    assert record["enabled"] and record["global_step"] == 200
    out = Path(record["model"])
    assert json.loads((out / "readl_base.json").read_text())["base"] == "tiny"
    assert not (tmp_path / "models" / "warmup_checkpoints").exists()
    after = format_rate(str(out))
    assert before == 0.0 and after >= 0.9, (before, after)


def test_keep_checkpoints_keeps_every_warmup_checkpoint(tiny_dir, sample_dir, tmp_path, monkeypatch):
    """`warmup.save_total_limit: null` + `keep_checkpoints: true` leave every checkpoint (a checkpoint study,
    benchmarks/checkpoint_selection.py); the default removes the folder (test above)."""
    from readl.stages.warmup import run as warmup

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    paths = sorted((sample_dir / "hazelnut_toy/hazelnut/train/good").glob("*.jpg"))[:2]
    paths += sorted((sample_dir / "hazelnut_toy/hazelnut/test/colour").glob("*.jpg"))[:2]
    pd.DataFrame(
        {
            "image_path": [str(p) for p in paths],
            "label": [0, 0, 1, 1],
            "category": "hazelnut",
            "defect_type": ["good", "good", "colour", "colour"],
        }
    ).to_parquet(tmp_path / "train.parquet")
    params = Params.model_validate(
        {
            "model": {"base": "tiny", "image_size": 56},
            "warmup": {
                "max_steps": 3,
                "per_device_train_batch_size": 2,
                "save_steps": 1,
                "save_total_limit": None,
                "keep_checkpoints": True,
            },
        }
    )
    warmup(params, manifest=tmp_path / "train.parquet", output_dir=tmp_path / "models", device="cpu", root="/")
    kept = sorted(p.name for p in (tmp_path / "models" / "warmup_checkpoints").glob("checkpoint-*"))
    assert kept == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
