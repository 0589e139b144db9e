"""The token-level rules on the REAL Qwen2 / Qwen2.5 vocabulary (151,657 tokens; tests/qwen_vocabulary.py), where
"<", "answer", ">", "Yes" and " Yes" are separate tokens, not on the kits' small trained one."""

from __future__ import annotations

import torch

from readl.model.prompting import ANSWER_PREFIX, QUESTION, build_messages
from readl.model.tokens import anomaly_token_positions, answer_read_position, answer_variant_ids, reasoning_token_mask


def _ids(tok, *pieces: str) -> list[int]:
    return sum((tok.encode(p, add_special_tokens=False) for p in pieces), [])


def test_the_vocabulary_is_qwen2s(qwen2_vocabulary):
    tok = qwen2_vocabulary
    assert len(tok) == 151657 and tok.convert_tokens_to_ids("<|image_pad|>") == 151655
    assert [tok.decode([i]) for i in tok.encode("<answer> Yes</answer>")] == [
        "<",
        "answer",
        ">",
        " Yes",
        "</",
        "answer",
        ">",
    ]
    assert [tok.decode([i]) for i in tok.encode("<think>")] == ["<th", "ink", ">"]


def test_yes_and_no_are_read_in_every_spelling_after_answer(qwen2_vocabulary):
    """P(Yes) pools the one-token spellings (readl.model.tokens.ANSWER_LEADS): "Yes" and " Yes" here; "\\nYes" is
    two tokens, so after "<answer>\\n" the whitespace token is skipped and "Yes" is read."""
    tok = qwen2_vocabulary
    yes, no = answer_variant_ids(tok)
    assert [tok.decode([i]) for i in yes] == ["Yes", " Yes"] and [tok.decode([i]) for i in no] == ["No", " No"]
    for answer in ("<answer>Yes</answer>", "<answer> Yes</answer>", "<answer>\nNo</answer>"):
        ids = _ids(tok, "<think>a crack</think>", answer)
        index, pending = answer_read_position(tok, ids)
        assert pending == "" and ids[index] in yes + no and tok.decode([ids[index]]).strip() in ("Yes", "No")
        assert tok.decode(ids[:index]).rstrip("\n").endswith(ANSWER_PREFIX)


def test_the_reasoning_mask_covers_the_think_text_only(qwen2_vocabulary):
    tok = qwen2_vocabulary
    ids = _ids(tok, "<think>", "The grid shows a bent part near the edge.", "</think>", "<answer> Yes</answer>")
    mask, index = reasoning_token_mask(tok, ids)
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "The grid shows a bent part near the edge."
    assert tok.decode([ids[index]]) == " Yes"


def test_the_questions_anomaly_words_are_found_as_sub_tokens(qwen2_vocabulary):
    tok = qwen2_vocabulary
    prompt = tok.apply_chat_template(build_messages(), tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok.encode(prompt, add_special_tokens=False)])
    positions = anomaly_token_positions(ids, tok)[0].tolist()
    words = [tok.decode([ids[0, p].item()]) for p in positions]
    assert "".join(words).replace(" ", "") in ("defectsanomalies", "defectsanomal" + "ies")
    assert QUESTION in prompt


def test_the_chat_template_expands_the_image_pad_to_the_grid(qwen2_vocabulary, sample_images, tiny_dir):
    """Qwen2.5-VL's processor with the real vocabulary: one <|vision_start|><|image_pad|> x 225<|vision_end|> for
    a 420 px image (15 x 15 tokens after the 2 x 2 merge)."""
    from transformers import AutoImageProcessor

    from readl.model.families import FAMILIES

    family = FAMILIES["qwen2_5_vl"]
    processor = family.processor(qwen2_vocabulary, AutoImageProcessor.from_pretrained(tiny_dir), config=None)
    prompt = qwen2_vocabulary.apply_chat_template(build_messages(), tokenize=False, add_generation_prompt=True)
    batch = processor(images=[sample_images[0].resize((420, 420))], text=[prompt], return_tensors="pt")
    ids = batch["input_ids"][0].tolist()
    pad = qwen2_vocabulary.convert_tokens_to_ids("<|image_pad|>")
    first = ids.index(pad)
    assert ids.count(pad) == 225 and ids[first - 1] == qwen2_vocabulary.convert_tokens_to_ids("<|vision_start|>")
    assert ids[first + 225] == qwen2_vocabulary.convert_tokens_to_ids("<|vision_end|>")
