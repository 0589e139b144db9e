"""Generic "images + masks" folders: the label is whether the image's mask is empty.

A common third-party re-packaging of segmentation benchmarks (e.g. the MPDD-derived set bundled in
``data/raw/mpdd_derived``, from BupeshKumarR/defect-segmentation-for-mpdd)::

    <root>/[<category>/][<split>/]images/<name>.<ext>
    <root>/[<category>/][<split>/]masks/<name>.<ext>    (same stem; "<name>_mask" also accepted)

Every folder named ``images`` under ``root`` (``root`` included) that has a sibling ``masks``
folder is read. The path between ``root`` and that pair gives the record's fields: a last part
that is a split name (train, test, val, valid, validation) is the split, the part before it the
category; with no category part the category is ``root``'s name; with no split part the split is
``"all"``. Every image must have a mask (normal images have an all-zero one): an image without
one has an unknown label: a :class:`~.base.MissingMaskError` (a LayoutError), or, inside
:func:`~.base.report_bad_masks` (``readl curate``: ``missing_mask`` in rejected.csv), reported and
skipped. ``defect_type`` is ``"unknown"`` for
anomalies (the layout has no defect classes). Masks are decoded, lazily, to find the labels.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from .base import LayoutError, MissingMaskError, Record, image_files, labelled_by_mask, report_or_raise, require_root
from .mvtec import find_mask, mask_index

__all__ = ["SPLIT_NAMES", "images_masks"]

SPLIT_NAMES = frozenset({"train", "test", "val", "valid", "validation"})


def _pairs(root: Path) -> list[Path]:
    found = [root] if (root / "images").is_dir() and (root / "masks").is_dir() else []
    found += sorted(
        p.parent for p in root.rglob("images") if p.is_dir() and p.parent != root and (p.parent / "masks").is_dir()
    )
    return found


def images_masks(
    root: str | os.PathLike[str], *, source: str = "images_masks", category: str | None = None, split: str | None = None
) -> Iterator[Record]:
    """Yield Records from images/ + masks/ folder pairs (module docstring).

    Args:
        root: top folder to search.
        source: ``Record.source`` value.
        category, split: override the values inferred from the path.
    Returns:
        Records ordered by folder then file name; every record has ``mask_path``.
    Raises:
        FileNotFoundError: root missing.
        LayoutError: no images/+masks/ pair under root; MissingMaskError: an image without a mask
            (reported and skipped inside ``report_bad_masks``).
        readl.data.images.BadImageError: a mask cannot be decoded (while iterating).
    """
    root_p = require_root(root, source)
    bases = _pairs(root_p)
    if not bases:
        raise LayoutError(f"{source}: no images/ folder with a sibling masks/ folder under {root_p}")
    items: list[tuple[Path, Path, str, str]] = []
    for base in bases:
        parts = base.relative_to(root_p).parts
        spl = parts[-1] if parts and parts[-1].lower() in SPLIT_NAMES else None
        rest = parts[:-1] if spl else parts
        cat = category or (rest[-1] if rest else root_p.name)
        masks = mask_index(base / "masks")
        for img in image_files(base / "images"):
            mask = find_mask(masks, img.stem, ("", "_mask"))
            if mask is None:
                report_or_raise(
                    img,
                    MissingMaskError(
                        img,
                        f"has no mask in {base / 'masks'} (expected {img.stem}.png or "
                        f"{img.stem}_mask.png); its label is unknown: add the mask or delete "
                        f"the image",
                    ),
                )
                continue
            items.append((img, mask, cat, split or spl or "all"))

    return labelled_by_mask(items, source)
