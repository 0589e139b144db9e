"""Which tokens are what: image tokens, the question's anomaly words (paper Eq. 2, E_a), the reasoning tokens
(inside ``<think>``) and the token that writes the answer word (where P(Yes) is read).

The P(Yes) reading rule and the query-row convention are described in :mod:`readl.model.inference`.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from readl.model.offsets import char_offsets
from readl.model.prompting import QUESTION

__all__ = [
    "ANSWER_LEADS",
    "ANSWER_WORDS",
    "SCORE_RULE",
    "QUERY_ROWS",
    "answer_variant_ids",
    "answer_read_position",
    "query_row_offset",
    "anomaly_token_positions",
    "image_token_positions",
    "reasoning_token_mask",
    "reasoning_and_answer",
]

_ANOMALY_RE = re.compile(r"(defect|anomal|abnormal)\w*", re.IGNORECASE)
ANSWER_LEADS = ("", " ", "\n")  # whitespace a single answer token may start with (readl.model.inference)
ANSWER_WORDS = ("Yes", "No")
SCORE_RULE = "word-position, pooled variants"  # part of the prediction-cache fingerprint: a change recomputes
QUERY_ROWS = ("producing", "own")


def answer_variant_ids(tokenizer, pending: str = "") -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Token ids of the spellings of ``"Yes"`` and of ``"No"`` pooled for P(Yes) (module docstring).

    A spelling of word W is ``pending + lead + W`` for ``lead`` in :data:`ANSWER_LEADS` that this
    tokenizer encodes as ONE token. ``pending`` is the part of ``<answer>`` that the token read also
    writes (``""`` unless the tokenizer merges the tag's end with the word, e.g. ``">Yes"``).

    Returns:
        ``(yes_ids, no_ids)``: distinct ids in ``ANSWER_LEADS`` order, e.g. ``("Yes", " Yes")``.

    Raises:
        ValueError: a word has no single-token spelling in this vocabulary.
    """
    out = []
    for word in ANSWER_WORDS:
        ids: list[int] = []
        for lead in ANSWER_LEADS:
            enc = tokenizer.encode(pending + lead + word, add_special_tokens=False)
            if len(enc) == 1 and enc[0] not in ids:
                ids.append(enc[0])
        if not ids:
            spellings = [pending + lead + word for lead in ANSWER_LEADS]
            raise ValueError(f"none of {spellings!r} is one token in this tokenizer; the Yes/No score needs one")
        out.append(tuple(ids))
    return out[0], out[1]


def query_row_offset(query_row: str) -> int:
    """Row offset into a capture started at query ``P - 1``: 0 for ``"producing"``, 1 for ``"own"``.

    Raises:
        ValueError: ``query_row`` is neither.
    """
    if query_row not in QUERY_ROWS:
        raise ValueError(f"unknown query_row {query_row!r}; expected one of {QUERY_ROWS} (localization.query_row)")
    return QUERY_ROWS.index(query_row)


def image_token_positions(input_ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """Positions of the image tokens per row: ``(B, n_img)`` int64, ascending (raster order).

    Raises:
        ValueError: rows have different numbers of image tokens (images of different sizes in a batch).
    """
    rows = [(row == image_token_id).nonzero()[:, 0] for row in input_ids]
    counts = {len(r) for r in rows}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"image token counts per row differ or are zero: {sorted(counts)}; resize images alike")
    return torch.stack(rows)


def anomaly_token_positions(input_ids: torch.Tensor, tokenizer, question: str = QUESTION) -> torch.Tensor:
    """Positions of the question's anomaly-word tokens (paper Eq. 2, set E_a): ``(B, E)`` int64.

    The question is tokenised alone (it follows ``<|vision_end|>``, a special token, so its tokens are
    the same inside the chat prompt); its sub-word tokens overlapping a word matching
    ``(defect|anomal|abnormal)\\w*`` are E_a; the question's last occurrence in each row gives the offset.

    Raises:
        ValueError: the question has no anomaly word, or a row does not contain the question's tokens.
    """
    enc = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
    q_ids, offsets = enc["input_ids"], enc["offset_mapping"]
    spans = [m.span() for m in _ANOMALY_RE.finditer(question)]
    local = [i for i, (a, b) in enumerate(offsets) if any(a < e and b > s for s, e in spans)]
    if not local:
        raise ValueError(f"question {question!r} contains no anomaly word (defect/anomaly/abnormal)")
    q = torch.tensor(q_ids)
    out = []
    for r, row in enumerate(input_ids):
        windows = row.unfold(0, len(q_ids), 1)  # (N - n_q + 1, n_q)
        hits = (windows == q.to(row.device)).all(dim=1).nonzero()[:, 0]
        if len(hits) == 0:
            raise ValueError(f"row {r}: the prompt does not contain the question {question!r}")
        out.append(hits[-1] + torch.tensor(local, device=row.device))
    return torch.stack(out)


def reasoning_and_answer(tokenizer, ids: list[int]) -> tuple[np.ndarray, int | None, str]:
    """``(mask, answer_index, pending)``: see :func:`reasoning_token_mask` and :func:`answer_read_position`."""
    offsets = char_offsets(tokenizer, ids)
    text = tokenizer.decode(ids, skip_special_tokens=True)
    start = text.find("<think>")
    start = 0 if start < 0 else start + len("<think>")
    ends = [i for i in (text.find("</think>", start), text.find("<answer>", start)) if i >= 0]
    end = min(ends) if ends else len(text)
    lo, hi = np.array(offsets[:-1]), np.array(offsets[1:])
    mask = (lo >= start) & (hi <= end) & (hi > lo)
    answer_index, pending = None, ""
    a = text.find("<answer>")
    if a >= 0:
        after = a + len("<answer>")
        word = len(text) - len(text[after:].lstrip())  # first non-whitespace character after <answer>
        # the token holding that character (offsets[j] <= word < offsets[j + 1]), or len(ids) when the
        # completion ends before the word
        answer_index = next((j for j in range(len(ids)) if offsets[j + 1] > word), len(ids))
        if answer_index < len(ids) and offsets[answer_index] < after:
            pending = text[offsets[answer_index] : after]
    return mask, answer_index, pending


def reasoning_token_mask(tokenizer, ids: list[int]) -> tuple[np.ndarray, int | None]:
    """Which completion tokens belong to the reasoning, and where the answer is read.

    Args:
        tokenizer: the model's tokenizer.
        ids: completion token ids (no prompt, no padding).

    Returns:
        ``(mask, answer_index)``: ``mask`` (T,) bool marks tokens whose text lies inside
        ``<think>...</think>`` (or, with no think tag, before ``<answer>``); ``answer_index`` is the index
        of the token that writes the answer word (the first non-whitespace character after ``<answer>``;
        whitespace-only tokens in between are skipped), ``len(ids)`` when the completion ends before the
        word, or ``None`` when there is no ``<answer>``.
    """
    mask, answer_index, _ = reasoning_and_answer(tokenizer, ids)
    return mask, answer_index


def answer_read_position(tokenizer, ids: list[int]) -> tuple[int | None, str]:
    """Where P(Yes) is read: ``(answer_index, pending)``.

    ``answer_index`` as in :func:`reasoning_token_mask` (the logits that predict that token are read);
    ``pending`` is the part of ``<answer>`` that token also writes (``""`` unless the tokenizer merged
    the tag's end with what follows), passed to :func:`answer_variant_ids`.
    """
    _, answer_index, pending = reasoning_and_answer(tokenizer, ids)
    return answer_index, pending
