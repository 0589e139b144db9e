"""``readl predict`` memory and post-processing cost (issue 15), tiny kit on CPU.

1. Peak memory for 1 vs N inputs (default 50): ``predict_files`` over N distinct --size x --size PNGs
   (the bundled MVTec grid images, resized), ``model.batch_size`` images per call, each N in a fresh
   subprocess; peak = ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of that process (MiB; glibc mmap
   threshold fixed at 64 KiB so freed image buffers leave the resident set). Target: peak(N) <= 1.2 x peak(1).
2. Post-processing share of per-image time at --size (default 1024): over the N images of one run, the
   time in ``Predictor.predict`` (generate + capture), in decoding, and the rest (ReAL, upsampling, overlay,
   PNG encode, JSON) that the loop waits for (after: drawn and encoded in a background thread while the next
   batch generates). "before" re-runs the same with the previous overlay (float64 RGBA colormap), PIL's
   default PNG level 6 and no overlap. Target: post-processing <= 25% of per-image time at 1024^2.

Run: ``python benchmarks/predict_memory.py [--n 50] [--size 1024] [--max-new-tokens 256]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _old_overlay(image, anomaly_map, alpha=0.5, cmap="jet"):
    from matplotlib import colormaps
    from PIL import Image

    rgb = image.convert("RGB")
    lo, hi = (float(anomaly_map.min()), float(anomaly_map.max())) if anomaly_map.size else (0.0, 0.0)
    scaled = (anomaly_map - lo) / (hi - lo) if hi > lo else np.zeros_like(anomaly_map)
    heat = (colormaps[cmap](scaled)[..., :3] * 255).astype(np.uint8)
    return Image.blend(rgb, Image.fromarray(heat), alpha)


class _InlineExecutor:
    """A ThreadPoolExecutor stand-in that runs each task at once in the calling thread (no overlap)."""

    def __init__(self, *a, **kw):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *a, **kw):
        from concurrent.futures import Future

        f = Future()
        f.set_result(fn(*a, **kw))
        return f


def _inputs(folder: Path, n: int, size: int) -> list[Path]:
    from PIL import Image

    src = sorted(p for p in (REPO / "data/raw/mvtec_ad/grid/test").rglob("*.png"))
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"in{i:03d}.png"
        if not p.is_file():
            with Image.open(src[i % len(src)]) as im:
                im.convert("RGB").resize((size, size), Image.BICUBIC).rotate(90 * (i // len(src))).save(
                    p, compress_level=1
                )
        out.append(p)
    return out


def _child(args) -> None:
    """One predict run; prints JSON with peak RSS and the time split."""
    import torch

    import readl.predictor as pm
    from readl.config import LocalizationConfig, ModelConfig
    from readl.model.inference import GenerationSettings, Predictor
    from readl.model.loading import load_model

    torch.manual_seed(0)
    mcfg = ModelConfig()
    model, processor = load_model("tiny", device="cpu")
    pred = Predictor(
        model, processor, image_size=mcfg.image_size, generation=GenerationSettings(max_new_tokens=args.max_new_tokens)
    )
    paths = _inputs(Path(args.work) / "in", args.n, args.size)
    pred.predict([pm.open_image(paths[0])])  # warm-up (not timed; part of the baseline memory)
    if args.before:  # the previous post-processing: float64 colormap, PNG level 6, in the main thread
        pm.overlay, pm.PNG_COMPRESS_LEVEL, pm.ThreadPoolExecutor = _old_overlay, 6, _InlineExecutor
    spent = {"predict": 0.0, "decode": 0.0, "overlay": 0.0}

    def timed(key, fn):
        def run(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[key] += time.perf_counter() - t0

        return run

    pred.predict = timed("predict", pred.predict)
    pm.open_image = timed("decode", pm.open_image)
    pm._write_overlay = timed("overlay", pm._write_overlay)  # upsample + draw + PNG encode, wherever it runs
    t0 = time.perf_counter()
    pm.predict_files(paths, pred, LocalizationConfig(), Path(args.work) / f"out{args.n}", batch_size=mcfg.batch_size)
    total = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    print(json.dumps({"peak_mib": peak, "total": total, **spent}))


def _run(args, n: int, before: bool = False) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--n",
        str(n),
        "--size",
        str(args.size),
        "--work",
        args.work,
        "--max-new-tokens",
        str(args.max_new_tokens),
    ] + (["--before"] if before else [])
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--before", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args)
    with tempfile.TemporaryDirectory() as tmp:
        args.work = tmp
        one, many = _run(args, 1), _run(args, args.n)
        print(f"peak memory, {args.size}^2 inputs, batch_size 4 (MiB)")
        print(f"{'inputs':>7} {'peak MiB':>9}")
        print(
            f"{1:>7} {one['peak_mib']:>9.0f}\n{args.n:>7} {many['peak_mib']:>9.0f}   "
            f"ratio {many['peak_mib'] / one['peak_mib']:.3f}"
        )
        old = _run(args, args.n, before=True)
        print(f"\nper-image time at {args.size}^2 over {args.n} images (ms)")
        print(f"{'':>8} {'total':>7} {'predict':>8} {'decode':>7} {'post':>6} {'post share':>11} {'overlay work':>13}")
        for name, r in (("before", old), ("after", many)):
            post = r["total"] - r["predict"] - r["decode"]
            ms = [1e3 * v / args.n for v in (r["total"], r["predict"], r["decode"], post, r["overlay"])]
            print(
                f"{name:>8} {ms[0]:>7.1f} {ms[1]:>8.1f} {ms[2]:>7.1f} {ms[3]:>6.1f} {post / r['total']:>10.1%} "
                f"{ms[4]:>13.1f}"
            )
        print(
            "post = what the loop waits for besides predict/decode; overlay work = upsample + draw + PNG encode "
            "(after: in the background thread)"
        )


if __name__ == "__main__":
    main()
