"""Real-IAD (Wang et al., CVPR 2024) as published.

Documented by the authors' repository https://github.com/Tencent/AnomalyDetection_Real-IAD (README
"Preparation" and ``datasets/explicit_dataset.py``) and read the same way by anomalib's
``RealIADDataset``::

    <root>/realiad_1024/<category>/OK/S0001/<category>_0001_OK_C1_<time>.jpg
    <root>/realiad_1024/<category>/NG/<code>/S0049/<...>_NG_<code>_C1_<time>.jpg (+ .png mask)
    <root>/realiad_jsons/<category>.json               (multi-view UIAD)
    <root>/realiad_jsons_sv/<category>.json            (single view)
    <root>/realiad_jsons_fuiad_0.0 ... _0.4/<category>.json   (FUIAD, noisy train sets)

(anomalib expects the JSON folders one level deeper, ``realiad_jsons/realiad_jsons/...``, as the
zip extracts; both places are searched.) Each JSON, as asserted by the official loader::

    {"meta": {"prefix": str, "normal_class": "OK", ...},
     "train": [sample, ...], "test": [sample, ...]}
    sample = {"category": str, "anomaly_class": str, "image_path": str, "mask_path": str | null}

Files are ``<root>/realiad_<resolution>/<prefix>/<image_path>`` (the official loader joins
``image_dir``, ``prefix`` and the path; anomalib joins the category folder and the path, so
``prefix`` is the category name or empty). Labels follow the official loader: a sample is normal
when ``anomaly_class == normal_class`` or ``mask_path`` is null (a view of a defective object in which
the defect is not visible), anomalous otherwise, in train as in test (FUIAD train sets contain
anomalies on purpose). ``defect_type`` is the published code (AK pit, BX deformation, CH abrasion,
HS scratch, PS damage, QS missing parts, YW foreign objects, ZW contamination; names from the paper,
see :data:`DEFECT_NAMES`).

Strictness: top-level keys other than meta/train/test, sample keys other than the four above, a
missing ``prefix``/``normal_class`` or a non-list split raise LayoutError naming the file. Extra
keys inside ``meta`` are allowed (readl reads only prefix and normal_class).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from .base import LayoutError, Record, read_json, require_dir, require_root

__all__ = ["DEFECT_NAMES", "SAMPLE_KEYS", "parse_real_iad_json", "real_iad"]

SAMPLE_KEYS = frozenset({"category", "anomaly_class", "image_path", "mask_path"})
TOP_KEYS = frozenset({"meta", "train", "test"})
DEFECT_NAMES = {
    "AK": "pit",
    "BX": "deformation",
    "CH": "abrasion",
    "HS": "scratch",
    "PS": "damage",
    "QS": "missing parts",
    "YW": "foreign objects",
    "ZW": "contamination",
}


def parse_real_iad_json(
    json_path: str | os.PathLike[str], image_dir: str | os.PathLike[str], *, source: str = "real_iad"
) -> list[Record]:
    """Parse one Real-IAD JSON into Records (no file-existence checks).

    Args:
        json_path: ``<category>.json`` in one of the realiad_jsons* folders.
        image_dir: the ``realiad_<resolution>`` folder the ``prefix``/``image_path`` are under.
        source: ``Record.source`` value.
    Returns:
        Records, train then test, in file order; ``category`` from each sample.
    Raises:
        LayoutError: any deviation from the format in the module docstring (message names the
            file, the split, the sample index and the offending keys).
    """
    path = Path(json_path)
    data = read_json(path, "re-extract realiad_jsons.zip")
    if not isinstance(data, dict):
        raise LayoutError(f"{path}: top level is {type(data).__name__}, expected an object")
    keys = set(data)
    if keys != TOP_KEYS:
        raise LayoutError(
            f"{path}: top-level keys {sorted(keys)}, expected exactly "
            f"{sorted(TOP_KEYS)} (missing {sorted(TOP_KEYS - keys)}, unexpected "
            f"{sorted(keys - TOP_KEYS)}); not a Real-IAD split file"
        )
    meta = data["meta"]
    if not isinstance(meta, dict) or "prefix" not in meta or "normal_class" not in meta:
        raise LayoutError(f"{path}: 'meta' must be an object with 'prefix' and 'normal_class', got {meta!r}")
    prefix = meta["prefix"] or ""
    normal_class = meta["normal_class"]
    base = Path(image_dir) / prefix
    records: list[Record] = []
    for split in ("train", "test"):
        samples = data[split]
        if not isinstance(samples, list):
            raise LayoutError(f"{path}: '{split}' must be a list, got {type(samples).__name__}")
        for i, s in enumerate(samples):
            if not isinstance(s, dict) or set(s) != SAMPLE_KEYS:
                got = sorted(s) if isinstance(s, dict) else type(s).__name__
                raise LayoutError(f"{path}: {split}[{i}] has keys {got}, expected exactly {sorted(SAMPLE_KEYS)}")
            if not s["image_path"] or not s["category"] or not s["anomaly_class"]:
                raise LayoutError(f"{path}: {split}[{i}] has an empty category, anomaly_class or image_path: {s!r}")
            normal = s["anomaly_class"] == normal_class or not s["mask_path"]
            records.append(
                Record(
                    source=source,
                    category=s["category"],
                    split=split,
                    label=0 if normal else 1,
                    defect_type="good" if normal else s["anomaly_class"],
                    image_path=base / s["image_path"],
                    mask_path=None if normal else base / s["mask_path"],
                )
            )
    return records


def _find_json(root: Path, json_set: str, category: str) -> Path | None:
    for folder in (root / json_set, root / "realiad_jsons" / json_set):
        cand = folder / f"{category}.json"
        if cand.is_file():
            return cand
    return None


def real_iad(
    root: str | os.PathLike[str],
    *,
    source: str = "real_iad",
    categories: Sequence[str] | None = None,
    json_set: str = "realiad_jsons",
    resolution: str | int = 1024,
) -> Iterator[Record]:
    """Yield Real-IAD Records for the given categories from one JSON set (module docstring).

    Args:
        root: the Real-IAD folder (holding ``realiad_<resolution>`` and the JSON folders).
        source: ``Record.source`` value.
        categories: category names (default: every ``<name>.json`` of the JSON set).
        json_set: ``realiad_jsons`` (multi-view), ``realiad_jsons_sv``, ``realiad_jsons_fuiad_0.4``...
        resolution: image folder suffix: 256, 512, 1024 or ``"raw"``.
    Raises:
        FileNotFoundError: root, the image folder, the JSON folder or a category's JSON missing.
        LayoutError: a JSON deviates from the published format.
    """
    root_p = require_root(root, source)
    image_dir = require_dir(root_p / f"realiad_{resolution}", source, f"the realiad_{resolution} image folder")
    if categories is None:
        folder = next(
            (
                f
                for f in (root_p / json_set, root_p / "realiad_jsons" / json_set)
                if f.is_dir() and any(f.glob("*.json"))
            ),
            None,
        )
        if folder is None:
            raise FileNotFoundError(
                f"{source}: no {json_set}/*.json under {root_p} (nor under realiad_jsons/"
                f"{json_set}); download realiad_jsons.zip and extract it into {root_p} "
                f"(`readl fetch {source}`)"
            )
        categories = sorted(p.stem for p in folder.glob("*.json"))
    paths = []
    for cat in categories:
        found = _find_json(root_p, json_set, cat)
        if found is None:
            raise FileNotFoundError(
                f"{source}: no {json_set}/{cat}.json under {root_p} (nor "
                f"under realiad_jsons/{json_set}); re-extract realiad_jsons.zip "
                f"(`readl fetch {source}`)"
            )
        paths.append(found)
    return (r for p in paths for r in parse_real_iad_json(p, image_dir, source=source))
