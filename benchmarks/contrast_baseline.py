"""Training-free contrast baseline on the curated eval datasets, with bootstrap 95% intervals.

For every eval dataset of ``data/curated/eval.parquet`` (run ``readl curate`` first): the contrast
map of each image (``readl.evaluation.baselines.contrast_map``, 15x15 like ReAL at 420 px), its
maximum as the image score, then image AUROC and pooled pixel AUROC with percentile-bootstrap
intervals over images (``bootstrap_image_auroc`` / ``bootstrap_pixel_auroc``), and the time of the
pixel bootstrap. ``NAME/base`` rows: cluster bootstrap over the raw (base) images, the honest
interval for synthetic variants of one normal image. The number any ReAL pixel AUROC of the default run must beat;
the interval width
says how large a difference the eval set can resolve (issue target: +-0.05 or narrower).

Run: ``python benchmarks/contrast_baseline.py [--curated data/curated] [--resamples 1000]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from PIL import Image

from readl.evaluation.baselines import bootstrap_image_auroc, bootstrap_pixel_auroc, contrast_map


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--curated", default="data/curated")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--grid", type=int, default=15)
    args = ap.parse_args()
    ev = pd.read_parquet(f"{args.curated}/eval.parquet")
    print(
        f"{'dataset':<15} {'n':>5} {'anom':>5} {'image AUROC [95% CI]':>24} {'pixel AUROC [95% CI]':>24} {'boot s':>7}"
    )
    for name, df in ev.groupby("source", sort=True):
        maps, masks = [], []
        for row in df.itertuples():
            with Image.open(row.image_path) as im:
                maps.append(contrast_map(im, args.grid))
            with Image.open(row.mask_path) as m:
                masks.append(np.asarray(m) > 0)
        scores = [float(m.max()) for m in maps]
        labels = df["label"].to_numpy()
        fmt = "{:.3f} [{:.3f}, {:.3f}]".format
        # per image, then clustered by raw image (the synthetic variants of one normal image)
        for tag, groups in ((name, None), (f"{name}/base", df["raw_image_path"].to_numpy())):
            if groups is not None and len(set(groups)) == len(df):
                continue
            img = bootstrap_image_auroc(scores, labels, n_resamples=args.resamples, groups=groups)
            t = time.perf_counter()
            pix = bootstrap_pixel_auroc(maps, masks, n_resamples=args.resamples, groups=groups)
            dt = time.perf_counter() - t
            print(f"{tag:<15} {len(df):>5} {int(labels.sum()):>5} {fmt(*img):>24} {fmt(*pix):>24} {dt:>7.1f}")


if __name__ == "__main__":
    main()
