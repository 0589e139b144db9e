"""Step time of CGRO (format + accuracy + consistency, with the attention-capture pass) vs the paper's "R1"
baseline (format + accuracy, no capture) on the same tiny Qwen2.5-VL config, CPU. Target: CGRO <= 1.3x R1.

A step = generation of the rollouts + scoring (+ the capture pass for CGRO) + the GRPO forward/backward
(TRL's ``step_time``). The first ``--warmup`` steps are dropped; the table shows the median of the rest and
the mean time of the capture pass itself (``consistency/capture_s``).

Usage: ``.venv/bin/python benchmarks/train_step.py [--steps 12] [--sizes 112,420] [--tokens 32]``
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # stable timings on a shared 2-core machine

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from transformers.trainer_callback import PrinterCallback  # noqa: E402

from readl.config import Params  # noqa: E402
from readl.model.loading import load_model  # noqa: E402
from readl.training.data import load_manifest  # noqa: E402
from readl.training.train import build_trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RUNS = {"R1": ["format", "accuracy"], "CGRO": ["format", "accuracy", "consistency"]}


def manifest(out: Path) -> Path:
    raw = REPO / "data" / "raw"
    paths = (
        sorted((raw / "mvtec_ad" / "grid" / "test").glob("*/*.png"))[:4]
        + sorted((raw / "hazelnut_toy" / "hazelnut" / "test").glob("*/*.jpg"))[:4]
    )
    pd.DataFrame({"image_path": [str(p) for p in paths], "label": [1, 0] * 4}).to_parquet(out)
    return out


def run(
    rewards: list[str], size: int, tokens: int, steps: int, gens: int, tmp: Path
) -> tuple[list[float], list[float]]:
    params = Params.model_validate(
        {
            "model": {"base": "tiny", "image_size": size},
            "train": {
                "rewards": rewards,
                "max_steps": steps,
                "num_generations": gens,
                "per_device_train_batch_size": 2 * gens,
                "max_completion_length": tokens,
                "save_steps": 10_000,
                "seed": 0,
            },
        }
    )
    frame = load_manifest(manifest(tmp / "m.parquet"))
    trainer = build_trainer(
        params, frame, tmp / f"ckpt-{len(rewards)}", model_and_processor=load_model("tiny", device="cpu")
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    hist = [h for h in trainer.state.log_history if "step_time" in h]
    return [h["step_time"] for h in hist], [h["consistency/capture_s"] for h in hist if "consistency/capture_s" in h]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--sizes", default="112,420")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--generations", type=int, default=4)
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in a.sizes.split(",")):
            med = {}
            cap = 0.0
            for name, rewards in RUNS.items():
                times, captures = run(rewards, size, a.tokens, a.steps, a.generations, Path(tmp))
                med[name] = statistics.median(times[a.warmup :])
                if captures:
                    cap = statistics.mean(captures[a.warmup :])
            rows.append((size, (size // 28) ** 2, med["R1"], med["CGRO"], cap, med["CGRO"] / med["R1"]))
    print(
        f"\nGRPO step time, tiny Qwen2.5-VL on CPU (1 thread), {2 * a.generations} rollouts/step "
        f"({a.generations} per image), {a.tokens} new tokens, median of {a.steps - a.warmup} steps\n"
    )
    print(f"{'image':>6} | {'map':>5} | {'R1 s/step':>9} | {'CGRO s/step':>11} | {'capture s':>9} | {'CGRO/R1':>7}")
    print("-" * 62)
    for size, cells, r1, cgro, cap, ratio in rows:
        side = int(cells**0.5)
        print(f"{size:>6} | {side:>2}x{side:<2} | {r1:9.3f} | {cgro:11.3f} | {cap:9.3f} | {ratio:7.2f}x")


if __name__ == "__main__":
    main()
