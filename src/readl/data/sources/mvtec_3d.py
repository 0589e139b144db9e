"""MVTec 3D-AD (its RGB images) as published.

MVTec 3D-AD (Bergmann et al., VISAPP 2022; https://www.mvtec.com/company/research/datasets/mvtec-3d-ad;
read the same way by anomalib's ``MVTec3DDataset``)::

    <root>/<category>/train/good/rgb/000.png          (+ xyz/000.tiff, ignored)
    <root>/<category>/validation/good/rgb/000.png
    <root>/<category>/test/<defect>/rgb/000.png
    <root>/<category>/test/<defect>/gt/000.png        (mask; test/good has all-zero ones)

Only the RGB images are read (the ``xyz`` point clouds are not used by readl); a defect image's mask
is ``gt/<stem>.png`` beside its ``rgb`` folder (None when missing). Normal images get no mask, as
in :mod:`.mvtec`. Other folders of a category (e.g. ``calibration``) are not splits and are skipped.

"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from .base import LayoutError, Record, image_files, require_root, subdirs
from .mvtec import category_dirs, find_mask, mask_index

__all__ = ["mvtec_3d"]

_3D_SPLITS = ("train", "validation", "test")


def mvtec_3d(
    root: str | os.PathLike[str], *, source: str = "mvtec_3d", categories: Sequence[str] | None = None
) -> Iterator[Record]:
    """Yield Records of MVTec 3D-AD's RGB images (module docstring).

    Args:
        root: folder holding the category folders (or one category folder).
        source: ``Record.source`` value.
        categories: category names to read (all found when None).
    Returns:
        Records ordered by category, split (train, validation, test), defect, file name;
        anomalies carry ``mask_path=<defect>/gt/<stem>.png`` (None when missing).
    Raises:
        FileNotFoundError: ``root`` or a requested category is missing.
        LayoutError: no category folder; a defect folder without ``rgb/`` (e.g. an MVTec AD tree:
            use the ``mvtec`` layout for it).
    """
    tree = "<category>/{train,validation}/good/rgb/*.png, <category>/test/<defect>/{rgb,gt}/*.png"
    cats = category_dirs(require_root(root, source), categories, source, tree=tree)
    return _iter_3d(cats, source, tree)


def _iter_3d(cats: list[Path], source: str, tree: str) -> Iterator[Record]:
    for cat in cats:
        for split in (s for s in _3D_SPLITS if (cat / s).is_dir()):
            for defect_dir in subdirs(cat / split):
                rgb = defect_dir / "rgb"
                if not rgb.is_dir():
                    raise LayoutError(
                        f"{source}: {defect_dir} has no rgb/ folder; this adapter "
                        f"reads {tree} (for the MVTec AD layout use 'mvtec')"
                    )
                normal = defect_dir.name == "good"
                masks = {} if normal else mask_index(defect_dir / "gt")
                for f in image_files(rgb):
                    yield Record(
                        source=source,
                        category=cat.name,
                        split=split,
                        label=0 if normal else 1,
                        defect_type="good" if normal else defect_dir.name,
                        image_path=f,
                        mask_path=None if normal else find_mask(masks, f.stem, ("",)),
                    )
