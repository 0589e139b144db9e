"""Generation + teacher-forced capture on the tiny model and the bundled real images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from readl.model.inference import (
    GenerationSettings,
    Predictor,
    anomaly_token_positions,
    answer_read_position,
    answer_variant_ids,
    reasoning_token_mask,
)
from readl.model.prompting import QUESTION


@pytest.fixture(scope="module")
def predictor(tiny):
    model, processor = tiny
    return Predictor(model, processor, generation=GenerationSettings(max_new_tokens=12))


def test_a_layer_the_model_lacks_is_refused_before_any_generation(tiny):
    model, processor = tiny
    depth = model.config.text_config.num_hidden_layers
    with pytest.raises(ValueError, match=rf"localization.layers.*\[{depth}\].*0\.\.{depth - 1}"):
        Predictor(model, processor, layers=[0, depth])  # used to fail after generation: "no attention was captured"
    assert Predictor(model, processor, layers=[depth - 1]).layers == [depth - 1]


def test_predict_on_real_images(predictor, sample_images):
    preds = predictor.predict(sample_images[:2])
    assert len(preds) == 2
    for pred, im in zip(preds, sample_images):
        r = len(pred.tokens)
        assert 0 < r <= 12
        assert pred.image_attn.shape == (r, 15, 15) and pred.image_attn.dtype == np.float32
        assert pred.anomaly_attn.shape == (r, 2)  # " defects", " anomalies" in the tiny vocabulary
        assert pred.image_size == (im.height, im.width)
        assert np.all(pred.image_attn.sum(axis=(1, 2)) < 1.0 + 1e-5)  # a share of one softmax row


def test_anomaly_positions_point_at_anomaly_words(predictor, sample_images):
    inputs = predictor.encode(sample_images[:1])
    pos = anomaly_token_positions(inputs["input_ids"], predictor.tokenizer, QUESTION)
    words = [predictor.tokenizer.decode([int(inputs["input_ids"][0, p])]).strip() for p in pos[0]]
    assert words == ["defects", "anomalies"]


def test_reasoning_mask_and_answer_index(predictor):
    tok = predictor.tokenizer
    ids = tok.encode("<think>A scratch on the surface.</think><answer>Yes</answer>", add_special_tokens=False)
    mask, a = reasoning_token_mask(tok, ids)
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "A scratch on the surface."
    assert tok.decode([ids[a]]) == "Yes"
    ids = tok.encode("no tags, just text", add_special_tokens=False)
    mask, a = reasoning_token_mask(tok, ids)
    assert mask.all() and a is None


def _one_token(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def _pooled_p_yes_by_hand(predictor, inputs, prefix_ids):
    """P(Yes) from the FULL next-token distribution after prompt + prefix_ids (plain forward, last position):
    p(Yes, " Yes", "\nYes" that are single tokens) / (that + p(No, " No", "\nNo"))."""
    tok = predictor.tokenizer
    ids = torch.tensor([list(prefix_ids)])
    batch = dict(inputs)
    batch["input_ids"] = torch.cat([inputs["input_ids"], ids], 1)
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    batch["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(ids)], 1)
    with torch.no_grad():
        probs = torch.softmax(predictor.model(**batch).logits[0, -1].double(), 0)  # (V,)
    yes = {_one_token(tok, s + "Yes") for s in ("", " ", "\n")} - {None}
    no = {_one_token(tok, s + "No") for s in ("", " ", "\n")} - {None}
    assert len(yes) >= 2 and len(no) >= 2  # the tiny vocabulary has Yes/" Yes" and No/" No"
    p_y, p_n = float(probs[sorted(yes)].sum()), float(probs[sorted(no)].sum())
    return p_y / (p_y + p_n)


def test_score_is_read_at_the_answer_position(predictor, sample_images):
    tok = predictor.tokenizer
    inputs = predictor.encode(sample_images[:1])
    with_answer = "<think>A crack.</think><answer>No</answer>"
    cut_off = "<think>A crack on the"
    ids = tok.encode(with_answer, add_special_tokens=False)
    caps = predictor.capture(inputs, [ids])
    head = tok.encode("<think>A crack.</think><answer>", add_special_tokens=False)
    assert ids[: len(head)] == head
    assert caps[0].p_yes == pytest.approx(_pooled_p_yes_by_hand(predictor, inputs, head), abs=1e-5)
    caps = predictor.capture(inputs, [tok.encode(cut_off, add_special_tokens=False)])
    # no answer tag: scored after appending "</think><answer>" (documented fallback), same pooling
    appended = tok.encode(cut_off, add_special_tokens=False) + tok.encode("</think><answer>", add_special_tokens=False)
    assert caps[0].p_yes == pytest.approx(_pooled_p_yes_by_hand(predictor, inputs, appended), abs=1e-5)
    assert caps[0].image_attn.shape[0] == len(tok.encode(cut_off, add_special_tokens=False))


def test_batch_equals_single(predictor, sample_images):
    tok = predictor.tokenizer
    comps = [
        tok.encode(t, add_special_tokens=False)
        for t in ["<think>ok</think><answer>No</answer>", "<think>a long scratch on the left edge"]
    ]
    both = predictor.capture(predictor.encode(sample_images[2:4]), comps)
    for i in range(2):
        one = predictor.capture(predictor.encode(sample_images[2 + i : 3 + i]), [comps[i]])[0]
        assert np.abs(one.image_attn - both[i].image_attn).max() <= 1e-5
        assert one.p_yes == pytest.approx(both[i].p_yes, abs=1e-5)


def test_capture_reasoning_mask_equals_the_completions_own(predictor, sample_images):
    """capture() reads the mask on completion + answer prefix; it must mark the same tokens."""
    tok = predictor.tokenizer
    texts = [
        "<think>A crack near the top",
        "no tags here at all",
        "<think>ok</think><answer>No</answer>",
        "<think>x</think>",
    ]
    comps = [tok.encode(t, add_special_tokens=False) for t in texts]
    caps = predictor.capture(predictor.encode(sample_images[:1] * len(texts)), comps)
    for c, cap in zip(comps, caps):
        assert np.array_equal(cap.reasoning, reasoning_token_mask(tok, c)[0])


@pytest.mark.parametrize(
    "answer, word",
    [("<answer>Yes</answer>", "Yes"), ("<answer> Yes</answer>", "Yes"), ("<answer>\nNo\n</answer>", "No")],
    ids=["no-space", "space", "newlines"],
)
def test_score_is_read_where_the_answer_word_is_written(predictor, sample_images, answer, word):
    """P(Yes) is read at the position that writes the answer WORD (whitespace-only tokens after <answer> are
    skipped), pooling the spellings Yes/" Yes" vs No/" No" over the full next-token distribution."""
    tok = predictor.tokenizer
    ids = tok.encode("<think>A crack.</think>" + answer, add_special_tokens=False)
    _, a = reasoning_token_mask(tok, ids)
    assert tok.decode([ids[a]]).strip() == word  # the byte-level token there is "Yes", " Yes" or "No", never "\n"
    inputs = predictor.encode(sample_images[:1])
    cap = predictor.capture(inputs, [ids])[0]
    assert cap.p_yes == pytest.approx(_pooled_p_yes_by_hand(predictor, inputs, ids[:a]), abs=1e-6)


def test_answer_variants_are_the_single_token_spellings(predictor):
    tok = predictor.tokenizer
    yes, no = answer_variant_ids(tok)
    assert [tok.decode([i]) for i in yes] == ["Yes", " Yes"] and [tok.decode([i]) for i in no] == ["No", " No"]


class _MergingTokenizer:
    """A tokenizer that writes the tag's end and the word as ONE token (">Yes"), as some BPE vocabularies do."""

    vocab = ["<think>", "x", "</think>", "<answer", ">Yes", ">No", "> Yes", "</answer>", "Yes", "No", " ", "\n"]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.vocab[i] for i in ids)

    def encode(self, text, add_special_tokens=False):
        return [self.vocab.index(text)] if text in self.vocab else [-1] * len(text)  # else: one "token" a character


