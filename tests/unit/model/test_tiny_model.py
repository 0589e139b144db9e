"""The tiny kit: real Qwen2.5-VL classes, offline, saved and loaded with save/from_pretrained."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

from readl.model.loading import load_model, load_processor
from readl.model.processor import ReadlQwenProcessor, image_processor_for, register_auto_processor
from readl.model.prompting import ANOMALY_WORDS, QUESTION, SYSTEM_PROMPT, build_messages
from readl.model.tiny import QWEN_SPECIAL_TOKENS, build_tiny_model


def test_roundtrip_and_determinism(tiny_dir, tmp_path):
    again = build_tiny_model(tmp_path / "again")
    a = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_dir)
    b = Qwen2_5_VLForConditionalGeneration.from_pretrained(again)
    assert a.config.model_type == "qwen2_5_vl"
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name  # fixed seed: same weights every build
    register_auto_processor()  # importing readl registers nothing; load_processor calls this
    proc = AutoProcessor.from_pretrained(tiny_dir)  # registered: not just the tokenizer
    assert isinstance(proc, ReadlQwenProcessor)
    assert type(proc.image_processor).__name__ == "Qwen2VLImageProcessorPil"


def test_tokenizer_has_qwen_specials_and_template(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    for t in QWEN_SPECIAL_TOKENS:
        assert len(tok.tokenize(t)) == 1, t
    text = tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text.endswith("<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n")
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")


def test_vocabulary_covers_prompt_answer_and_anomaly_words(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    words = set(re.findall(r"\w+", QUESTION + " " + SYSTEM_PROMPT)) | set(ANOMALY_WORDS) | {"Yes", "No"}
    split = [w for w in words if len(tok.tokenize(" " + w)) != 1 and len(tok.tokenize(w)) != 1]
    assert split == []
    assert len(tok.encode("Yes", add_special_tokens=False)) == 1
    assert len(tok.encode("No", add_special_tokens=False)) == 1


def test_processor_keeps_raster_order(tiny):
    """Image token k covers the 28x28 cell (k // 15, k % 15) of a 420x420 image."""
    _, processor = tiny
    prompt = processor.apply_chat_template(build_messages(), tokenize=False, add_generation_prompt=True)
    base = processor(images=[Image.new("RGB", (420, 420))], text=[prompt], return_tensors="pt")
    assert base["image_grid_thw"].tolist() == [[1, 30, 30]]
    assert int((base["input_ids"] == processor.image_token_id).sum()) == 225
    for i, j in [(0, 0), (2, 11), (14, 3)]:
        arr = np.zeros((420, 420, 3), np.uint8)
        arr[28 * i : 28 * i + 28, 28 * j : 28 * j + 28] = 255
        px = processor(images=[Image.fromarray(arr)], text=[prompt], return_tensors="pt")["pixel_values"]
        changed = (px - base["pixel_values"]).abs().sum(dim=1).nonzero()[:, 0]  # patches of 14x14
        assert sorted(set((changed // 4).tolist())) == [i * 15 + j]  # 4 patches per merged token


def test_image_processor_size_must_fit_the_patch_grid():
    assert image_processor_for(420).size["longest_edge"] == 420 * 420
    with pytest.raises(ValueError, match="multiple of 28"):
        image_processor_for(400)


def test_loading_rejects_non_qwen_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    plain = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    plain.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=plain, unk_token="[UNK]").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="image_pad"):
        load_processor(tmp_path)


def test_adapter_folder_must_exist(tiny_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_model("tiny", adapter=tmp_path, device="cpu")


def test_lora_adapter_is_loaded_and_applied(tiny_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_dir)
    peft = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft.save_pretrained(tmp_path / "adapter")
    model, _ = load_model("tiny", adapter=tmp_path / "adapter", device="cpu")
    plain, _ = load_model("tiny", device="cpu")
    assert isinstance(model, PeftModel) and not model.training
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, plain(input_ids=ids).logits)
