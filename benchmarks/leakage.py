"""Leakage guard: copies caught and distinct photos wrongly dropped, pHash alone vs pHash + SSIM.

Data: the bundled real hazelnut_toy normals (data/raw/hazelnut_toy/hazelnut/{train,test}/good, 34
photos of one object under one camera set-up). Each photo is curated as ``readl curate`` does
(``load_rgb`` to 420x420, :func:`readl.data.images.phash`, :func:`readl.data.leakage.thumbnail`).

* Distinct pairs: all 561 pairs of different photos. "flagged" = pHash within ``d`` bits (pHash
  alone, the guard before SSIM confirmation) / and SSIM >= ``leakage_min_ssim`` (the guard now).
* Copies: every photo saved exact (PNG), re-encoded (JPEG q80), resized (1/2, 1/4 bicubic, 2x), then
  curated; "caught" counts copies the guard at ``d`` (and the SSIM threshold) would drop.

Run: ``python benchmarks/leakage.py`` (about 10 s on 2 cores).
"""

from __future__ import annotations

import io
import itertools
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from readl.config import CurateConfig
from readl.data.images import load_rgb
from readl.data.leakage import ssim, thumbnail
from readl.data.phash import hamming, phash

ROOT = Path(__file__).resolve().parents[1] / "data/raw/hazelnut_toy/hazelnut"
DISTANCES = (3, 4, 6, 8, 10, 12)


def curated(src: Image.Image | Path, tmp: Path) -> tuple[str, np.ndarray]:
    if isinstance(src, Image.Image):
        src.save(tmp / "copy.png")
        src = tmp / "copy.png"
    img = load_rgb(src, (420, 420))
    return phash(img), thumbnail(img)


def copies(path: Path) -> dict[str, Image.Image]:
    raw = Image.open(path).convert("RGB")
    buf = io.BytesIO()
    raw.save(buf, "JPEG", quality=80)
    w, h = raw.size
    return {
        "exact": raw,
        "jpeg_q80": Image.open(io.BytesIO(buf.getvalue())),
        "half": raw.resize((w // 2, h // 2), Image.Resampling.BICUBIC),
        "quarter": raw.resize((w // 4, h // 4), Image.Resampling.BICUBIC),
        "double": raw.resize((w * 2, h * 2), Image.Resampling.BICUBIC),
    }


def main() -> None:
    min_ssim = CurateConfig().leakage_min_ssim
    files = sorted(ROOT.glob("*/good/*.jpg"))
    tmp = Path(tempfile.mkdtemp())
    ref = [curated(f, tmp) for f in files]
    pairs = [
        (hamming(ref[i][0], ref[j][0]), ssim(ref[i][1], ref[j][1]))
        for i, j in itertools.combinations(range(len(files)), 2)
    ]
    kinds: dict[str, list[tuple[int, float]]] = {}
    for f, (h, t) in zip(files, ref):
        for kind, img in copies(f).items():
            ch, ct = curated(img, tmp)
            kinds.setdefault(kind, []).append((hamming(h, ch), ssim(t, ct)))
    d = np.array([p[0] for p in pairs])
    s = np.array([p[1] for p in pairs])
    print(
        f"{len(files)} hazelnut_toy normals, {len(pairs)} distinct pairs; SSIM of distinct pairs: "
        f"max {s.max():.3f}; leakage_min_ssim {min_ssim}"
    )
    print(
        "| d (bits) | distinct flagged, pHash alone | distinct flagged, pHash + SSIM | "
        + " | ".join(f"{k} caught" for k in kinds)
        + " |"
    )
    print("|---" * (3 + len(kinds)) + "|")
    for dist in DISTANCES:
        row = [f"{int((d <= dist).sum())} ({(d <= dist).mean():.1%})", f"{int(((d <= dist) & (s >= min_ssim)).sum())}"]
        for v in kinds.values():
            arr = np.array(v)
            row.append(f"{int(((arr[:, 0] <= dist) & (arr[:, 1] >= min_ssim)).sum())}/{len(arr)}")
        print(f"| {dist} | " + " | ".join(row) + " |")
    for kind, v in kinds.items():
        arr = np.array(v)
        print(f"{kind}: pHash distance max {int(arr[:, 0].max())} bits, SSIM min {arr[:, 1].min():.4f}")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
