"""anomalib's "folder" format: user-named folders of normal / abnormal images plus a mask folder.

Documented by anomalib (``anomalib.data.Folder`` / ``make_folder_dataset``;
https://anomalib.readthedocs.io, "Custom Data" how-to)::

    <root>/<normal_dir>/*.png          normal images (train)
    <root>/<abnormal_dir>/*.png        anomalous images (test)
    <root>/<normal_test_dir>/*.png     optional normal test images
    <root>/<mask_dir>/*.png            masks for the abnormal images, named like them
                                       ("000.png" or "000_mask.png" for image "000.png")

Each ``*_dir`` may be one folder name or a list of them (relative to ``root``, or absolute).
Splits: ``normal_dir`` -> ``"train"``, ``abnormal_dir`` and ``normal_test_dir`` -> ``"test"``
(anomalib can additionally move a fraction of the normal images to test at load time; that is a
split decision, left to curate). ``defect_type`` of an anomaly is its abnormal folder's name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from .base import Record, image_files, require_dir, require_root
from .mvtec import _mask_index, find_mask

__all__ = ["folder"]

Dirs = str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None


def _dirs(root: Path, value: Dirs, source: str, what: str) -> list[Path]:
    if value is None:
        return []
    items = [value] if isinstance(value, (str, os.PathLike)) else list(value)
    return [require_dir(root / v, source, f"the {what} folder {str(v)!r}") for v in items]


def folder(root: str | os.PathLike[str], *, normal_dir: Dirs = "good", abnormal_dir: Dirs = None,
           normal_test_dir: Dirs = None, mask_dir: Dirs = None, source: str = "folder",
           category: str | None = None) -> Iterator[Record]:
    """Yield Records from an anomalib "folder" dataset (module docstring).

    Args:
        root: dataset folder.
        normal_dir, abnormal_dir, normal_test_dir, mask_dir: folder name(s) under ``root``.
        source: ``Record.source`` value.
        category: ``Record.category`` (default: ``root``'s folder name).
    Returns:
        Records: normal train, then abnormal, then normal test; files sorted by name. Anomalies
        whose mask is not found (or when ``mask_dir`` is None) have ``mask_path=None``.
    Raises:
        FileNotFoundError: root or one of the named folders missing.
    """
    root_p = require_root(root, source)
    cat = category or root_p.name
    normal = _dirs(root_p, normal_dir, source, "normal_dir")
    abnormal = _dirs(root_p, abnormal_dir, source, "abnormal_dir")
    normal_test = _dirs(root_p, normal_test_dir, source, "normal_test_dir")
    masks: dict[str, Path] = {}
    for d in _dirs(root_p, mask_dir, source, "mask_dir"):
        for stem, p in _mask_index(d).items():
            masks.setdefault(stem, p)

    def gen() -> Iterator[Record]:
        for split, dirs, label in (("train", normal, 0), ("test", abnormal, 1),
                                   ("test", normal_test, 0)):
            for d in dirs:
                for f in image_files(d):
                    yield Record(source=source, category=cat, split=split, label=label,
                                 defect_type=d.name if label else "good", image_path=f,
                                 mask_path=find_mask(masks, f.stem, ("", "_mask")) if label
                                 else None)

    return gen()
