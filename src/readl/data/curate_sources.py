"""The curate stage's candidates: read each configured source, check its folders, and order its images for
sampling (proportional over categories, seeded per stratum). Used by :mod:`readl.data.curate`."""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .images import BadImageError
from .sources import LayoutError, Record, get_adapter, read_source
from .sources.base import MissingMaskError, expected_layout, report_bad_masks

if TYPE_CHECKING:
    from readl.config import CurateConfig, CurateSource

log = logging.getLogger(__name__)

SPLITS = ("train", "calib", "eval")
"""Curated splits, in the order of the output files (sampling order is eval, calib, train)."""


class SourceMissingError(FileNotFoundError):
    """A configured source folder does not exist (message names it and how to get the data)."""


@dataclass
class Candidate:
    record: Record
    image_rel: str  # raw image, relative to the raw root (POSIX)
    mask_rel: str | None
    in_source: str  # image path relative to the source root, without suffix (output naming)
    synthetic: tuple[str, int] | None = None  # (recipe, seed) of a synthetic anomaly of image_rel

    @property
    def key(self) -> str:
        """What ``taken`` holds: the raw image, or the raw base image + the variant."""
        return self.image_rel if self.synthetic is None else f"{self.image_rel}#{self.in_source}"


@dataclass
class Stratum:
    split: str
    entry: CurateSource
    label: int
    queue: list[Candidate]
    quota: int | None  # None = all
    pos: int = 0
    accepted: list[tuple[Candidate, str, str, str | None]] = field(default_factory=list)

    @property
    def requested(self) -> int:
        return len(self.queue) if self.quota is None else self.quota


def _posix_rel(path: Path, base: Path) -> str:
    rel = os.path.relpath(path, base)
    return Path(rel).as_posix()


def read_entry(entry: CurateSource, raw_root: Path, where: str, rejected: list[dict[str, Any]]) -> list[Record]:
    """All records of one source (adapter output, filtered by published split).

    Raises:
        LayoutError: the adapter's own LayoutError (prefixed with ``where``), or no image found
            (at all, or in the requested published splits): the message names the folder and
            the tree the adapter reads.
    """
    root = raw_root / entry.root
    records: list[Record] = []

    def bad_mask(image: Path, exc: BadImageError | MissingMaskError) -> None:
        # adapters that label from masks report and go on
        missing = isinstance(exc, MissingMaskError)
        rejected.append(
            {
                "source": entry.name,
                "image_path": _posix_rel(image, raw_root),
                "mask_path": None if missing else _posix_rel(exc.path, raw_root),
                "reason": f"missing_mask: {exc.reason}"
                if missing
                else f"bad_mask: {exc.reason} (its image's label is unknown; fix or delete it)",
            }
        )
        log.warning("%s: %s", where, exc)

    try:
        with report_bad_masks(bad_mask):
            records.extend(read_source(entry.layout, root, source=entry.name, **entry.options))
    except LayoutError as exc:
        raise LayoutError(f"{where} ({entry.layout} layout at {root}): {exc}") from None
    tree = expected_layout(get_adapter(entry.layout))
    derived_only = entry.layout == "synthetic" and entry.options.get("base")  # made from other entries' images
    if not records and not derived_only and not any(r["source"] == entry.name for r in rejected):
        raise LayoutError(
            f"{where}: no images found by the {entry.layout!r} adapter under "
            f"{root}; the folder does not follow that layout, which is:\n{tree}\n"
            f"Fix `root`/`layout` in params.yaml curate:, or re-extract the data."
        )
    if entry.published_splits is not None:
        found = sorted({r.split for r in records})
        keep = set(entry.published_splits)
        records = [r for r in records if r.split in keep]
        if not records and found:
            raise LayoutError(
                f"{where}: no images in the published split(s) "
                f"{list(entry.published_splits)} under {root}; the "
                f"{entry.layout!r} adapter found the splits {found}: fix "
                f"`published_splits` in params.yaml curate:"
            )
    return records


def stratum_rng(seed: int, entry: CurateSource, label: int) -> np.random.Generator:
    key = f"{entry.name}|{entry.layout}|{entry.root}|{label}".encode()
    digest = int.from_bytes(hashlib.sha256(key).digest()[:8], "big")
    return np.random.default_rng([seed, digest])


def proportional_order(cands: list[Candidate], rng: np.random.Generator) -> list[Candidate]:
    """Shuffle each category, then interleave so every prefix is proportional to category sizes
    (item of rank r in a category of n sorts at (r + 1/2) / n; ties by category name)."""
    by_cat: dict[str, list[Candidate]] = defaultdict(list)
    for c in cands:
        by_cat[c.record.category].append(c)
    keyed = []
    for cat in sorted(by_cat):
        items = sorted(by_cat[cat], key=lambda c: c.image_rel)
        n = len(items)
        for rank, idx in enumerate(rng.permutation(n)):
            keyed.append(((rank + 0.5) / n, cat, items[int(idx)]))
    keyed.sort(key=lambda t: (t[0], t[1]))
    return [c for _, _, c in keyed]


def make_candidate(rec: Record, raw_root: Path, source_root: Path) -> Candidate:
    image = Path(rec.image_path)
    rel_src = os.path.relpath(image, source_root)
    if rel_src.startswith(".."):  # a CSV pointing outside the source folder
        digest = hashlib.sha1(str(image).encode()).hexdigest()[:12]
        rel_src = f"_outside/{digest}_{image.name}"
    return Candidate(
        record=rec,
        image_rel=_posix_rel(image, raw_root),
        mask_rel=None if rec.mask_path is None else _posix_rel(Path(rec.mask_path), raw_root),
        in_source=Path(rel_src).with_suffix("").as_posix(),
    )


def check_sources(cfg: CurateConfig, raw_root: str | os.PathLike[str]) -> None:
    """Check every configured source before any work: known layout, accepted options, folder.

    Raises:
        ValueError: an unknown layout, or an option the layout's adapter does not take.
        SourceMissingError: one or more source folders are missing; the message lists each
            folder and the command that gets it (``readl fetch NAME``; the bundled sample comes
            back with ``dvc pull data.dvc``).
    """
    raw = Path(raw_root)
    missing = []
    for split in SPLITS:
        for i, entry in enumerate(getattr(cfg, split)):
            params = inspect.signature(get_adapter(entry.layout)).parameters
            bad = sorted(set(entry.options) - set(params) | ({"source"} & set(entry.options)))
            if bad:
                raise ValueError(
                    f"curate.{split}[{i}] {entry.name!r}: option(s) {bad} not "
                    f"accepted by the {entry.layout!r} adapter (it takes: "
                    f"{', '.join(p for p in params if p not in ('root', 'source'))})"
                )
            folder = raw / entry.root
            if not folder.is_dir():
                missing.append(
                    f"  curate.{split}[{i}] {entry.name!r} ({entry.layout} layout): "
                    f"{folder} does not exist -> `readl fetch {entry.name}` "
                    f"(prints where to get it when it needs a manual download)"
                )
    if missing:
        raise SourceMissingError(
            "source folder(s) missing:\n"
            + "\n".join(dict.fromkeys(missing))
            + "\nThe bundled sample is restored with `dvc pull data.dvc`; see README "
            "'Using real data' for the full benchmarks."
        )
