"""Benchmark: pixel AUROC + AUPR (average precision) on 1,725 maps of 256x256, ours vs scikit-learn.

Data: float32 maps (1,725 x 256 x 256 = 113M pixels, 452 MB) with bool masks of elliptic blobs
(~3 % anomalous pixels, ~60 % of images with 1-3 blobs), in two flavours:

* smooth: normal pixels ~ N(0.4, 0.15), anomalous ~ N(0.6, 0.15);
* skewed: normal ~ lognormal(-4, 1.5) (median 0.018, heavy tail), anomalous ~ lognormal(-2.5, 1.5),
  plus 1e-5 of the pixels x1000 ("attention sink" spikes that stretch the range).

Methods, each on the same arrays:

* sklearn: ``roc_auc_score`` + ``average_precision_score`` on the flattened arrays;
* ours, 2-pass: ``auroc_aupr(maps, masks)`` (ScoreProfile pass + adaptive 2**20-bin histogram);
* ours, 1-pass: ``BinaryCurveAccumulator(lo, hi)`` fed one map at a time (range known up front,
  taken here from the data outside the timing; fixed hybrid linear/log bins).

Measured: wall time and peak memory as tracemalloc sees it: the peak of traced allocations
during the call minus what was allocated before it. numpy reports its array buffers to
tracemalloc, so this counts every numpy temporary (sklearn's sort buffers included), not
interpreter or library code pages. Ours: time = best of 3 untraced runs, memory from a 4th,
traced run. sklearn: one traced run gives both (~90 s per flavour; tracing costs it < 5 %, its
allocations being few and large). Errors are |ours - sklearn|. Machine: 2 cores; numpy runs
these steps single-threaded.

Usage: python benchmarks/metrics.py [--quick] [--maps N] [--flavours smooth,skewed] [--no-sklearn]
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

from readl.evaluation.metrics import BinaryCurveAccumulator, auroc_aupr

H = W = 256


def make_masks(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, H, W) bool: ~60 % of images get 1-3 elliptic blobs; ~3 % anomalous pixels overall."""
    masks = np.zeros((n, H, W), bool)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    for i in np.flatnonzero(rng.random(n) < 0.6):
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.uniform(20, H - 20, 2)
            ry, rx = rng.uniform(10, 36, 2)
            th = rng.uniform(0, np.pi)
            c, s = np.cos(th), np.sin(th)
            u, v = (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c
            masks[i] |= (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
    return masks


def make_maps(masks: np.ndarray, flavour: str, rng: np.random.Generator) -> np.ndarray:
    """float32 maps filled block by block (peak memory ~ the final array)."""
    maps = np.empty(masks.shape, np.float32)
    for a in range(0, len(maps), 64):
        m = masks[a : a + 64]
        z = rng.standard_normal(m.shape, dtype=np.float32)
        if flavour == "smooth":
            z *= 0.15
            z += np.where(m, np.float32(0.6), np.float32(0.4))
        else:
            z *= 1.5
            z += np.where(m, np.float32(-2.5), np.float32(-4.0))
            np.exp(z, out=z)
            z[rng.random(m.shape) < 1e-5] *= 1000.0
        maps[a : a + 64] = z
    return maps


def sklearn_both(maps: np.ndarray, masks: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    y, s = masks.reshape(-1), maps.reshape(-1)
    return roc_auc_score(y, s), average_precision_score(y, s)


def ours_two_pass(maps: np.ndarray, masks: np.ndarray) -> tuple[float, float]:
    r = auroc_aupr(maps, masks)
    return r.auroc, r.aupr


def ours_one_pass(lo: float, hi: float) -> Callable[[np.ndarray, np.ndarray], tuple[float, float]]:
    def run(maps: np.ndarray, masks: np.ndarray) -> tuple[float, float]:
        acc = BinaryCurveAccumulator(lo, hi)
        for m, k in zip(maps, masks, strict=True):
            acc.update(m, k)
        r = acc.compute()
        return r.auroc, r.aupr

    return run


def timed(f: Callable[[], tuple[float, float]], repeat: int) -> tuple[float, tuple[float, float]]:
    best, out = float("inf"), (float("nan"), float("nan"))
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        out = f()
        best = min(best, time.perf_counter() - t)
    return best, out


def traced_run(f: Callable[[], tuple[float, float]]) -> tuple[float, float, tuple[float, float]]:
    """(seconds, peak traced bytes above the start, result) of one run under tracemalloc."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        t = time.perf_counter()
        out = f()
        dt = time.perf_counter() - t
        return dt, tracemalloc.get_traced_memory()[1] - base, out
    finally:
        tracemalloc.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="200 maps instead of 1,725")
    ap.add_argument("--maps", type=int, default=None, help="number of maps (overrides --quick)")
    ap.add_argument("--flavours", default="smooth,skewed")
    ap.add_argument("--no-sklearn", action="store_true", help="skip sklearn (errors not reported)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n = args.maps or (200 if args.quick else 1725)

    rng = np.random.default_rng(args.seed)
    t = time.perf_counter()
    masks = make_masks(n, rng)
    print(
        f"{n} maps of {H}x{W} = {masks.size / 1e6:.1f}M pixels, {masks.mean() * 100:.2f} % anomalous "
        f"(masks built in {time.perf_counter() - t:.1f} s)"
    )
    rows = []
    for flavour in args.flavours.split(","):
        maps = make_maps(masks, flavour, rng)
        lo, hi = float(maps.min()), float(maps.max())
        med = float(np.median(maps[::7, ::7, ::7]))
        print(
            f"\n[{flavour}] scores in [{lo:.3g}, {hi:.3g}], median {med:.3g}; "
            f"score array {maps.nbytes / 2**20:.0f} MiB",
            flush=True,
        )
        ref = None
        if not args.no_sklearn:
            t_sk, mem_sk, ref = traced_run(lambda: sklearn_both(maps, masks))
            print(f"  sklearn: {t_sk:.1f} s", flush=True)
            rows.append((flavour, "sklearn roc_auc + AP", t_sk, mem_sk, maps.nbytes, ref, ref))
        methods = (("ours 2-pass auroc_aupr", ours_two_pass), ("ours 1-pass per map", ours_one_pass(lo, hi)))
        for name, fn in methods:
            tt, res = timed(lambda fn=fn: fn(maps, masks), 3)
            mem = traced_run(lambda fn=fn: fn(maps, masks))[1]
            rows.append((flavour, name, tt, mem, maps.nbytes, res, ref))
            print(f"  {name}: {tt:.2f} s", flush=True)
        maps = None  # free the array before the next flavour is made
        gc.collect()

    print(
        "\n| flavour | method | time s | speed-up | peak MiB | peak / scores "
        "| AUROC | abs err AUROC | AP | abs err AP |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    sk_time = {r[0]: r[2] for r in rows if r[1].startswith("sklearn")}
    for flavour, name, tt, mem, nbytes, res, ref in rows:
        speed = f"{sk_time[flavour] / tt:.0f}x" if flavour in sk_time else "-"
        if ref is not None and not name.startswith("sklearn"):
            ea, ep = f"{abs(res[0] - ref[0]):.1e}", f"{abs(res[1] - ref[1]):.1e}"
        else:
            ea = ep = "-"
        print(
            f"| {flavour} | {name} | {tt:.2f} | {speed} | {mem / 2**20:.0f} | {mem / nbytes:.2f} | "
            f"{res[0]:.6f} | {ea} | {res[1]:.6f} | {ep} |"
        )


if __name__ == "__main__":
    main()
