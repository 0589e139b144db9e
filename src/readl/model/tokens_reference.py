"""The slow, obviously-correct reference for :func:`readl.model.tokens.reasoning_and_answer`.

O(T^2): every token's characters come from decoding every prefix of the completion, and the reasoning span
and the answer word are found by walking the decoded text character by character. It shares no code with
the fast path (one pass over the tokens' bytes in :mod:`readl.model.offsets`, spans found with ``str.find``
in :mod:`readl.model.tokens`), so agreement between the two is evidence; it is what
``tests/unit/model/test_reasoning_mask.py`` checks the fast path against and what
``benchmarks/reasoning_mask.py`` times it against. Not used on any production path.
"""

from __future__ import annotations

import numpy as np

__all__ = ["reference_reasoning_and_answer"]

_THINK, _END_THINK, _ANSWER = "<think>", "</think>", "<answer>"


def _first_at_or_after(text: str, tags: tuple[str, ...], pos: int) -> int | None:
    """The first character index ``c >= pos`` at which one of ``tags`` begins, walking ``text`` char by char."""
    for c in range(pos, len(text)):
        if any(text[c : c + len(tag)] == tag for tag in tags):
            return c
    return None


def reference_reasoning_and_answer(tokenizer, ids: list[int]) -> tuple[np.ndarray, int | None, str]:
    """``(mask, answer_index, pending)`` by prefix decoding: the O(T^2) reference of the fast path.

    Contract (the same as :func:`readl.model.tokens.reasoning_token_mask` and
    :func:`readl.model.tokens.answer_read_position`), on ``text = decode(ids, skip_special_tokens=True)``
    and token ``j`` writing characters ``[len(decode(ids[:j])), len(decode(ids[:j + 1])))``:

    - the reasoning characters run from just after the first ``<think>`` (from 0 when there is none) up to
      the first ``</think>`` or ``<answer>`` at or after that point (the end of the text when neither);
      ``mask[j]`` (T,) bool is True when token ``j`` writes at least one character and all of its
      characters are reasoning characters;
    - ``answer_index`` is the first token whose decoded prefix reaches past the first non-whitespace
      character after the first ``<answer>`` (``len(ids)`` when the text ends before it; ``None`` when
      there is no ``<answer>``); ``pending`` is the part of ``<answer>`` that token also writes (``""``
      unless it starts before the tag's end).

    Args:
        tokenizer: any Hugging Face tokenizer (only ``decode`` is used).
        ids: completion token ids (no prompt, no padding).
    """
    prefix_len = [len(tokenizer.decode(ids[:j], skip_special_tokens=True)) for j in range(len(ids) + 1)]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    think = _first_at_or_after(text, (_THINK,), 0)
    start = 0 if think is None else think + len(_THINK)
    end = _first_at_or_after(text, (_END_THINK, _ANSWER), start)
    end = len(text) if end is None else end
    mask = np.zeros(len(ids), dtype=bool)
    for j in range(len(ids)):
        chars = range(prefix_len[j], prefix_len[j + 1])  # the characters token j writes
        mask[j] = len(chars) > 0 and all(start <= c < end for c in chars)
    tag = _first_at_or_after(text, (_ANSWER,), 0)
    if tag is None:
        return mask, None, ""
    after = tag + len(_ANSWER)
    word = after
    while word < len(text) and text[word].isspace():
        word += 1
    answer_index = len(ids)
    for j in range(len(ids)):
        if prefix_len[j + 1] > word:
            answer_index = j
            break
    pending = ""
    if answer_index < len(ids) and prefix_len[answer_index] < after:
        pending = text[prefix_len[answer_index] : after]
    return mask, answer_index, pending