def test_answer_read_where_the_tag_end_and_the_word_share_a_token():
    tok = _MergingTokenizer()
    ids = [0, 1, 2, 3, 4, 7]  # <think>x</think><answer + ">Yes" + </answer>
    a, pending = answer_read_position(tok, ids)
    assert (a, pending) == (4, ">")
    assert reasoning_token_mask(tok, ids)[1] == 4
    yes, no = answer_variant_ids(tok, pending)
    assert [tok.vocab[i] for i in yes] == [">Yes", "> Yes"] and [tok.vocab[i] for i in no] == [">No"]
    assert answer_read_position(tok, [0, 1, 2, 3]) == (None, "")  # no complete <answer>: the prefix is appended


def test_capture_keeps_only_the_answer_logits_and_the_same_scores(predictor, sample_images):
    """capture() computes logits at the answer position only ((B, 1, V), not (B, T + 1, V)) and gives the
    P(Yes) of the full-vocabulary computation it replaced: log_softmax over all logits of prompt + completion,
    pooled spellings (issue 15)."""
    tok = predictor.tokenizer
    texts = [
        "<think>A crack.</think><answer>No</answer>",
        "<think>a long scratch on the left edge",
        "<think>x</think><answer> Yes</answer>",
        "no tags",
    ]
    comps = [tok.encode(t, add_special_tokens=False) for t in texts]
    inputs = predictor.encode(sample_images[:1] * len(texts))
    shapes = []
    hook = predictor.model.register_forward_hook(lambda m, a, out: shapes.append(tuple(out.logits.shape)))
    try:
        caps = predictor.capture(inputs, comps)
    finally:
        hook.remove()
    assert shapes == [(len(texts), 1, len(tok))]
    from readl.model.prompting import answer_prefix_for

    full = [
        c + (tok.encode(s, add_special_tokens=False) if (s := answer_prefix_for(tok.decode(c))) else []) for c in comps
    ]
    batch = predictor.teacher_forced_batch(inputs, full)
    p = inputs["input_ids"].shape[1]
    with torch.no_grad():
        logits = predictor.model(**batch, use_cache=False).logits.float()  # (B, P + T, V)
    for i, (f, cap) in enumerate(zip(full, caps)):
        a, pending = answer_read_position(tok, f)
        yes, no = answer_variant_ids(tok, pending)
        log_p = torch.log_softmax(logits[i, p - 1 + a].double(), dim=0)
        ref = float(torch.sigmoid(torch.logsumexp(log_p[list(yes)], 0) - torch.logsumexp(log_p[list(no)], 0)))
        assert cap.p_yes == pytest.approx(ref, rel=1e-9, abs=1e-12)
