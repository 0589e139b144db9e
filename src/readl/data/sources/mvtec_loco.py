"""MVTec LOCO AD as published.

Documented by MVTec (Bergmann et al., IJCV 2022; https://www.mvtec.com/company/research/datasets/mvtec-loco)
and read the same way by anomalib's ``MVTecLOCODataset``::

    <root>/<category>/train/good/000.png
    <root>/<category>/validation/good/000.png
    <root>/<category>/test/{good,logical_anomalies,structural_anomalies}/000.png
    <root>/<category>/ground_truth/<defect>/000/000.png, 001.png, ...

Each anomalous image has a FOLDER of masks, one per defect region/type, each with a per-defect grey
value (238-255, listed in the category's ``defects_config.json``). The record keeps the folder
(``mask_kind="dir_union"``); ``readl.data.masks.load_mask`` ORs the binarised masks.
Split names are kept as published (``validation``, not ``val``); hidden (dot) folders are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from .base import Record, image_files, require_root, subdirs
from .mvtec import category_dirs

__all__ = ["CATEGORIES", "mvtec_loco"]

CATEGORIES = ("breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors")


def mvtec_loco(
    root: str | os.PathLike[str], *, source: str = "mvtec_loco", categories: Sequence[str] | None = None
) -> Iterator[Record]:
    """Yield MVTec LOCO Records (module docstring).

    Args:
        root: folder holding the category folders (or one category folder).
        source: ``Record.source`` value.
        categories: category names to read (all found when None).
    Returns:
        Iterator of Records; anomalies carry ``mask_path=<ground_truth/defect/stem>`` (a folder,
        ``mask_kind="dir_union"``) or None when that folder is missing.
    Raises:
        FileNotFoundError: ``root`` or a requested category is missing.
        LayoutError: no category folder found.
    """
    cats = category_dirs(require_root(root, source), categories, source)
    return _iter(cats, source)


def _iter(cats: list[Path], source: str) -> Iterator[Record]:
    for cat in cats:
        for split_dir in (d for d in subdirs(cat) if d.name != "ground_truth"):
            for defect_dir in subdirs(split_dir):
                normal = defect_dir.name == "good"
                for f in image_files(defect_dir):
                    mask_dir = cat / "ground_truth" / defect_dir.name / f.stem
                    has_mask = not normal and mask_dir.is_dir()
                    yield Record(
                        source=source,
                        category=cat.name,
                        split=split_dir.name,
                        label=0 if normal else 1,
                        defect_type="good" if normal else defect_dir.name,
                        image_path=f,
                        mask_path=mask_dir if has_mask else None,
                        mask_kind="dir_union" if has_mask else "none",
                    )
