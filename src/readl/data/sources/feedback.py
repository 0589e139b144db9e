"""Inspectors' verdicts exported by ``readl feedback export`` (:mod:`readl.production.feedback`): image-level labels,
no masks::

    <root>/labels.csv          image,label,defect_type,category,reviewers,decided_at,model_version
    <root>/images/<sha256>.<ext>

``label`` 0 = OK, 1 = NG; ``image`` relative to ``root``. Every image is published as split ``"train"``;
``defect_type`` is the reviewer's (``"unknown"`` when none was given), ``"good"`` for OK.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path

from .base import LayoutError, Record, require_root

__all__ = ["feedback"]


def feedback(
    root: str | os.PathLike[str], *, source: str = "feedback", category: str | None = None
) -> Iterator[Record]:
    """Yield one Record per row of ``<root>/labels.csv`` (module docstring).

    Args:
        root: the export folder (``data/raw/feedback``).
        source: ``Record.source``. category: overrides the CSV's ``category`` column.
    Raises:
        FileNotFoundError: ``root`` missing. LayoutError: no ``labels.csv``, a label not 0/1, or an image file
            missing (the message names the row and the fix: ``readl feedback export`` again).
    """
    root_p = require_root(root, source)
    table = root_p / "labels.csv"
    if not table.is_file():
        raise LayoutError(f"{source}: {table} not found; write the export with `readl feedback export`")
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    records = []
    for n, row in enumerate(rows, 2):
        image = root_p / row["image"]
        if row.get("label") not in ("0", "1"):
            raise LayoutError(f"{table} line {n}: label {row.get('label')!r} is not 0 or 1")
        if not image.is_file():
            raise LayoutError(f"{table} line {n}: {image} is missing; run `readl feedback export` again")
        label = int(row["label"])
        records.append(
            Record(
                source=source,
                category=category or row.get("category") or "feedback",
                split="train",
                label=label,
                defect_type=(row.get("defect_type") or "unknown") if label else "good",
                image_path=Path(image),
            )
        )
    return iter(records)
