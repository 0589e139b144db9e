"""BSData, ball screw drive surface defects (Schlagenhauf & Landwehr, Data in Brief 2021) as published.

Documented at https://github.com/2Obe/BSData (README "BSData - dataset for Instance Segmentation"):
1,104 RGB JPEG images, 394 of them with labelme annotations of the defect "pitting"::

    <root>/data/<name>.jpg        all images
    <root>/label/<name>.json      labelme JSON (shapes: polygon, label "Pitting") for annotated ones

An image with a label JSON holding at least one shape is anomalous (``defect_type`` = its sorted,
``+``-joined, lower-cased shape labels, e.g. ``"pitting"``; ``mask_kind="labelme"``, rasterised by
``readl.data.masks.load_mask``); an image without one is normal. The dataset publishes no split
folders (a script in the repository derives splits), so ``split="all"``; ``category="ball_screw"``.
A label JSON without a matching image is a LayoutError.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from .base import LayoutError, Record, image_files, read_json, require_dir, require_root

__all__ = ["bsdata"]


def _shape_labels(path: Path) -> list[str]:
    data = read_json(path, "re-download BSData")
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise LayoutError(f"{path}: not a labelme file (no 'shapes' list)")
    return [str(s.get("label", "")).strip().lower() or "unknown" for s in data["shapes"]]


def bsdata(root: str | os.PathLike[str], *, source: str = "bsdata", category: str = "ball_screw") -> Iterator[Record]:
    """Yield BSData Records (module docstring).

    Args:
        root: the BSData folder holding ``data/`` and ``label/``.
        source, category: Record field values.
    Raises:
        FileNotFoundError: root or ``data/`` missing (``label/`` may be absent: all normal).
        LayoutError: a label JSON without an image, or a JSON that is not labelme.
    """
    root_p = require_root(root, source)
    data_dir = require_dir(root_p / "data", source, "the data/ image folder")
    label_dir = root_p / "label"
    images = image_files(data_dir)
    labels = {p.stem: p for p in label_dir.glob("*.json")} if label_dir.is_dir() else {}
    orphans = sorted(set(labels) - {p.stem for p in images})
    if orphans:
        raise LayoutError(
            f"{source}: {len(orphans)} label file(s) without an image in {data_dir}, "
            f"e.g. {labels[orphans[0]]}; the download is incomplete"
        )
    return _iter(images, labels, source, category)


def _iter(images: list[Path], labels: dict[str, Path], source: str, category: str) -> Iterator[Record]:
    for img in images:
        js = labels.get(img.stem)
        names = sorted(set(_shape_labels(js))) if js is not None else []
        yield Record(
            source=source,
            category=category,
            split="all",
            label=1 if names else 0,
            defect_type="+".join(names) if names else "good",
            image_path=img,
            mask_path=js if names else None,
            mask_kind="labelme" if names else "none",
        )
