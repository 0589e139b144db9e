"""Time the ReAL chain for one image: R=256 reasoning tokens on a 15x15 grid, single thread.

Run: .venv/bin/python benchmarks/real_map.py [--runs 200] [--tokens 256]
Prints the median time per image of real_map, of spatial_entropy alone, and of a naive
per-token scipy loop for S_I (the obvious implementation) for comparison. Target: real_map <= 5 ms.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from readl.localization.anomaly_map import real_map  # noqa: E402
from readl.localization.scores import spatial_entropy  # noqa: E402

TARGET_MS = 5.0


def make_inputs(n_tok: int, h: int = 15, w: int = 15, n_words: int = 4, seed: int = 0):
    """Dirichlet attention with mixed concentration (sharp to diffuse maps), float32."""
    rng = np.random.default_rng(seed)
    conc = rng.choice([0.05, 0.2, 1.0, 5.0], size=n_tok)
    image_attn = np.stack([rng.dirichlet(np.full(h * w, c)) for c in conc]).reshape(n_tok, h, w)
    anomaly_attn = rng.dirichlet(np.ones(n_words + 1), size=n_tok)[:, :n_words] * 0.2
    return image_attn.astype(np.float32), anomaly_attn.astype(np.float32)


def naive_spatial_entropy(image_attn: np.ndarray) -> np.ndarray:
    """One scipy.ndimage.label call per token (mean rule, 8-connected)."""
    out = np.empty(len(image_attn))
    structure = np.ones((3, 3))
    for r, m in enumerate(image_attn.astype(np.float64)):
        on = m > m.mean()
        if not on.any():
            out[r] = np.log(m.size)
            continue
        lab, n = ndimage.label(on, structure=structure)
        mass = ndimage.sum_labels(m, lab, index=np.arange(1, n + 1))
        p = mass / mass.sum()
        out[r] = -(p * np.log(p)).sum()
    return out


def median_ms(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=256)
    args = parser.parse_args()

    image_attn, anomaly_attn = make_inputs(args.tokens)
    np.testing.assert_allclose(spatial_entropy(image_attn), naive_spatial_entropy(image_attn), atol=1e-9)

    rows = [
        ("real_map (full chain)", median_ms(lambda: real_map(image_attn, anomaly_attn, 0.5, 0.5), args.runs)),
        ("spatial_entropy (mosaic, 1 label call)", median_ms(lambda: spatial_entropy(image_attn), args.runs)),
        ("naive per-token scipy loop (S_I only)", median_ms(lambda: naive_spatial_entropy(image_attn), args.runs)),
    ]
    title = f"ReAL, R={args.tokens} tokens, 15x15 grid, median of {args.runs} runs, 1 thread"
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        table.add_column("step")
        table.add_column("ms / image", justify="right")
        table.add_column("us / token", justify="right")
        for name, ms in rows:
            table.add_row(name, f"{ms:.3f}", f"{ms * 1e3 / args.tokens:.2f}")
        Console().print(table)
    except ImportError:
        print(title)
        for name, ms in rows:
            print(f"{name:<42} {ms:8.3f} ms  {ms * 1e3 / args.tokens:6.2f} us/token")
    verdict = "OK" if rows[0][1] <= TARGET_MS else "OVER TARGET"
    print(f"target real_map <= {TARGET_MS} ms: {verdict}")


if __name__ == "__main__":
    main()
