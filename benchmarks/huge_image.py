"""Peak memory of ``readl predict`` and of curate's per-image work on huge images.

Generates, in a temp folder, an 8000x8000 RGB JPEG (q90) and an 8000x8000 RGB PNG (smooth random
shading, like a high-resolution inspection photo) plus a 512x512 JPEG as the baseline, and runs each
case in a fresh Python process, reporting that process's peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``):

* ``predict``: ``readl predict IMG --model tiny --out DIR --max-new-tokens 8`` (the tiny model built
  locally, built-in params; torch + the model take ~450 MB of the peak: see the 512x512 row).
* ``curate decode``: ``readl.data.curate.process_task`` on one image (decode, resize to 420x420, pHash,
  thumbnail, PNG write), the work every curate worker does per image, after importing curate.

Target: predict on the 8000x8000 JPEG <= 1 GB. Run: ``python benchmarks/huge_image.py`` (~1 min).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

PREDICT = """
import resource, sys
from readl.cli import app
try:
    app(["predict", sys.argv[1], "--model", "tiny", "--out", sys.argv[2], "--max-new-tokens", "8"],
        standalone_mode=False)
except SystemExit:
    pass
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
CURATE = """
import resource, sys
from readl.data import curate as C
task = C.Task(image=sys.argv[1], mask=None, mask_ref=None, out_image=sys.argv[2] + "/x.png",
               out_mask=None, size=(420, 420))
error = C.process_task(task)[-1]
assert error is None, error
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def picture(side: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((side, side), Image.Resampling.BILINEAR)


def peak_mb(code: str, image: Path, out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), str(image), str(out)],
        capture_output=True,
        text=True,
        check=True,
        cwd=out,
    )  # no params.yaml
    return int(res.stdout.strip().splitlines()[-1]) / 1024  # ru_maxrss is KiB on Linux


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        images = {"512x512 JPEG": t / "small.jpg", "8000x8000 JPEG": t / "huge.jpg", "8000x8000 PNG": t / "huge.png"}
        picture(512).save(images["512x512 JPEG"], quality=90)
        big = picture(8000)
        big.save(images["8000x8000 JPEG"], quality=90)
        big.save(images["8000x8000 PNG"], compress_level=1)
        del big
        print("| image | predict peak RSS (MB) | curate decode peak RSS (MB) |")
        print("|---|---|---|")
        for name, path in images.items():
            pred = peak_mb(PREDICT, path, t / f"pred-{path.stem}")
            cur = peak_mb(CURATE, path, t / f"cur-{path.stem}")
            print(f"| {name} | {pred:.0f} | {cur:.0f} |")


if __name__ == "__main__":
    main()
