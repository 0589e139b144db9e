"""KolektorSDD ("SDD"; Tabernik et al., "Segmentation-based deep-learning approach for
surface-defect detection", J. Intell. Manuf. 2020) and KolektorSDD2 (Bozic et al., 2021).

KolektorSDD, documented at https://www.vicos.si/resources/kolektorsdd/ and read the same way by
anomalib's ``KolektorDataset``: 50 physical parts, 8 views each::

    <root>/kos01/Part0.jpg, Part0_label.bmp, Part1.jpg, Part1_label.bmp, ...
    ...
    <root>/kos50/...

Every image has a mask; defect-free images have an all-zero mask, so the label comes from whether
the mask is empty (``readl.data.masks.mask_is_empty``, anomalib's ``is_mask_anomalous``). No split
is published (the paper uses 3-fold cross-validation over parts): ``split="all"``;
``category="kolektorsdd"``; ``defect_type="unknown"`` for anomalies (no defect classes published).
Views of one part are near-duplicates: keep them in one subset when splitting (the kos folder is
the image's parent folder).

KolektorSDD2 (https://www.vicos.si/resources/kolektorsdd2/)::

    <root>/{train,test}/<NNNNN>.png with masks <NNNNN>_GT.png

read by :func:`ksdd2` (split as published, label from the mask). :func:`sdd` accepts either.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

from .base import LayoutError, Record, image_files, labelled_by_mask, require_root

__all__ = ["ksdd2", "sdd"]

_KOS = re.compile(r"^kos\d+$")


def sdd(root: str | os.PathLike[str], *, source: str = "sdd", category: str = "kolektorsdd") -> Iterator[Record]:
    """Yield KolektorSDD Records (module docstring); a KolektorSDD2 tree is passed to :func:`ksdd2`.

    Args:
        root: folder holding ``kos01``..``kos50`` (or KolektorSDD2's ``train``/``test``).
        source, category: Record field values.
    Returns:
        Iterator of Records ordered by kos folder and part number; every record has its mask.
        Masks are decoded (lazily, while iterating) to find the label.
    Raises:
        FileNotFoundError: root missing.
        LayoutError: no kos folders (and no KolektorSDD2 layout); an image without its
            ``<stem>_label.bmp`` mask.
        readl.data.images.BadImageError: a mask cannot be decoded (while iterating).
    """
    root_p = require_root(root, source)
    kos = sorted(p for p in root_p.iterdir() if p.is_dir() and _KOS.match(p.name))
    if not kos:
        if (root_p / "train").is_dir() or (root_p / "test").is_dir():
            return ksdd2(root_p, source=source)
        raise LayoutError(
            f"{source}: no kosNN folders under {root_p}; expected "
            f"<root>/kos01/Part0.jpg + Part0_label.bmp (KolektorSDD)"
        )
    pairs = []
    for folder in kos:
        for img in image_files(folder, (".jpg", ".jpeg", ".png")):
            if img.stem.endswith("_label"):
                continue
            mask = next(
                (m for m in (folder / f"{img.stem}_label.bmp", folder / f"{img.stem}_label.png") if m.is_file()), None
            )
            if mask is None:
                raise LayoutError(f"{source}: {img} has no {img.stem}_label.bmp mask; the download is incomplete")
            pairs.append((img, mask))
    pairs.sort(key=lambda p: (p[0].parent.name, _natural(p[0].stem)))
    return labelled_by_mask(((i, m, category, "all") for i, m in pairs), source)


def _natural(stem: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", stem))


def ksdd2(root: str | os.PathLike[str], *, source: str = "ksdd2", category: str = "kolektorsdd2") -> Iterator[Record]:
    """Yield KolektorSDD2 Records: ``<split>/<stem>.png`` with mask ``<stem>_GT.png``.

    Raises:
        FileNotFoundError: root missing.
        LayoutError: no train/ or test/ folder; an image without its ``_GT`` mask.
        readl.data.images.BadImageError: a mask cannot be decoded (while iterating).
    """
    root_p = require_root(root, source)
    splits = [root_p / s for s in ("train", "test") if (root_p / s).is_dir()]
    if not splits:
        raise LayoutError(f"{source}: no train/ or test/ folder under {root_p} (KolektorSDD2)")
    pairs = []
    for split_dir in splits:
        for img in image_files(split_dir):
            if img.stem.endswith("_GT"):
                continue
            mask = next(
                (m for m in (split_dir / f"{img.stem}_GT.png", split_dir / f"{img.stem}_GT.bmp") if m.is_file()), None
            )
            if mask is None:
                raise LayoutError(f"{source}: {img} has no {img.stem}_GT.png mask")
            pairs.append((img, mask, split_dir.name))
    return labelled_by_mask(((i, m, category, s) for i, m, s in pairs), source)
