"""Strict <think>/<answer> parsing and the answer-prefix rule."""

from __future__ import annotations

import pytest

from readl.model.prompting import answer_prefix_for, parse_completion


@pytest.mark.parametrize(
    ("text", "answer", "ok", "reasoning"),
    [
        ("<think>A crack near the top.</think><answer>Yes</answer>", "Yes", True, "A crack near the top."),
        ("  <think>fine</think>\n <answer> No </answer>\n", "No", True, "fine"),
        ("<think>x</think><answer>Yes</answer> extra", "Yes", False, "x"),  # trailing text
        ("<think>x</think><answer>yes</answer>", "Yes", False, "x"),  # lower case: answer read, format broken
        ("<think>x</think>", None, False, "x"),  # no answer
        ("<answer>No</answer>", "No", False, ""),  # no reasoning block
        ("<think>x<answer>Yes</answer>", "Yes", False, "x"),  # think never closed
        ("<think>a</think><think>b</think><answer>No</answer>", "No", False, "a"),  # two think blocks
        ("<think>x</think><answer>Maybe</answer>", None, False, "x"),
        ("The part looks normal. No.", None, False, "The part looks normal. No."),
        ("", None, False, ""),
        ("<think>x</think><answer>Yes</answer><answer>No</answer>", "Yes", False, "x"),
    ],
)
def test_parse_completion(text, answer, ok, reasoning):
    parsed = parse_completion(text)
    assert parsed.answer == answer
    assert parsed.format_ok is ok
    assert parsed.reasoning == reasoning


@pytest.mark.parametrize(
    ("text", "prefix"),
    [
        ("<think>x</think><answer>Yes</answer>", None),
        ("<think>x</think><answer>", None),
        ("<think>cut off mid sentence", "</think><answer>"),
        ("<think>x</think>", "<answer>"),
        ("no tags at all", "<answer>"),
    ],
)
def test_answer_prefix(text, prefix):
    assert answer_prefix_for(text) == prefix
