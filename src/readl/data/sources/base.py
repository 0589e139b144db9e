"""The record every source adapter yields, and helpers shared by the adapters.

An adapter reads one benchmark layout *as published* (no reorganisation on disk) and yields one
:class:`Record` per image. Adapters never decode pixels except where the layout leaves the label in
the mask (generic images+masks folders, KolektorSDD), and they never pick train/calib/eval
subsets: that is curate's job.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..images import IMAGE_EXTENSIONS

__all__ = [
    "DOWNLOAD_HINTS",
    "IMAGE_EXTENSIONS",
    "LayoutError",
    "MASK_KINDS",
    "MissingMaskError",
    "Record",
    "expected_layout",
    "image_files",
    "records_to_frame",
    "require_dir",
    "require_root",
    "subdirs",
]


MASK_KINDS = ("none", "file", "dir_union", "coco", "labelme")
"""How ``Record.mask_path`` is read (all handled by ``readl.data.masks.load_mask``):
``none`` no mask; ``file`` one mask image; ``dir_union`` a folder of mask images to OR (MVTec LOCO);
``coco`` a COCO JSON plus ``mask_ref`` = image id (VISION); ``labelme`` a labelme JSON (BSData)."""

DOWNLOAD_HINTS: dict[str, str] = {
    "mvtec_ad": "https://www.mvtec.com/company/research/datasets/mvtec-ad",
    "mvtec_loco": "https://www.mvtec.com/company/research/datasets/mvtec-loco",
    "mvtec_3d": "https://www.mvtec.com/company/research/datasets/mvtec-3d-ad",
    "mvtec_ad2": "https://www.mvtec.com/company/research/datasets/mvtec-ad-2",
    "visa": "https://github.com/amazon-science/spot-diff (VisA_20220922.tar)",
    "real_iad": "https://realiad4ad.github.io/Real-IAD/ (access on request; "
    "https://huggingface.co/datasets/Real-IAD/Real-IAD)",
    "goodsad": "https://github.com/jianzhang96/GoodsAD",
    "vision": "https://huggingface.co/datasets/VISION-Workshop/VISION-Datasets (gated)",
    "pr_real": "the PR-REAL release cited by the ReAL paper (ref. [37]); no public URL is known to readl",
    "bsdata": "https://github.com/2Obe/BSData",
    "sdd": "https://www.vicos.si/resources/kolektorsdd/",
    "ksdd2": "https://www.vicos.si/resources/kolektorsdd2/",
    "mpdd": "https://github.com/stepanje/MPDD",
    "btad": "https://github.com/pankajmishra000/VT-ADL (BTAD download link in its README)",
    "wfdd": "https://github.com/cqylunlun/GLASS (WFDD download link in its README)",
    "dtd": "DTD-Synthetic (Aota et al., WACV 2023), linked from anomalib's docs",
}


class LayoutError(ValueError):
    """The files on disk do not follow the layout the adapter reads (message says where/how)."""


class MissingMaskError(LayoutError):
    """An image whose label lives in its mask has no mask (its label is unknown).

    Attributes:
        path: the image file. reason: ``"has no mask in ..."``: what was looked for, and the fix.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path} {reason}")


@dataclass(frozen=True)
class Record:
    """One image of a benchmark, as its layout publishes it.

    Attributes:
        source: benchmark name, e.g. ``"mvtec_ad"``, ``"visa"`` (lower-case identifier).
        category: object/texture class as published (folder or CSV/JSON value), e.g. ``"grid"``.
        split: split as published (``"train"``, ``"test"``, ``"validation"``, ``"val"``, ...;
            ``"all"`` for layouts that publish no split: BSData, KolektorSDD).
        label: 0 normal, 1 anomalous.
        defect_type: ``"good"`` for every normal image; the published defect name otherwise, or
            ``"unknown"`` when the layout has none.
        image_path: absolute or root-relative path of the image file.
        mask_path: mask file, mask folder, or annotation JSON (see ``mask_kind``); None if none.
        mask_kind: one of :data:`MASK_KINDS`; derived from ``mask_path`` when not given
            (``"none"`` without a mask, else ``"file"``).
        mask_ref: the COCO image id when ``mask_kind == "coco"``; None otherwise.
    """

    source: str
    category: str
    split: str
    label: int
    defect_type: str
    image_path: Path
    mask_path: Path | None = None
    mask_kind: str | None = field(default=None)
    mask_ref: str | None = None

    def __post_init__(self) -> None:
        for name in ("source", "category", "split", "defect_type"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"Record.{name} must be a non-empty str, got {value!r}")
        if self.label not in (0, 1) or isinstance(self.label, bool):
            raise ValueError(f"Record.label must be 0 or 1, got {self.label!r} ({self.image_path})")
        if (self.label == 0) != (self.defect_type == "good"):
            raise ValueError(
                f"Record.defect_type must be 'good' exactly when label is 0, got "
                f"label={self.label} defect_type={self.defect_type!r} "
                f"({self.image_path})"
            )
        object.__setattr__(self, "image_path", Path(self.image_path))
        if self.mask_path is not None:
            object.__setattr__(self, "mask_path", Path(self.mask_path))
        kind = self.mask_kind
        if kind is None:
            kind = "none" if self.mask_path is None else "file"
            object.__setattr__(self, "mask_kind", kind)
        if kind not in MASK_KINDS:
            raise ValueError(f"Record.mask_kind must be one of {MASK_KINDS}, got {kind!r}")
        if (kind == "none") != (self.mask_path is None):
            raise ValueError(f"Record.mask_kind={kind!r} inconsistent with mask_path={self.mask_path!r}")
        if (kind == "coco") != (self.mask_ref is not None):
            raise ValueError("Record.mask_ref is the COCO image id: set it exactly when mask_kind == 'coco'")

    def to_row(self) -> dict[str, object]:
        """Plain dict for a DataFrame row: paths as ``str`` (``mask_path`` None when absent)."""
        row = asdict(self)
        row["image_path"] = str(self.image_path)
        row["mask_path"] = None if self.mask_path is None else str(self.mask_path)
        return row


