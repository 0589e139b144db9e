"""MVTec AD layout, and the benchmarks published in the same layout.

Layout (MVTec AD, Bergmann et al., CVPR 2019; https://www.mvtec.com/company/research/datasets/mvtec-ad;
also anomalib's ``MVTecADDataset``)::

    <root>/<category>/train/good/000.png
    <root>/<category>/test/good/000.png
    <root>/<category>/test/<defect>/000.png
    <root>/<category>/ground_truth/<defect>/000_mask.png

Benchmarks read with the same adapter (their pages say "same format as MVTec AD"):

* MPDD (Jezek et al., ICUMT 2021; https://github.com/stepanje/MPDD): ``NNN_mask.png``.
* WFDD (woven fabric, Chen et al., GLASS, ECCV 2024; https://github.com/cqylunlun/GLASS):
  categories grey_cloth, grid_cloth, pink_flower, yellow_cloth; ``NNN_mask.png``.
* DTD-Synthetic (Aota et al., WACV 2023): texture categories (e.g. ``Woven_001``), ``NNN_mask.png``.
* anomalib's "hazelnut_toy" camera set: JPEG images ``NN.jpg`` with masks ``NN.png`` (no suffix).
* GoodsAD (see :mod:`.goodsad`) and PR-REAL (see :mod:`.pr_real`).
* BTAD (Mishra et al., 2021; https://github.com/pankajmishra000/VT-ADL) via :func:`btad`: normal
  folder ``ok`` instead of ``good``, anomalies in ``ko``; category 01 has .bmp images with .png
  masks, 02 .png/.png, 03 .bmp/.bmp; masks share the image's stem.

Mask matching: for image ``<stem>.<ext>`` in ``<split>/<defect>/``, the first existing
``ground_truth/<defect>/<stem><suffix>.<mext>`` for suffix in ``mask_suffixes`` (default
``"_mask"`` then ``""``) and mext in .png, .bmp, .tif, .tiff, .jpg, .jpeg. An anomalous image
with no mask gets ``mask_path=None`` (the manifest schema rejects it where masks are required).
Assumptions: every sub-folder of a category except ``ground_truth`` is a split (train, test, and
validation where published); only images directly inside ``<split>/<defect>/`` are read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from .base import IMAGE_EXTENSIONS, LayoutError, Record, image_files, require_dir, require_root

__all__ = ["btad", "dtd", "mpdd", "mvtec", "wfdd"]

MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")
_SPLIT_MARKERS = ("train", "test")


def category_dirs(
    root: Path,
    categories: Sequence[str] | None,
    source: str,
    mask_dir_name: str = "ground_truth",
    *,
    markers: Sequence[str] = _SPLIT_MARKERS,
    tree: str | None = None,
) -> list[Path]:
    """Category folders under ``root`` holding one of the ``markers`` folders (or ``[root]`` when
    root itself is one category). ``tree`` is the expected layout shown in the error.

    Raises:
        FileNotFoundError: a requested category is missing. LayoutError: none found.
    """
    if categories is not None:
        return [require_dir(root / c, source, f"category folder {c!r}") for c in categories]
    if any((root / m).is_dir() for m in markers):
        return [root]
    found = sorted(
        p
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and any((p / m).is_dir() for m in markers)
    )
    if not found:
        tree = tree or f"<root>/<category>/{{train,test,{mask_dir_name}}}/<defect>/"
        raise LayoutError(f"{source}: no category folder with {'/ or '.join(markers)}/ under {root}; expected {tree}")
    return found


def mask_index(folder: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    if not folder.is_dir():
        return index
    rank = {e: i for i, e in enumerate(MASK_EXTENSIONS)}
    for p in sorted(folder.iterdir()):
        ext = p.suffix.lower()
        if p.is_file() and ext in rank:
            old = index.get(p.stem)
            if old is None or rank[ext] < rank[old.suffix.lower()]:
                index[p.stem] = p
    return index


def find_mask(index: dict[str, Path], stem: str, suffixes: Sequence[str]) -> Path | None:
    """First mask in ``index`` (stem -> path) named ``stem + suffix`` for suffix in order."""
    for suffix in suffixes:
        hit = index.get(stem + suffix)
        if hit is not None:
            return hit
    return None


def mvtec(
    root: str | os.PathLike[str],
    *,
    source: str = "mvtec_ad",
    categories: Sequence[str] | None = None,
    good_names: Sequence[str] = ("good",),
    mask_suffixes: Sequence[str] = ("_mask", ""),
    mask_dir_name: str = "ground_truth",
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> Iterator[Record]:
    """Read an MVTec-AD-style tree (see the module docstring) and yield one Record per image.

    Args:
        root: folder holding category folders, or one category folder itself.
        source: ``Record.source`` value (e.g. ``"mpdd"``, ``"wfdd"``).
        categories: category folder names to read (all when None).
        good_names: defect-folder names meaning "normal" (case-sensitive).
        mask_suffixes: tried in order after the image stem to find its mask.
        mask_dir_name: the ground-truth folder name.
        extensions: image file suffixes to read.
    Returns:
        Iterator of Records ordered by category, split, defect folder, file name. Normal images
        have ``defect_type="good"`` and no mask.
    Raises:
        FileNotFoundError: ``root`` (or a requested category) does not exist.
        LayoutError: no category folder found; a defect folder holds sub-folders but no images
            (a nested layout such as MVTec 3D, which this adapter does not read).
    """
    root_p = require_root(root, source)
    cats = category_dirs(root_p, categories, source, mask_dir_name)
    return _iter_mvtec(cats, source, tuple(good_names), tuple(mask_suffixes), mask_dir_name, tuple(extensions))


def _iter_mvtec(
    cats: list[Path],
    source: str,
    good_names: tuple[str, ...],
    mask_suffixes: tuple[str, ...],
    mask_dir_name: str,
    extensions: tuple[str, ...],
) -> Iterator[Record]:
    for cat in cats:
        splits = sorted(
            p for p in cat.iterdir() if p.is_dir() and p.name != mask_dir_name and not p.name.startswith(".")
        )
        for split_dir in splits:
            for defect_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                files = image_files(defect_dir, extensions)
                if not files and any(p.is_dir() for p in defect_dir.iterdir()):
                    raise LayoutError(
                        f"{source}: {defect_dir} holds folders but no images; this adapter reads "
                        f"<category>/<split>/<defect>/<image> (MVTec AD layout)"
                    )
                normal = defect_dir.name in good_names
                index = {} if normal else mask_index(cat / mask_dir_name / defect_dir.name)
                for f in files:
                    yield Record(
                        source=source,
                        category=cat.name,
                        split=split_dir.name,
                        label=0 if normal else 1,
                        defect_type="good" if normal else defect_dir.name,
                        image_path=f,
                        mask_path=None if normal else find_mask(index, f.stem, mask_suffixes),
                    )


def btad(
    root: str | os.PathLike[str], *, source: str = "btad", categories: Sequence[str] | None = None
) -> Iterator[Record]:
    """BTAD: the MVTec layout with ``ok`` (normal) / ``ko`` (anomalous) folders.

    Args/returns/raises: as :func:`mvtec`; ``defect_type`` is ``"ko"`` for anomalies (BTAD
    publishes no defect classes). Source: BTAD download (Mishra et al., "VT-ADL", ISIE 2021).
    """
    return mvtec(root, source=source, categories=categories, good_names=("ok", "good"))


def mpdd(
    root: str | os.PathLike[str], *, source: str = "mpdd", categories: Sequence[str] | None = None
) -> Iterator[Record]:
    """MPDD as published (MVTec layout, ``NNN_mask.png``); see :func:`mvtec`."""
    return mvtec(root, source=source, categories=categories)


def wfdd(
    root: str | os.PathLike[str], *, source: str = "wfdd", categories: Sequence[str] | None = None
) -> Iterator[Record]:
    """WFDD as published (MVTec layout); see :func:`mvtec`."""
    return mvtec(root, source=source, categories=categories)


def dtd(
    root: str | os.PathLike[str], *, source: str = "dtd", categories: Sequence[str] | None = None
) -> Iterator[Record]:
    """DTD-Synthetic as published (MVTec layout); see :func:`mvtec`."""
    return mvtec(root, source=source, categories=categories)
