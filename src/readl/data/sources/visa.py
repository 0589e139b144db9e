"""VisA (Zou et al., "SPot-the-Difference", ECCV 2022) as published.

Documented at https://github.com/amazon-science/spot-diff (README "VisA dataset"): the archive has one
folder per object and split files under ``split_csv/``::

    <root>/split_csv/1cls.csv        columns object,split,label,image,mask
    <root>/split_csv/2cls_fewshot.csv, 2cls_highshot.csv   (same columns)
    <root>/<object>/Data/Images/{Normal,Anomaly}/NNNN.JPG
    <root>/<object>/Data/Masks/Anomaly/NNN.png
    <root>/<object>/image_anno.csv   columns image,label,mask (label = defect description)

``label`` is ``normal`` or ``anomaly``; ``image``/``mask`` are paths relative to ``<root>``; mask is
empty for normal rows. The published 1cls.csv has 10,821 rows over 12 objects: train 8,659 normal;
test 962 normal + 1,200 anomalous. VisA's raw masks store small class indices (0 background, 1, 2, ...
per defect); readl's mask binarisation treats any non-zero value of a lossless mask as defect.

Defect types: 1cls.csv has none. When ``<root>/<object>/image_anno.csv`` exists (assumed columns
``image,label,mask``, image relative to ``<root>``), its ``label`` text is used for anomalous rows;
otherwise ``defect_type="unknown"``. The CSV parser is strict: a different header, an unknown label
value or an empty field raises LayoutError with the line number.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from .base import LayoutError, Record, require_root

__all__ = ["CATEGORIES", "SPLIT_COLUMNS", "read_split_csv", "visa"]

CATEGORIES = (
    "candle",
    "capsules",
    "cashew",
    "chewinggum",
    "fryum",
    "macaroni1",
    "macaroni2",
    "pcb1",
    "pcb2",
    "pcb3",
    "pcb4",
    "pipe_fryum",
)
SPLIT_COLUMNS = ("object", "split", "label", "image", "mask")
_LABELS = {"normal": 0, "anomaly": 1}


def _defect_names(root: Path, obj: str, cache: dict[str, dict[str, str]]) -> dict[str, str]:
    if obj in cache:
        return cache[obj]
    names: dict[str, str] = {}
    anno = root / obj / "image_anno.csv"
    if anno.is_file():
        with open(anno, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames and {"image", "label"} <= set(reader.fieldnames):
                for row in reader:
                    text = (row.get("label") or "").strip()
                    if text and text.lower() != "normal":
                        names[(row.get("image") or "").strip()] = text
    cache[obj] = names
    return names


def read_split_csv(
    csv_path: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    *,
    source: str = "visa",
    categories: Sequence[str] | None = None,
) -> list[Record]:
    """Parse a VisA split CSV (``object,split,label,image,mask``) into Records. Pure parsing:
    the image files need not exist.

    Args:
        csv_path: the CSV file, e.g. ``<root>/split_csv/1cls.csv``.
        root: folder the CSV's paths are relative to (default: the CSV's grandparent).
        source: ``Record.source`` value.
        categories: objects to keep (all when None).
    Returns:
        Records in file order: ``category`` = object, ``split`` as written (train/test), label
        0/1, ``image_path``/``mask_path`` = ``root / value`` (mask None when empty).
    Raises:
        FileNotFoundError: the CSV does not exist.
        LayoutError: header is not exactly ``object,split,label,image,mask``; a row has the wrong
            number of fields, an empty object/split/image, or a label other than normal/anomaly.
    """
    csv_p = Path(csv_path)
    if not csv_p.is_file():
        raise FileNotFoundError(
            f"{source}: split file {csv_p} not found; the VisA archive has "
            f"split_csv/1cls.csv next to the object folders "
            f"(`readl fetch {source}`)"
        )
    base = Path(root) if root is not None else csv_p.parent.parent
    keep = None if categories is None else set(categories)
    cache: dict[str, dict[str, str]] = {}
    records: list[Record] = []
    with open(csv_p, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != SPLIT_COLUMNS:
            raise LayoutError(f"{csv_p}: header {header!r}, expected {','.join(SPLIT_COLUMNS)} (VisA split_csv format)")
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(SPLIT_COLUMNS):
                raise LayoutError(f"{csv_p}:{lineno}: {len(row)} fields, expected 5: {row!r}")
            obj, split, label_s, image, mask = (v.strip() for v in row)
            if not obj or not split or not image:
                raise LayoutError(f"{csv_p}:{lineno}: empty object/split/image field: {row!r}")
            if label_s not in _LABELS:
                raise LayoutError(f"{csv_p}:{lineno}: label {label_s!r}, expected 'normal' or 'anomaly'")
            if keep is not None and obj not in keep:
                continue
            label = _LABELS[label_s]
            defect = "good"
            if label:
                defect = _defect_names(base, obj, cache).get(image, "unknown")
            records.append(
                Record(
                    source=source,
                    category=obj,
                    split=split,
                    label=label,
                    defect_type=defect,
                    image_path=base / image,
                    mask_path=(base / mask) if mask else None,
                )
            )
    return records


def visa(
    root: str | os.PathLike[str],
    *,
    source: str = "visa",
    split_csv: str = "1cls.csv",
    categories: Sequence[str] | None = None,
) -> Iterator[Record]:
    """Yield VisA Records from ``<root>/split_csv/<split_csv>`` (see :func:`read_split_csv`).

    Raises:
        FileNotFoundError: ``root`` or the split CSV is missing.
        LayoutError: malformed CSV (see :func:`read_split_csv`).
    """
    root_p = require_root(root, source)
    return iter(read_split_csv(root_p / "split_csv" / split_csv, root_p, source=source, categories=categories))
