"""Target completions for the supervised cold start: ``<think>REASONING</think><answer>Yes|No</answer>``.

The cold start (``readl warmup``, R1-style as in Vision-R1) teaches the model the answer format before GRPO.
REASONING comes from the manifest's ``reasoning`` column when a row has one (texts written by a teacher
model or by inspectors, see README "Cold start"), else from templates built ONLY from image-level
information: the label, the category and the defect-type name. Masks are never read here: that would be
pixel supervision, which the method does not have (paper Sec. 1, 4: image-level labels only).

Template design (a choice the paper does not make; it starts GRPO from an instruction-tuned model):

- the FIRST sentence is fixed per label (:data:`OPENING`), so the detection decision is taken at the first
  reasoning tokens, where it is weighted in the loss (:mod:`readl.training.warmup`); with a varied first
  sentence the decision would be spread over many tokens and drowned by text the image cannot predict;
- the rest varies, seeded per row (the image's own category, its defect type in an inspector's words, a phrase
  from a small pool, :data:`POOLS`), so the model does not learn one string per label and the reasoning metrics
  (ROUGE-L, SBERT) measure more than a constant; the pools are kept apart from the references' sentences.
  The prompt does not name the category: on a category it never trained on, a model can only guess its name.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from readl.data.references import defect_words

__all__ = ["OPENING", "POOLS", "template_reasoning", "target_completion", "targets_for", "row_key"]

# The decision sentence per label: label 1 (anomalous) and label 0 (normal). Both name the anomaly words
# of the question ("defect", "anomaly"), so S_T (paper Eq. 2) has tokens that refer back to them.
OPENING = {1: "A defect is visible.", 0: "No defect is visible."}

_ANOMALOUS = (  # the defect before the category: a different word order from the references (ROUGE-L is an LCS)
    "I see {defect}, which makes this {category} deviate from its typical appearance.",
    "There is {defect}; this region of the {category} is abnormal.",
    "{Defect} on its surface indicates an anomaly in this {category}.",
    "{Defect} affects part of this {category}.",
)
_NORMAL = (
    "The {category} is uniform and intact, with no anomaly.",
    "The surface of the {category} appears regular and clean.",
    "Every region of the {category} is consistent with its typical appearance.",
    "The {category} appears smooth and undamaged.",
)
POOLS = {1: _ANOMALOUS, 0: _NORMAL}
"""The warm-up's phrase pools per label; they share no 4-word sequence with the reference sentences
(:data:`readl.data.references.REFERENCE_SENTENCES`), so copying the targets is not copying the references."""


def _pick(key: str, n: int, seed: int) -> int:
    """A stable choice in [0, n) from ``key`` and ``seed`` (sha256; no global RNG state)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") % n


def template_reasoning(label: int, category: str, defect_type: str | None, key: str, seed: int = 0) -> str:
    """Reasoning text for one image from its image-level information only.

    Args:
        label: 1 = anomalous, 0 = normal.
        category: the object / texture category (e.g. ``hazelnut``); ``_`` becomes a space.
        defect_type: the published defect-type name (``colour``, ``cutpaste`` ...) or None / ``good``, written in
            an inspector's words (:func:`readl.data.references.defect_words`: "a discoloured patch").
        key: a stable per-row key that picks the phrase (:func:`row_key`: the image's content, not its path).
        seed: varies the choice of phrases between runs.

    Returns:
        ``OPENING[label]`` followed by one phrase.

    Raises:
        ValueError: ``label`` is not 0 or 1.
    """
    if label not in (0, 1):
        raise ValueError(f"label must be 0 or 1, got {label!r}")
    cat = str(category or "object").replace("_", " ")
    pool = POOLS[label]
    defect = defect_words(defect_type) or "a defect"
    body = pool[_pick(key, len(pool), seed)].format(category=cat, defect=defect, Defect=defect[0].upper() + defect[1:])
    return f"{OPENING[label]} {body}"


def target_completion(reasoning: str, label: int) -> str:
    """``<think>{reasoning}</think><answer>Yes|No</answer>``: the strict format of the format reward (Eq. 8)."""
    return f"<think>{reasoning.strip()}</think><answer>{'Yes' if label == 1 else 'No'}</answer>"


def row_key(row) -> str:
    """The key that picks a row's template phrase: the curated image's pHash (``phash``, its content) and file name,
    never its folder, so a clone in another place, or data reached through a symlink, gets the same targets."""
    return f"{getattr(row, 'phash', '')}|{Path(str(row.image_path)).name}"


def targets_for(frame: pd.DataFrame, seed: int = 0) -> list[str]:
    """The target completion of every manifest row.

    A non-empty ``reasoning`` value is used as it is; other rows get :func:`template_reasoning`.

    Args:
        frame: manifest rows with ``image_path`` and ``label``; optional ``category``, ``defect_type``,
            ``reasoning``.
        seed: template phrase seed.

    Returns:
        One string per row, in order.
    """
    out = []
    has_reasoning = "reasoning" in frame.columns
    for row in frame.itertuples(index=False):
        text = getattr(row, "reasoning", None) if has_reasoning else None
        if not isinstance(text, str) or not text.strip():
            text = template_reasoning(
                int(row.label),
                getattr(row, "category", ""),
                getattr(row, "defect_type", None),
                key=row_key(row),
                seed=seed,
            )
        out.append(target_completion(text, int(row.label)))
    return out
