"""Time of the reasoning-token mask (``readl.model.inference.reasoning_token_mask``) before/after issue 15.

Before: the offsets of every token came from decoding every prefix (O(T^2) characters decoded), as the
reference :func:`readl.model.tokens_reference.reference_reasoning_and_answer` still does (the one the unit
test checks the fast path against). After: one pass over the tokens' bytes with an incremental UTF-8
decoder (O(T)). Both run here, side by side,
on the same completions of the tiny kit's byte-level BPE tokenizer: ``<think>`` + an inspection sentence
repeated (with multi-byte characters) + ``</think><answer>Yes</answer>``, cut to T tokens. The masks are
checked equal. Target (issue 15): >= 20x at T = 1024.

Run: ``python benchmarks/reasoning_mask.py [--repeats 5]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _completion(tok, t: int) -> list[int]:
    body = tok.encode(
        "A bent thread near the top edge of the grid, café-coloured stain 漢 ✓. ", add_special_tokens=False
    )
    head = tok.encode("<think>", add_special_tokens=False)
    tail = tok.encode("</think><answer>Yes</answer>", add_special_tokens=False)
    ids = head + body * (t // len(body) + 1)
    return ids[: t - len(tail)] + tail


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 512, 1024])
    args = ap.parse_args()
    from transformers import AutoTokenizer

    from readl.model.inference import reasoning_token_mask
    from readl.model.tiny import ensure_tiny_model
    from readl.model.tokens_reference import reference_reasoning_and_answer

    tok = AutoTokenizer.from_pretrained(ensure_tiny_model())
    print(f"{'T':>6} {'before ms':>10} {'after ms':>9} {'speed-up':>9}  equal")
    for t in args.lengths:
        ids = _completion(tok, t)
        old, new = reference_reasoning_and_answer(tok, ids), reasoning_token_mask(tok, ids)
        equal = np.array_equal(old[0], new[0]) and old[1] == new[1]
        before = _median_ms(lambda: reference_reasoning_and_answer(tok, ids), args.repeats)
        after = _median_ms(lambda: reasoning_token_mask(tok, ids), args.repeats)
        print(f"{len(ids):>6} {before:>10.2f} {after:>9.3f} {before / after:>8.1f}x  {equal}")


if __name__ == "__main__":
    main()
