"""Curate stage speed: images/s of decode + resize + hash, and the time of a no-op `dvc repro curate`.

1. Throughput. 100 generated 1024x1024 RGB PNGs (smooth random shading + a texture + sensor noise, so
   they compress like real inspection photos: ~2 MB each) in a temp folder. Timed, serial and on a
   spawn process pool of 2 (curate's ``workers: 2``; pool start-up included):
   * ``decode_resize_hash``: decode, bicubic resize to 420x420, DCT pHash;
   * the whole per-image curate work (``readl.data.curate.process_task``: the above + writing the 420x420
     PNG), the work ``readl curate`` distributes.
   Target: >= 30 images/s on this 2-core machine.
2. No-op ``dvc repro curate``. A git clone of the repository would miss uncommitted files, so the
   script builds a temporary DVC project from copies of exactly what the stage reads: dvc.yaml,
   params.yaml, data.dvc, .dvc/config, .dvcignore, src/readl/data and data/raw (git init + those
   files). The stage command runs the installed ``readl`` (this checkout's code). It times the first
   ``dvc repro curate`` (the stage runs) and then a second one, which finds nothing changed: that
   second time (DVC start-up + hashing checks of data/raw, the code and the outputs) is the number
   to compare with the 3 s target.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
N_IMAGES = 100
SIZE = 1024


def make_images(folder: Path, n: int = N_IMAGES) -> list[Path]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        low = rng.uniform(60, 200, (8, 8, 3)).astype(np.uint8)
        shade = np.asarray(Image.fromarray(low).resize((SIZE, SIZE), Image.Resampling.BICUBIC), dtype=np.float32)
        f = rng.uniform(20, 60)
        texture = 18 * np.sin(2 * np.pi * f * (xx + 0.3 * yy)) * np.cos(2 * np.pi * f * yy)
        noise = rng.normal(0, 4, (SIZE, SIZE, 3))
        img = np.clip(shade + texture[..., None] + noise, 0, 255).astype(np.uint8)
        path = folder / f"{i:03d}.png"
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths


def decode_image(path: str) -> str:
    from readl.data.phash import decode_resize_hash

    return decode_resize_hash(path)[1]


def rate(fn, items, workers: int) -> float:
    start = time.perf_counter()
    if workers == 1:
        for item in items:
            fn(item)
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            list(pool.map(fn, items, chunksize=4))
    return len(items) / (time.perf_counter() - start)


def throughput(tmp: Path) -> list[tuple[str, int, float]]:
    from readl.data import curate as C

    paths = make_images(tmp / "png")
    mb = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
    print(f"{len(paths)} PNGs {SIZE}x{SIZE} RGB, {mb:.1f} MB each")
    tasks = [C.Task(str(p), None, None, str(tmp / "out" / f"{p.stem}.png"), None, (420, 420)) for p in paths]
    rows = []
    for workers in (1, 2):
        rows.append(("decode + resize + pHash", workers, rate(decode_image, [str(p) for p in paths], workers)))
        rows.append(("+ write 420x420 PNG (curate's work)", workers, rate(C.process_task, tasks, workers)))
    return rows


def copy_project(dst: Path) -> None:
    for name in ("dvc.yaml", "params.yaml", "data.dvc", ".dvcignore"):
        shutil.copy2(REPO / name, dst / name)
    (dst / ".dvc").mkdir()
    shutil.copy2(REPO / ".dvc" / "config", dst / ".dvc" / "config")
    shutil.copytree(
        REPO / "src" / "readl" / "data", dst / "src" / "readl" / "data", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(REPO / "data" / "raw", dst / "data" / "raw")


def repro_times(tmp: Path) -> tuple[float, float]:
    proj = tmp / "project"
    proj.mkdir()
    copy_project(proj)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
    }
    dvc = str(Path(sys.executable).with_name("dvc"))
    subprocess.run(["git", "init", "-q"], cwd=proj, check=True, env=env)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        run = subprocess.run([dvc, "repro", "-q", "curate"], cwd=proj, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if run.returncode:
            raise RuntimeError(f"dvc repro failed:\n{run.stdout}\n{run.stderr}")
        summary = [ln for ln in run.stdout.splitlines() if ln.startswith("curate:")]
        if summary:
            print(summary[-1])
    status = subprocess.run(
        [dvc, "status", "curate"], cwd=proj, env=env, capture_output=True, text=True, check=True
    ).stdout
    if "up to date" not in status.lower():
        raise RuntimeError(f"pipeline not up to date after repro:\n{status}")
    return times[0], times[1]


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="readl-bench-curate-") as tmp:
        rows = throughput(Path(tmp))
        print(f"\n{'work per image':40s} {'processes':>9s} {'images/s':>9s}")
        for what, workers, r in rows:
            print(f"{what:40s} {workers:9d} {r:9.1f}")
        first, noop = repro_times(Path(tmp))
        print(f"\n{'dvc repro curate (bundled sample)':40s} {'seconds':>9s}")
        print(f"{'first run (stage executes)':40s} {first:9.2f}")
        print(f"{'no-op (nothing changed; target <= 3 s)':40s} {noop:9.2f}")


if __name__ == "__main__":
    main()
