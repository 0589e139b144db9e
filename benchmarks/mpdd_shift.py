"""Are the MPDD metal plates that training draws from like the ones evaluation draws from?

Prints, per folder of the bundled re-split (``data/raw/mpdd_derived/metal_plate/{test,train,val}``: training and
calibration draw from ``test``, the ``mpdd`` eval set from ``train`` + ``val``) and per label (1 = its mask has a
defect pixel), the mean +- std over photos of three whole-image statistics: brightness (grey mean, 0-255), contrast
(grey standard deviation) and colour (mean red minus mean blue). A shift of the normals between the training
folder and the eval folders puts eval normals outside what training called normal; a statistic whose
normal-vs-anomalous order flips between them would be a cue a model learns backwards (README "One result per
commit").

    python benchmarks/mpdd_shift.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def photo_stats(path: Path) -> tuple[float, float, float]:
    """(brightness, contrast, red - blue) of one RGB photo, in 0-255 grey levels."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float64)  # (H, W, 3)
    grey = rgb.mean(axis=2)  # (H, W)
    return grey.mean(), grey.std(), rgb[..., 0].mean() - rgb[..., 2].mean()


def main() -> None:
    from tabulate import tabulate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=ROOT / "data/raw/mpdd_derived/metal_plate")
    args = ap.parse_args()
    rows = []
    for folder in ("test", "train", "val"):
        images = sorted((args.root / folder / "images").glob("*.png"))
        if not images:
            raise SystemExit(f"no images under {args.root / folder / 'images'}: run `dvc pull data.dvc` first")
        by_label: dict[int, list] = {0: [], 1: []}
        for p in images:
            mask = args.root / folder / "masks" / p.name
            label = int(mask.exists() and np.asarray(Image.open(mask)).max() > 0)
            by_label[label].append(photo_stats(p))
        for label, stats in by_label.items():
            a = np.array(stats)  # (N, 3)
            cells = [f"{m:.1f} +- {s:.1f}" for m, s in zip(a.mean(0), a.std(0))]
            rows.append([folder, "anomalous" if label else "normal", len(a), *cells])
    print(tabulate(rows, ["folder", "label", "photos", "brightness", "contrast (grey std)", "red - blue"]))


if __name__ == "__main__":
    main()
