"""Evaluate throughput: images/s of generate + teacher-forced capture at model.batch_size 1 / 4 / 8 (CPU).

What ``readl evaluate`` / ``calibrate`` run per batch (``Predictor.predict``: left-padded prompts, greedy
``generate`` by the HF backend, then one capture pass), on the bundled real images (cycled to --images),
resized to --image-size, on the tiny kit (default) or any --base. Greedy completions are checked equal to
the batch-1 ones (issue 15). Median of --repeats runs after a warm-up batch.

Run: ``python benchmarks/generation.py [--base tiny] [--images 16] [--max-new-tokens 64]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="tiny")
    ap.add_argument("--device", default=None)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=420)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import torch

    from readl.data.images import load_rgb
    from readl.model.inference import GenerationSettings, Predictor
    from readl.model.loading import load_model

    torch.manual_seed(0)
    paths = sorted((REPO / "data/raw/mvtec_ad").rglob("*.png")) + sorted(
        (REPO / "data/raw/hazelnut_toy").rglob("*.jpg")
    )
    paths = [p for p in paths if "ground_truth" not in p.parts]
    images = [load_rgb(paths[i % len(paths)], size=None) for i in range(args.images)]
    model, processor = load_model(args.base, device=args.device)
    pred = Predictor(
        model, processor, image_size=args.image_size, generation=GenerationSettings(max_new_tokens=args.max_new_tokens)
    )
    pred.predict(images[:1])  # warm-up
    reference = None
    print(f"{'batch':>5} {'images/s':>9} {'s/image':>8} {'completion chars/image':>23}  same completions as batch 1")
    for b in args.batch_sizes:
        times, outs = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            outs = [p for lo in range(0, len(images), b) for p in pred.predict(images[lo : lo + b])]
            times.append(time.perf_counter() - t0)
        texts = [p.completion for p in outs]
        reference = reference or texts
        n_chars = statistics.mean(len(t) for t in texts)
        t = statistics.median(times)
        print(f"{b:>5} {len(images) / t:>9.2f} {t / len(images):>8.3f} {n_chars:>23.1f}  {texts == reference}")


if __name__ == "__main__":
    main()
