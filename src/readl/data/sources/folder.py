"""anomalib's "folder" format: user-named folders of normal / abnormal images plus a mask folder.

Documented by anomalib (``anomalib.data.Folder`` / ``make_folder_dataset``;
https://anomalib.readthedocs.io, "Custom Data" how-to)::

    <root>/<normal_dir>/*.png          normal images (train)
    <root>/<abnormal_dir>/*.png        anomalous images (test)
    <root>/<normal_test_dir>/*.png     optional normal test images
    <root>/<mask_dir>/*.png            masks for the abnormal images, named like them
                                       ("000.png" or "000_mask.png" for image "000.png")

Each ``*_dir`` may be one folder name or a list of them (relative to ``root``, or absolute).

Mask pairing (an image only ever gets a mask of its own abnormal folder):

* ``mask_dir`` a list as long as ``abnormal_dir``: paired by position, ``abnormal_dir[i]``'s
  masks are in ``mask_dir[i]`` (``["cut", "hole"]`` with ``["mask_cut", "mask_hole"]``).
* otherwise every mask folder is searched, first ``<mask_dir>/<abnormal folder name>/`` (masks
  mirroring the image tree: ``masks/cut/000.png`` for ``cut/000.png``), then ``<mask_dir>/``
  itself.
* in a folder the mask of ``000.png`` is ``000.<ext>`` or ``000_mask.<ext>``. Two different
  masks found for one image, or one mask file found for two images (e.g. ``cut/000.png`` and
  ``hole/000.png`` with a single flat mask folder), is a :class:`LayoutError` naming both files:
  the pairing is ambiguous and a silent choice would give an image another image's mask.

Splits: ``normal_dir`` -> ``"train"``, ``abnormal_dir`` and ``normal_test_dir`` -> ``"test"``
(anomalib can additionally move a fraction of the normal images to test at load time; that is a
split decision, left to curate). ``defect_type`` of an anomaly is its abnormal folder's name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from .base import LayoutError, Record, image_files, require_dir, require_root
from .mvtec import find_mask, mask_index

__all__ = ["folder"]

Dirs = str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None


def _dirs(root: Path, value: Dirs, source: str, what: str) -> list[Path]:
    if value is None:
        return []
    items = [value] if isinstance(value, (str, os.PathLike)) else list(value)
    return [require_dir(root / v, source, f"the {what} folder {str(v)!r}") for v in items]


def folder(
    root: str | os.PathLike[str],
    *,
    normal_dir: Dirs = "good",
    abnormal_dir: Dirs = None,
    normal_test_dir: Dirs = None,
    mask_dir: Dirs = None,
    source: str = "folder",
    category: str | None = None,
) -> Iterator[Record]:
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
        LayoutError: an ambiguous mask pairing (module docstring; the message names both files).
    """
    root_p = require_root(root, source)
    cat = category or root_p.name
    normal = _dirs(root_p, normal_dir, source, "normal_dir")
    abnormal = _dirs(root_p, abnormal_dir, source, "abnormal_dir")
    normal_test = _dirs(root_p, normal_test_dir, source, "normal_test_dir")
    masks = _dirs(root_p, mask_dir, source, "mask_dir")
    pair = _MaskPairing(abnormal, masks, source)

    def gen() -> Iterator[Record]:
        for split, dirs, label in (("train", normal, 0), ("test", abnormal, 1), ("test", normal_test, 0)):
            for d in dirs:
                for f in image_files(d):
                    yield Record(
                        source=source,
                        category=cat,
                        split=split,
                        label=label,
                        defect_type=d.name if label else "good",
                        image_path=f,
                        mask_path=pair(d, f) if label else None,
                    )

    return gen()


class _MaskPairing:
    """``pair(abnormal_folder, image) -> mask or None`` by the rules of the module docstring."""

    def __init__(self, abnormal: list[Path], masks: list[Path], source: str) -> None:
        self.source = source
        self.by_position = len(masks) == len(abnormal) and len(masks) > 0
        self.positional = dict(zip(abnormal, masks)) if self.by_position else {}
        self.masks = masks
        self.claimed: dict[Path, Path] = {}  # mask -> image that got it
        self._index: dict[Path, dict[str, Path]] = {}

    def _find(self, folder: Path, stem: str) -> Path | None:
        if folder not in self._index:
            self._index[folder] = mask_index(folder)
        return find_mask(self._index[folder], stem, ("", "_mask"))

    def __call__(self, abnormal_dir: Path, image: Path) -> Path | None:
        if self.by_position:
            folders = [self.positional[abnormal_dir] / abnormal_dir.name, self.positional[abnormal_dir]]
        else:
            folders = [f for m in self.masks for f in (m / abnormal_dir.name, m)]
        hits = list(dict.fromkeys(h for f in folders if (h := self._find(f, image.stem))))
        if len(hits) > 1:
            raise LayoutError(
                f"{self.source}: two masks for {image}: {hits[0]} and {hits[1]}; "
                f"keep one, or list mask_dir in the order of abnormal_dir so each "
                f"abnormal folder has its own mask folder"
            )
        if not hits:
            return None
        mask = hits[0]
        other = self.claimed.setdefault(mask, image)
        if other != image:
            raise LayoutError(
                f"{self.source}: {other} and {image} both pair with the mask "
                f"{mask}; give each abnormal folder its own mask folder "
                f"(mask_dir as a list in the order of abnormal_dir, or "
                f"<mask_dir>/<abnormal folder>/)"
            )
        return mask
