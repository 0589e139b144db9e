"""The O(T) reasoning mask / answer position equal the prefix-decoding reference (issue 15).

The reference (:func:`readl.model.tokens_reference.reference_reasoning_and_answer`) decodes every prefix
and walks the text character by character (O(T^2)), sharing no code with the fast path; the fast one must
give identical masks, answer indices and pending strings on random completions:
tags split across tokens, multi-byte UTF-8 split across byte tokens (also cut in the middle), special tokens
(skipped by the decode) and added non-special tokens (decoded from their own UTF-8 bytes).
"""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from readl.model.inference import answer_read_position, reasoning_token_mask
from readl.model.tokens_reference import reference_reasoning_and_answer

PIECES = [
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
    "Yes",
    " Yes",
    "No",
    "\nNo\n",
    " ",
    "\n",
    "A crack",
    " on the left edge.",
    "é",
    "漢字",
    "🙂",
    "Ünïcödé ",
    "<thi",
    "nk>",
    "</ans",
    "wer>",
    "<",
    ">",
]


def _random_completion(tok, rng, extra_ids):
    ids: list[int] = []
    for _ in range(int(rng.integers(1, 14))):
        kind = rng.random()
        if kind < 0.6:
            piece = PIECES[int(rng.integers(len(PIECES)))]
            enc = tok.encode(piece, add_special_tokens=False)
            if rng.random() < 0.15 and len(enc) > 1:  # a multi-byte character or tag cut in the middle
                enc = enc[: int(rng.integers(1, len(enc)))]
            ids += enc
        elif kind < 0.8:
            ids.append(int(rng.integers(len(tok))))  # any token, special ones included
        else:
            ids.append(int(extra_ids[int(rng.integers(len(extra_ids)))]))
    return ids


@pytest.fixture(scope="module", params=["kit", "qwen2"])
def tokenizer(request, tiny_dir):
    """The kit's small vocabulary, and the real Qwen2 / Qwen2.5 one (tests/qwen_vocabulary.py)."""
    import copy

    if request.param == "kit":
        tok = AutoTokenizer.from_pretrained(tiny_dir)
    else:
        tok = copy.deepcopy(request.getfixturevalue("qwen2_vocabulary"))  # the session's own stays unchanged
    tok.add_tokens(["<my tag>", "añadido"])  # non-special added tokens: a space / non-ASCII inside
    return tok


def test_fast_path_is_taken(tokenizer):
    from readl.model.offsets import is_plain_byte_level

    assert is_plain_byte_level(tokenizer)


def test_masks_equal_the_prefix_decoding_reference(tokenizer):
    tok = tokenizer
    special = [i for i, t in tok.added_tokens_decoder.items() if t.special]
    extra = special + tok.convert_tokens_to_ids(["<my tag>", "añadido"])
    rng = np.random.default_rng(0)
    n_multibyte_cut = 0
    for _ in range(400):
        ids = _random_completion(tok, rng, extra)
        mask, a = reasoning_token_mask(tok, ids)
        ref_mask, ref_a, ref_pending = reference_reasoning_and_answer(tok, ids)
        assert np.array_equal(mask, ref_mask), tok.decode(ids)
        assert a == ref_a and answer_read_position(tok, ids) == (ref_a, ref_pending), tok.decode(ids)
        n_multibyte_cut += "\ufffd" in tok.decode(ids, skip_special_tokens=True)
    assert n_multibyte_cut > 0  # the cases with a character cut between tokens were exercised


def test_tags_split_across_tokens(tokenizer):
    tok = tokenizer
    ids = sum(
        (
            tok.encode(p, add_special_tokens=False)
            for p in ["<thi", "nk>", "漢 a", "🙂", "</th", "ink>", "<ans", "wer>", "\n", "Yes"]
        ),
        [],
    )
    mask, a = reasoning_token_mask(tok, ids)
    ref_mask, ref_a, _ = reference_reasoning_and_answer(tok, ids)
    assert np.array_equal(mask, ref_mask) and a == ref_a
    kept = tok.decode([i for i, m in zip(ids, mask) if m])
    if len(tok.encode("🙂", add_special_tokens=False)) > 1:  # the kit: the emoji's bytes split over tokens
        assert kept.endswith(" a\ufffd")  # one token per character kept
    else:  # Qwen2's vocabulary: the emoji is one token, kept whole
        assert kept.endswith(" a🙂")