def records_to_frame(records: Iterable[Record]):
    """Records -> ``pandas.DataFrame`` with the Record fields as columns (paths as str).

    The frame is the adapter part of a manifest; curate adds ``phash``, ``width``, ``height``.
    """
    import pandas as pd

    rows = [r.to_row() for r in records]
    columns = list(Record.__dataclass_fields__)
    frame = pd.DataFrame(rows, columns=columns)
    frame["label"] = frame["label"].astype("int64")
    return frame


def require_root(root: str | os.PathLike[str], source: str) -> Path:
    """Return ``root`` as a Path, or raise FileNotFoundError saying how to get the data.

    Raises:
        FileNotFoundError: ``root`` is missing or not a folder. The message names the path, the
            ``readl fetch SOURCE`` command and the benchmark's download page.
    """
    p = Path(root)
    if not p.is_dir():
        hint = DOWNLOAD_HINTS.get(source, "the benchmark's download page")
        what = "is a file, not a folder" if p.exists() else "does not exist"
        raise FileNotFoundError(
            f"{source} data not found: {p} {what}. Get it with `readl fetch {source}`, or "
            f"download it manually from {hint} and extract it there (layout as published)."
        )
    return p


def require_dir(path: Path, source: str, what: str) -> Path:
    """Like :func:`require_root` for a sub-folder the layout needs (``what`` describes it)."""
    if not path.is_dir():
        hint = DOWNLOAD_HINTS.get(source, "the benchmark's download page")
        raise FileNotFoundError(
            f"{source}: expected {what} at {path}, which does not exist; the download is "
            f"incomplete or the root is wrong. Re-fetch with `readl fetch {source}` or from {hint}."
        )
    return path


def image_files(folder: Path, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Sorted image files directly in ``folder`` (suffix match is case-insensitive; dotfiles skipped)."""
    exts = {e.lower() for e in extensions}
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts and not p.name.startswith(".")
    )


def subdirs(folder: Path) -> list[Path]:
    """Sorted sub-folders of ``folder`` (dot-folders skipped: caches, not splits or defect types)."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


_ON_BAD_MASK: ContextVar[Callable[[Path, Exception], None] | None] = ContextVar("readl_on_bad_mask", default=None)


@contextmanager
def report_bad_masks(callback: Callable[[Path, Exception], None]):
    """Inside this block, adapters that read labels from masks hand an undecodable mask's
    ``BadImageError``, or a :class:`MissingMaskError` for an image without a mask, to
    ``callback(image_path, error)`` and go on with the next image (outside it, they raise).

    ``readl curate`` uses it to list such files in ``rejected.csv`` without losing the rest of the source.
    """
    token = _ON_BAD_MASK.set(callback)
    try:
        yield
    finally:
        _ON_BAD_MASK.reset(token)


def report_or_raise(image: Path, error: Exception) -> None:
    """Hand ``error`` (a ``BadImageError`` or :class:`MissingMaskError` about ``image``'s mask) to
    the :func:`report_bad_masks` callback, or raise it outside such a block."""
    handler = _ON_BAD_MASK.get()
    if handler is None:
        raise error
    handler(image, error)


def expected_layout(adapter: Callable[..., object]) -> str:
    """The folder tree an adapter reads: the first ``::`` literal block of its module's docstring
    (every adapter module draws its layout there), lines stripped; "" when there is none."""
    import sys

    doc = getattr(sys.modules.get(getattr(adapter, "__module__", "")), "__doc__", None) or ""
    head, sep, rest = doc.partition("::\n")
    if not sep:
        return ""
    lines: list[str] = []
    for line in rest.splitlines():
        if line.strip():
            if not line.startswith((" ", "\t")):
                break
            lines.append(line.strip())
        elif lines:
            break
    return "\n".join(lines)


def labelled_by_mask(items: Iterable[tuple[Path, Path, str, str]], source: str) -> Iterator[Record]:
    """Records whose label is whether the mask is non-empty (anomalib's ``is_mask_anomalous``).

    Args:
        items: ``(image, mask, category, split)`` tuples.
        source: ``Record.source``.

    Yields:
        One Record per item; a mask that cannot be decoded raises ``BadImageError`` or, inside
        :func:`report_bad_masks`, is reported and skipped.
    """
    from ..images import BadImageError
    from ..masks import mask_is_empty

    for img, mask, category, split in items:
        try:
            anomalous = not mask_is_empty(mask)
        except BadImageError as exc:
            report_or_raise(img, exc)
            continue
        yield Record(
            source=source,
            category=category,
            split=split,
            label=int(anomalous),
            defect_type="unknown" if anomalous else "good",
            image_path=img,
            mask_path=mask,
        )


def read_json(path: str | os.PathLike[str], fix: str):
    """Parse a layout's JSON file.

    Args:
        path: the file. fix: what to do when it does not parse (e.g. "re-download BSData").

    Raises:
        LayoutError: not valid JSON / not UTF-8 (message names the file and ``fix``).
    """
    import json

    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LayoutError(f"{path}: not valid JSON ({exc}); {fix}") from None
