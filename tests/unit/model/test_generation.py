"""The generation seam (readl.model.generation): batched HF generation equals batch 1 under greedy decoding,
evaluate/calibrate really generate in batches of model.batch_size, and the vLLM options (model.generation_backend,
train.use_vllm / vllm_mode) are typed, passed on, and fail clearly where vLLM is not installed (issue 15)."""

from __future__ import annotations

import importlib.util

import pandas as pd
import pytest
import yaml

from readl.config import ModelConfig, Params, TrainConfig
from readl.evaluation.predictions import cached_predictions, fingerprint
from readl.model.generation import HFGenerator, make_generator
from readl.model.inference import GenerationSettings, Predictor
from readl.model.prompting import SYSTEM_PROMPT, build_messages

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.fixture(scope="module")
def predictor(tiny):
    model, processor = tiny
    return Predictor(model, processor, image_size=112, generation=GenerationSettings(max_new_tokens=16))


def test_batched_greedy_completions_equal_batch_one(predictor, sample_images):
    batched = predictor.predict(sample_images)
    assert len(batched) == 4
    for im, pred in zip(sample_images, batched):
        (one,) = predictor.predict([im])
        assert one.completion == pred.completion
        assert one.score == pytest.approx(pred.score, abs=1e-5)


def test_left_padded_prompts_generate_what_each_prompt_does_alone(predictor, sample_images):
    """Prompts of different lengths in one batch (left padding) give each prompt's own greedy completion."""
    questions = [
        "Is there any defect in the object?",
        "Look closely at the whole surface of this object: is there any defect or anomaly in it? Answer Yes or No.",
    ]
    texts = [
        predictor.processor.apply_chat_template(
            build_messages(SYSTEM_PROMPT, q), tokenize=False, add_generation_prompt=True
        )
        for q in questions
    ]
    sized = predictor.resize(sample_images[:2])

    def enc(ims, prompts):
        return predictor.processor(images=ims, text=prompts, return_tensors="pt", padding=True).to(predictor.device)

    both = enc(sized, texts)
    assert (both["attention_mask"][0] == 0).any(), "row 0 must be left-padded"
    batched = HFGenerator()(predictor, both, sized)
    for i in range(2):
        assert batched[i] == HFGenerator()(predictor, enc(sized[i : i + 1], texts[i : i + 1]), sized[i : i + 1])[0]


class _Counting:
    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, predictor, inputs, images):
        self.calls.append(inputs["input_ids"].shape[0])
        return HFGenerator()(predictor, inputs, images)


def test_cached_predictions_generate_in_batches(tiny, sample_dir, tmp_path):
    model, processor = tiny
    counting = _Counting()
    pred = Predictor(
        model, processor, image_size=112, generation=GenerationSettings(max_new_tokens=4), generator=counting
    )
    paths = sorted((sample_dir / "mvtec_ad/grid/test").rglob("*.png"))[:5]
    manifest = pd.DataFrame({"image_path": [str(p) for p in paths]})
    fp = fingerprint(pred, "tiny", None)
    assert fp["generation_backend"] == "_Counting"
    out = list(cached_predictions(manifest, pred, tmp_path / "cache", fp, batch_size=2))
    assert len(out) == 5 and counting.calls == [2, 2, 1]


def test_backend_param_is_typed_and_in_params_yaml():
    assert ModelConfig().generation_backend == "hf"
    with pytest.raises(ValueError, match="generation_backend"):
        ModelConfig(generation_backend="tgi")
    raw = yaml.safe_load(open("params.yaml"))
    assert raw["model"]["generation_backend"] == "hf"
    assert {"use_vllm", "vllm_mode"} <= raw["train"].keys()
    assert Params.model_validate(raw).train.use_vllm is False
    with pytest.raises(ValueError, match="vllm_mode"):
        TrainConfig(vllm_mode="remote")
    assert isinstance(make_generator("hf"), HFGenerator)
    with pytest.raises(ValueError, match="generation_backend"):
        make_generator("tgi")


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here")
def test_vllm_backend_without_vllm_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r"pip install 'readl\[vllm\]'"):
        make_generator("vllm", base="tiny")


def test_grpo_args_pass_the_vllm_options(tiny, tmp_path):
    from readl.training.train import grpo_args

    model, _ = tiny
    base = {"model": {"base": "tiny", "image_size": 112}, "train": {"max_steps": 1}}
    args = grpo_args(Params.model_validate(base), tmp_path, model)
    assert (args.use_vllm, args.vllm_mode) == (False, "colocate")
    server = {**base["train"], "vllm_mode": "server", "vllm_server_base_url": "http://gen:8000"}
    args = grpo_args(Params.model_validate({**base, "train": server}), tmp_path, model)
    assert (args.vllm_mode, args.vllm_server_base_url) == ("server", "http://gen:8000")
    if not HAS_VLLM:
        with pytest.raises(ValueError, match="train.use_vllm"):
            grpo_args(Params.model_validate({**base, "train": {**server, "use_vllm": True}}), tmp_path, model)
