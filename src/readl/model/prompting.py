"""The fixed prompt, the strict ``<think>/<answer>`` parser, and where the Yes/No score is read.

Paper Sec. 3-4: the model is asked one fixed question and answers with a reasoning chain and a
Yes/No answer; the image-level anomaly score is P(Yes) (README "Metrics" and "How ReAL works here").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "QUESTION",
    "SYSTEM_PROMPT",
    "ANOMALY_WORDS",
    "ANSWER_PREFIX",
    "Parsed",
    "parse_completion",
    "build_messages",
    "answer_prefix_for",
]

QUESTION = "Are there any defects or anomalies in the image?"
SYSTEM_PROMPT = (
    "You are an industrial visual inspection assistant. Look at the image carefully. First think "
    "about the question step by step inside <think> </think> tags, describing what you see. Then give "
    "the final answer, Yes or No, inside <answer> </answer> tags. Reply exactly in the form "
    "<think> reasoning here </think><answer>Yes</answer> or <think> reasoning here </think><answer>No</answer>."
)
# Paper Eq. 2: the anomaly-related words of the question whose (sub-word) tokens define S_T.
ANOMALY_WORDS = ("defect", "defects", "anomaly", "anomalies", "abnormal")
ANSWER_PREFIX = "<answer>"

_STRICT = re.compile(r"\A\s*<think>(.*?)</think>\s*<answer>\s*(Yes|No)\s*</answer>\s*\Z", re.DOTALL)
_ANSWER = re.compile(r"<answer>\s*(yes|no)\b", re.IGNORECASE)
_THINK = re.compile(r"<think>(.*?)(?:</think>|<answer>|\Z)", re.DOTALL)


@dataclass(frozen=True)
class Parsed:
    """A completion split into its parts.

    Attributes:
        reasoning: the text inside ``<think>...</think>`` (stripped); without a think tag, the text
            before ``<answer>`` (or the whole completion).
        answer: ``"Yes"``, ``"No"`` or ``None`` when no ``<answer>Yes|No`` can be found. Read leniently
            (case-insensitive, first answer tag) so a broken format still yields the model's answer.
        format_ok: True only for exactly ``<think>...</think><answer>Yes|No</answer>``, with whitespace
            allowed around the whole completion, between ``</think>`` and ``<answer>``, and inside the
            answer tags; anything else (text after ``</answer>``, two answers, lower-case ``yes``) is False.
    """

    reasoning: str
    answer: str | None
    format_ok: bool


def parse_completion(text: str) -> Parsed:
    """Parse a generated completion strictly for format, leniently for the answer.

    Args:
        text: the decoded completion, special tokens removed.

    Returns:
        :class:`Parsed`.
    """
    strict = _STRICT.match(text)
    # A second <think> or <answer> inside the reasoning is a broken format, not a valid one.
    if strict and not any(tag in strict.group(1) for tag in ("<think>", "</think>", "<answer>", "</answer>")):
        return Parsed(strict.group(1).strip(), strict.group(2), True)
    m = _ANSWER.search(text)
    answer = m.group(1).capitalize() if m else None
    think = _THINK.search(text)
    if think:
        reasoning = think.group(1)
    else:
        reasoning = text.split(ANSWER_PREFIX, 1)[0]
    return Parsed(reasoning.strip(), answer, False)


def answer_prefix_for(text: str) -> str | None:
    """What to append to a completion so the next token is the answer (``None``: nothing is needed).

    The Yes/No score is read at the position that writes the answer word after ``<answer>``
    (:mod:`readl.model.inference`). A completion that has ``<answer>`` is scored there. One without it (cut off, or
    rambling) is scored after
    appending the answer prefix: ``"</think><answer>"`` when the think block is still open,
    ``"<answer>"`` otherwise. This keeps a score for every image (documented fallback).

    Args:
        text: the decoded completion.
    """
    if ANSWER_PREFIX in text:
        return None
    if "<think>" in text and "</think>" not in text:
        return "</think>" + ANSWER_PREFIX
    return ANSWER_PREFIX


def build_messages(system_prompt: str = SYSTEM_PROMPT, question: str = QUESTION) -> list[dict]:
    """Chat messages for one image (the image itself goes to the processor separately).

    Returns:
        ``[{"role": "system", ...}, {"role": "user", "content": [{"type": "image"}, {"type": "text", ...}]}]``
        in the Qwen2.5-VL chat format.
    """
    return [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
    ]
