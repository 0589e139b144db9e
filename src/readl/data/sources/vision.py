"""VISION Datasets (Bai et al., "VISION Datasets: A Benchmark for Vision-based InduStrial InspectiON",
CVPR 2023 workshop) as published.

Documented on the dataset card https://huggingface.co/datasets/VISION-Workshop/VISION-Datasets: 14
industrial datasets (Cable, Capacitor, Casting, Console, Cylinder, Electronics, Groove, Hemisphere,
Lens, PCB_1, PCB_2, Ring, Screw, Wood) curated from Roboflow, with polygon defect labels in COCO
format. Assumed layout (Roboflow's COCO export, one annotation file per split folder)::

    <root>/<Dataset>/<split>/_annotations.coco.json
    <root>/<Dataset>/<split>/<file_name>          (file_name as in the JSON's "images")

Every split folder holding ``_annotations.coco.json`` is read (train / val / test as published);
folders without one (the card's unlabelled ``inference`` images) are skipped, since they have no
label. An image with at least one annotation is anomalous, with ``defect_type`` the sorted,
``+``-joined names of its annotation categories; an image without annotations is normal. Masks are
not files: the record keeps the JSON (``mask_kind="coco"``) and the COCO image id
(``mask_ref``); ``readl.data.masks.load_mask(path, coco_image_id=...)`` rasterises the polygons.
Strictness: a JSON without ``images``/``annotations``/``categories`` lists, an annotation whose
image id or category id is unknown, or an image entry without ``id``/``file_name`` raises
LayoutError.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from .base import LayoutError, Record, read_json, require_dir, require_root

__all__ = ["ANNOTATION_FILE", "parse_coco_split", "vision"]

ANNOTATION_FILE = "_annotations.coco.json"


def parse_coco_split(
    json_path: str | os.PathLike[str], *, source: str = "vision", category: str | None = None, split: str | None = None
) -> list[Record]:
    """Parse one COCO annotation file into Records (images relative to the JSON's folder).

    Args:
        json_path: the ``_annotations.coco.json`` file.
        source: ``Record.source`` value.
        category: ``Record.category`` (default: the grandparent folder name).
        split: ``Record.split`` (default: the parent folder name).
    Returns:
        One Record per entry of ``images``, in file order.
    Raises:
        LayoutError: malformed COCO (see module docstring).
    """
    path = Path(json_path)
    data = read_json(path, "re-download the split")
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise LayoutError(f"{path}: expected a COCO object with 'images', 'annotations' and 'categories' lists")
    try:
        cat_names = {c["id"]: str(c["name"]) for c in data["categories"]}
        images = [(im["id"], str(im["file_name"])) for im in data["images"]]
    except (KeyError, TypeError) as exc:
        raise LayoutError(f"{path}: category or image entry without {exc}") from None
    known = {i for i, _ in images}
    defects: dict[object, set[str]] = {}
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or ann.get("image_id") not in known:
            raise LayoutError(
                f"{path}: annotations[{k}] refers to unknown image id "
                f"{ann.get('image_id') if isinstance(ann, dict) else ann!r}"
            )
        if ann.get("category_id") not in cat_names:
            raise LayoutError(f"{path}: annotations[{k}] has unknown category id {ann.get('category_id')!r}")
        defects.setdefault(ann["image_id"], set()).add(cat_names[ann["category_id"]])
    cat = category or path.parent.parent.name
    spl = split or path.parent.name
    records = []
    for image_id, file_name in images:
        names = defects.get(image_id)
        records.append(
            Record(
                source=source,
                category=cat,
                split=spl,
                label=1 if names else 0,
                defect_type="+".join(sorted(names)) if names else "good",
                image_path=path.parent / file_name,
                mask_path=path if names else None,
                mask_kind="coco" if names else "none",
                mask_ref=str(image_id) if names else None,
            )
        )
    return records


def vision(
    root: str | os.PathLike[str], *, source: str = "vision", categories: Sequence[str] | None = None
) -> Iterator[Record]:
    """Yield VISION Records for every labelled split of every dataset folder (module docstring).

    Args:
        root: folder holding the dataset folders (Cable, Capacitor, ...), or one dataset folder.
        source: ``Record.source`` value.
        categories: dataset folder names to read (all when None).
    Raises:
        FileNotFoundError: root or a requested dataset folder missing.
        LayoutError: no ``_annotations.coco.json`` found; malformed COCO.
    """
    root_p = require_root(root, source)
    if categories is not None:
        cats = [require_dir(root_p / c, source, f"dataset folder {c!r}") for c in categories]
    elif any((p / ANNOTATION_FILE).is_file() for p in root_p.iterdir() if p.is_dir()):
        cats = [root_p]
    else:
        cats = sorted(p for p in root_p.iterdir() if p.is_dir() and not p.name.startswith("."))
    jsons = [
        s / ANNOTATION_FILE for c in cats for s in sorted(c.iterdir()) if s.is_dir() and (s / ANNOTATION_FILE).is_file()
    ]
    if not jsons:
        raise LayoutError(f"{source}: no <dataset>/<split>/{ANNOTATION_FILE} under {root_p}")
    return (r for j in jsons for r in parse_coco_split(j, source=source))
