"""The ReAL attention capture equals eager ``output_attentions`` (paper Eq. 1-2 inputs)."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from readl.localization.attention import CAPTURE_IMPLEMENTATION, capture_attention, enable_capture
from readl.model.inference import anomaly_token_positions, image_token_positions
from readl.model.prompting import build_messages


def _variant(tiny_dir, layers: int, heads: int, kv_heads: int) -> Qwen2_5_VLForConditionalGeneration:
    """The tiny architecture with other layer/head counts (random weights, fixed seed)."""
    cfg = Qwen2_5_VLConfig.from_pretrained(tiny_dir)
    text = cfg.text_config.to_dict()
    text.update(num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads, layer_types=None)
    head_dim = text["hidden_size"] // heads
    half = head_dim // 2
    text["rope_parameters"] = {
        **text["rope_parameters"],
        "mrope_section": [half - 2 * (half // 3), half // 3, half // 3],
    }
    cfg = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=cfg.vision_config.to_dict(),
        image_token_id=cfg.image_token_id,
        video_token_id=cfg.video_token_id,
        vision_start_token_id=cfg.vision_start_token_id,
        vision_end_token_id=cfg.vision_end_token_id,
    )
    torch.manual_seed(1)
    return Qwen2_5_VLForConditionalGeneration(cfg).eval()


def _batch(processor, images, completions):
    """Left-padded batch of prompt + completion texts (different lengths, so row 0 gets padding)."""
    prompt = processor.apply_chat_template(build_messages(), tokenize=False, add_generation_prompt=True)
    images = [im.resize((420, 420)) for im in images]  # 420x420 -> grid (1, 30, 30) -> 225 image tokens
    return processor(images=images, text=[prompt + c for c in completions], return_tensors="pt", padding=True)


def _eager_reference(model, batch, key_index, query_start, layers=None):
    """Head- and layer-mean attention rows >= query_start to key_index, from eager output_attentions."""
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            att = model(**batch, output_attentions=True).attentions  # L x (B, H, N, N)
    finally:
        model.set_attn_implementation(CAPTURE_IMPLEMENTATION)
    chosen = torch.stack([att[i] for i in (layers if layers is not None else range(len(att)))])
    rows = chosen.mean(dim=(0, 2))[:, query_start:, :]  # (B, Q, N)
    return torch.take_along_dim(rows, key_index[:, None, :], dim=-1)  # (B, Q, K)


@pytest.mark.parametrize(
    ("layers", "heads", "kv_heads", "chosen"),
    [(2, 4, 2, None), (3, 4, 4, None), (3, 8, 2, [0, 2]), (4, 2, 1, [3])],
    ids=["gqa-2x2", "mha-4", "gqa-4x2-layers02", "mqa-layer3"],
)
def test_capture_equals_eager(tiny_dir, tiny, sample_images, layers, heads, kv_heads, chosen):
    _, processor = tiny
    model = enable_capture(_variant(tiny_dir, layers, heads, kv_heads))
    batch = _batch(processor, sample_images[:2], ["<think>a crack", "<think>the surface is uniform and clean</think>"])
    assert (batch["attention_mask"][0] == 0).any(), "row 0 must be left-padded for this test"
    img = image_token_positions(batch["input_ids"], model.config.image_token_id)
    anom = anomaly_token_positions(batch["input_ids"], processor.tokenizer)
    key_index = torch.cat([img, anom], dim=1)
    start = batch["input_ids"].shape[1] - 12
    with torch.no_grad(), capture_attention(key_index, start, layers=chosen) as cap:
        model(**batch)
    got = cap.result()
    ref = _eager_reference(model, batch, key_index, start, chosen)
    assert got.shape == ref.shape == (2, 12, 225 + anom.shape[1])
    assert (got - ref).abs().max().item() <= 1e-5
    assert got[..., :225].sum(-1).min() > 0  # real attention mass on the image, not zeros
    # memory: one running (B, Q, K) sum, not one tensor per captured layer
    assert sum(c.numel() for c in cap.chunks) == got.numel()
    assert cap.layer_calls == [len(chosen) if chosen else layers]


def test_capture_leaves_outputs_unchanged(tiny, sample_images):
    model, processor = tiny
    batch = _batch(processor, sample_images[:2], ["<think>x", "<think>y z w"])
    key_index = image_token_positions(batch["input_ids"], model.config.image_token_id)
    with torch.no_grad():
        plain = model(**batch).logits
        with capture_attention(key_index, 0):
            captured = model(**batch).logits
    assert torch.equal(plain, captured)


def test_capture_during_generation_matches_teacher_forced(tiny, sample_images):
    """Both capture paths: rows recorded while generating == rows of one teacher-forced pass."""
    model, processor = tiny
    batch = _batch(processor, sample_images[1:3], ["", "<think>"])
    p = batch["input_ids"].shape[1]
    key_index = image_token_positions(batch["input_ids"], model.config.image_token_id)
    with torch.no_grad(), capture_attention(key_index, p - 1) as cap:
        out = model.generate(**batch, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    during = cap.result()  # (B, 6, 225): row j produced token j
    full = dict(
        batch, input_ids=out, attention_mask=torch.cat([batch["attention_mask"], torch.ones_like(out[:, p:])], 1)
    )
    full["mm_token_type_ids"] = torch.cat([batch["mm_token_type_ids"], torch.zeros_like(out[:, p:])], 1)
    with torch.no_grad(), capture_attention(key_index, p - 1) as cap2:
        model(**full)
    forced = cap2.result()[:, :6]
    assert during.shape == forced.shape == (2, 6, 225)
    assert (during - forced).abs().max().item() <= 1e-5


def test_result_without_forward_is_an_error():
    with capture_attention(torch.zeros((1, 3), dtype=torch.long), 0) as cap:
        pass
    with pytest.raises(RuntimeError, match="enable_capture"):
        cap.result()


def test_bad_key_index_is_rejected():
    with pytest.raises(ValueError, match="key_index"):
        with capture_attention(torch.zeros(3, dtype=torch.long), 0):
            pass
