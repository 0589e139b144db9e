"""MVTec AD 2 (Heckler-Kram et al., "The MVTec AD 2 Dataset", 2025) as published.

Documented at https://www.mvtec.com/company/research/datasets/mvtec-ad-2: 8 objects (can, fabric,
fruit_jelly, rice, sheet_metal, vial, wallplugs, walnuts)::

    <root>/<object>/train/good/*.png
    <root>/<object>/validation/good/*.png
    <root>/<object>/test_public/good/*.png
    <root>/<object>/test_public/bad/*.png
    <root>/<object>/test_public/ground_truth/bad/<stem>_mask.png
    <root>/<object>/test_private/*.png, test_private_mixed/*.png   (no labels)

"No label" is expressed by omission: the ``test_private*`` images (scored by MVTec's evaluation
server) are never Records, so nothing unlabelled can reach curate's manifests or the metrics;
:func:`mvtec_ad2_unlabelled` lists them for ``readl predict``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from .base import Record, image_files, require_root, subdirs
from .mvtec import category_dirs, find_mask, mask_index

__all__ = ["LABELLED_SPLITS", "PRIVATE_SPLITS", "mvtec_ad2", "mvtec_ad2_unlabelled"]

LABELLED_SPLITS = ("train", "validation", "test_public")
PRIVATE_SPLITS = ("test_private", "test_private_mixed")
"""MVTec AD 2 test sets published without labels (scored by MVTec's evaluation server)."""


def mvtec_ad2(
    root: str | os.PathLike[str], *, source: str = "mvtec_ad2", categories: Sequence[str] | None = None
) -> Iterator[Record]:
    """Yield the LABELLED images of MVTec AD 2 (module docstring; ``test_private*`` never).

    Split names are kept as published (``test_public``); ``defect_type`` of an anomaly is ``"bad"`` (AD 2 publishes
    no defect
    classes); the mask of ``bad/<stem>.png`` is ``ground_truth/bad/<stem>_mask.png`` (or
    ``<stem>.png``), None when missing.

    Args:
        root: folder holding the object folders (or one object folder).
        source: ``Record.source`` value.
        categories: object names to read (all found when None).
    Returns:
        Records ordered by object, split (train, validation, test_public), folder, file name.
    Raises:
        FileNotFoundError: ``root`` or a requested object is missing.
        LayoutError: no object folder with train/ or test_public/.
    """
    tree = (
        "<object>/{train,validation}/good/*.png, <object>/test_public/{good,bad}/*.png, "
        "<object>/test_public/ground_truth/bad/*_mask.png"
    )
    cats = category_dirs(require_root(root, source), categories, source, markers=("train", "test_public"), tree=tree)
    return _iter_ad2(cats, source)


def _iter_ad2(cats: list[Path], source: str) -> Iterator[Record]:
    for cat in cats:
        for split in (s for s in LABELLED_SPLITS if (cat / s).is_dir()):
            for defect_dir in (d for d in subdirs(cat / split) if d.name != "ground_truth"):
                normal = defect_dir.name == "good"
                gt = cat / split / "ground_truth" / defect_dir.name
                masks = {} if normal else mask_index(gt)
                for f in image_files(defect_dir):
                    yield Record(
                        source=source,
                        category=cat.name,
                        split=split,
                        label=0 if normal else 1,
                        defect_type="good" if normal else defect_dir.name,
                        image_path=f,
                        mask_path=None if normal else find_mask(masks, f.stem, ("_mask", "")),
                    )


def mvtec_ad2_unlabelled(
    root: str | os.PathLike[str], *, categories: Sequence[str] | None = None, splits: Sequence[str] = PRIVATE_SPLITS
) -> list[Path]:
    """The unlabelled MVTec AD 2 test images, for ``readl predict`` (never for metrics).

    Args:
        root: as :func:`mvtec_ad2`.
        categories: object names (all found when None).
        splits: which unlabelled folders (default ``test_private`` and ``test_private_mixed``).
    Returns:
        Image files sorted by object, split, path (images directly in the split folder or one
        level below it).
    Raises:
        FileNotFoundError / LayoutError: as :func:`mvtec_ad2`.
    Example:
        ``readl predict $(python -c "from readl.data.sources.mvtec_ad2 import mvtec_ad2_unlabelled
        as u; print(*u('data/raw/mvtec_ad2', categories=['can']))") --out predictions/can``
    """
    source = "mvtec_ad2"
    cats = category_dirs(
        require_root(root, source),
        categories,
        source,
        markers=("train", "test_public", *splits),
        tree="<object>/test_private/*.png",
    )
    out: list[Path] = []
    for cat in cats:
        for split in (s for s in splits if (cat / s).is_dir()):
            out += image_files(cat / split)
            for sub in subdirs(cat / split):
                out += image_files(sub)
    return out
