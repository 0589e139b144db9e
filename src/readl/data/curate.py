"""The ``curate`` stage: raw benchmark folders -> train / calib / eval manifests + 420x420 images.

Paper, Sec. 5.1: the model is trained on ~4K industrial images with image-level labels only, drawn
from VisA, GoodsAD, VISION, PR-REAL, Real-IAD and BSData, and evaluated zero-shot (no overlap with
the target domains) on MVTec-AD, WFDD, SDD and DTD-Synthetic, every image resized to 420x420. Which
sources feed which split, and how many images per source and label, is ``params.yaml`` ``curate:``
(:class:`readl.config.CurateConfig`; the paper's recipe is written out there as a commented block).

What the stage does, in order:

1. Read every configured source with its adapter (:mod:`readl.data.sources`), as published. A source
   whose folder is missing is a :class:`SourceMissingError` naming the folder and ``readl fetch``;
   it is raised before any image is touched. A source in which the adapter finds no image (a
   wrong ``root`` or ``layout``), or none in its ``published_splits``, is a ``LayoutError`` naming
   the folder and the tree the adapter reads.
2. Sample, seeded and stratified: one stratum per (source, label); within it the categories are
   interleaved in proportion to their sizes (each category shuffled by a ``numpy`` Generator seeded
   from ``curate.seed`` and the stratum's name), so any prefix of a stratum is a proportional
   stratified sample. The same source listed in two splits (calib and train: the calibration split
   is a held-out part of the training sources) draws disjoint images from the same order: eval
   first, then calib, then train. Candidates are taken in that order until the requested count of
   *usable* images is reached, so a rejected or leaked image is replaced by the next one.
3. Decode every candidate with :mod:`readl.data.images` (``load_pair`` / ``decode_resize_hash``):
   RGB, EXIF-upright, bicubic to ``image_size``; masks binarised and nearest-neighbour resized,
   written as PNG {0, 255}. Eval rows always get a mask file (all zero for normal images); train and
   calib rows get one when the source has one. A file that cannot be used (zero-byte, truncated,
   not an image, a side under ``readl.data.images.MIN_SIDE`` = 28 px, mask missing / unreadable / of another size, anomalous image without a mask in
   eval, an image of a mask-labelled layout without a mask: ``missing_mask``) goes to ``rejected.csv`` with the reason; the stage never stops for it.
   Synthetic sources (``layout: synthetic``, :mod:`readl.data.sources.synthetic`) are made
   after the images of their split: CutPaste / scar / DRAEM anomalies of the curated normal images
   of their base entries (or of their own root), each a seeded variant; their masks are written
   in eval only (train and calib rows have none).
4. Leakage guard (:mod:`readl.data.leakage`): the 64-bit DCT pHash of every curated image
   (computed on the resized pixels) finds the eval images within ``leakage_max_distance`` bits of a
   train/calib candidate; the candidate is a copy, dropped and listed in ``leakage.csv`` with both
   measures (``distance`` in bits, ``ssim``), when the SSIM of the two 64x64 grey thumbnails is
   >= ``leakage_min_ssim`` (the zero-shot protocol of Sec. 5.1).
5. Write, atomically (everything goes to a temporary folder beside ``out_dir`` that then replaces
   it): ``{train,calib,eval}.parquet`` (validated with :func:`readl.data.schema.validate_manifest`,
   eval with masks required), ``images/<split>/<source>/<path in source>.png``,
   ``masks/<split>/...``, ``rejected.csv``, ``leakage.csv`` and ``summary.json`` (the DVC metrics).

Manifest columns: the schema's (``readl.data.schema.MANIFEST_COLUMNS``) plus ``raw_image_path`` /
``raw_mask_path`` and ``reference`` (the reasoning reference of the image, or null:
:mod:`readl.data.references`; a template sentence by default, or the source's own CSV). ``image_path`` / ``mask_path`` are the CURATED 420x420 PNGs, as POSIX paths
relative to the repository root (the working directory of the stage: ``out_dir`` joined as given,
e.g. ``data/curated/images/train/visa/candle/Data/Images/Normal/0000.png``; absolute when
``out_dir`` is) -- what ``readl train`` / ``readl evaluate`` open. ``raw_*`` are the published
files, relative to the raw root (``data/raw``), for provenance; ``rejected.csv`` and
``leakage.csv`` name raw files the same way. ``width`` / ``height`` are the curated size. Rows are
sorted by source, category, label and raw path; the same raw files, params and ``out_dir`` give
byte-identical manifests and PNGs.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from readl.atomic import atomic_dir

from .images import MIN_SIDE, BadImageError, decode_resize_hash, load_pair, phash
from .leakage import LeakageGuard, thumbnail
from .references import References
from .sources import LayoutError, Record, get_adapter, read_source
from .sources.base import MissingMaskError, expected_layout, report_bad_masks
from .sources.synthetic import render as render_synthetic
from .sources.synthetic import spec as synthetic_spec

if TYPE_CHECKING:  # kept out of the import: decoding workers import this module (spawn)
    import datasets
    import pandas as pd

    from readl.config import CurateConfig, CurateSource

__all__ = ["LEAKAGE_COLUMNS", "MANIFEST_EXTRA_COLUMNS", "REJECTED_COLUMNS", "SPLITS",
           "CurateResult", "SourceMissingError", "curate", "load_split", "read_manifest"]

log = logging.getLogger(__name__)

SPLITS = ("train", "calib", "eval")
"""Curated splits, in the order of the output files (sampling order is eval, calib, train)."""
REJECTED_COLUMNS = ("source", "image_path", "mask_path", "reason")
LEAKAGE_COLUMNS = ("split", "source", "image_path", "phash", "eval_source", "eval_image_path",
                   "eval_phash", "distance", "ssim")
MANIFEST_EXTRA_COLUMNS = ("raw_image_path", "raw_mask_path", "reference")
POOL_MIN_TASKS = 200
"""Batches smaller than this are decoded in-process: starting a spawn pool of 2 and importing the
decoder in it costs ~0.9 s here, the time of ~25-35 images; below a few hundred images the pool
gains little."""
PNG_COMPRESS_LEVEL = 1
"""zlib level of the curated PNGs: 11 ms and ~225 KB per 420x420 RGB image here, vs 69 ms and
~195 KB at PIL's default 6 (lossless either way)."""

Progress = Callable[[int, int], None]
"""``progress(advance, total)``: ``advance`` images done since the last call, ``total`` so far
(it grows when rejected or leaked images are replaced)."""


class SourceMissingError(FileNotFoundError):
    """A configured source folder does not exist (message names it and how to get the data)."""


@dataclass(frozen=True)
class CurateResult:
    """What :func:`curate` wrote.

    Attributes:
        out_dir: the curated folder.
        counts: images per split, e.g. ``{"train": 54, "calib": 17, "eval": 14}``.
        rejected: rows of ``rejected.csv``.
        leaked: rows of ``leakage.csv``.
        seconds: wall time of the run.
        summary: the content of ``summary.json``.
    """

    out_dir: Path
    counts: dict[str, int]
    rejected: int
    leaked: int
    seconds: float
    summary: dict[str, Any]

    def one_line(self) -> str:
        """``curate: train 54, calib 17, eval 14 images; 0 rejected, 0 leaked; 3.1 s -> data/curated``"""
        parts = ", ".join(f"{s} {self.counts.get(s, 0)}" for s in SPLITS)
        return (f"curate: {parts} images; {self.rejected} rejected, {self.leaked} leaked; "
                f"{self.seconds:.1f} s -> {self.out_dir}")


# --------------------------------------------------------------------------------------------
# candidates and sampling


@dataclass
class _Candidate:
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
class _Stratum:
    split: str
    entry: CurateSource
    label: int
    queue: list[_Candidate]
    quota: int | None  # None = all
    pos: int = 0
    accepted: list[tuple[_Candidate, str, str, str | None]] = field(default_factory=list)

    @property
    def requested(self) -> int:
        return len(self.queue) if self.quota is None else self.quota


def _posix_rel(path: Path, base: Path) -> str:
    rel = os.path.relpath(path, base)
    return Path(rel).as_posix()


def _read_entry(entry: CurateSource, raw_root: Path, where: str,
                rejected: list[dict[str, Any]]) -> list[Record]:
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
        rejected.append({"source": entry.name, "image_path": _posix_rel(image, raw_root),
                         "mask_path": None if missing else _posix_rel(exc.path, raw_root),
                         "reason": f"missing_mask: {exc.reason}" if missing else
                         f"bad_mask: {exc.reason} (its image's label is unknown; fix or delete it)"})
        log.warning("%s: %s", where, exc)

    try:
        with report_bad_masks(bad_mask):
            records.extend(read_source(entry.layout, root, source=entry.name, **entry.options))
    except LayoutError as exc:
        raise LayoutError(f"{where} ({entry.layout} layout at {root}): {exc}") from None
    tree = expected_layout(get_adapter(entry.layout))
    derived_only = entry.layout == "synthetic" and entry.options.get("base")  # made from other entries' images
    if not records and not derived_only and not any(r["source"] == entry.name for r in rejected):
        raise LayoutError(f"{where}: no images found by the {entry.layout!r} adapter under "
                          f"{root}; the folder does not follow that layout, which is:\n{tree}\n"
                          f"Fix `root`/`layout` in params.yaml curate:, or re-extract the data.")
    if entry.published_splits is not None:
        found = sorted({r.split for r in records})
        keep = set(entry.published_splits)
        records = [r for r in records if r.split in keep]
        if not records and found:
            raise LayoutError(f"{where}: no images in the published split(s) "
                              f"{list(entry.published_splits)} under {root}; the "
                              f"{entry.layout!r} adapter found the splits {found}: fix "
                              f"`published_splits` in params.yaml curate:")
    return records


def _stratum_rng(seed: int, entry: CurateSource, label: int) -> np.random.Generator:
    key = f"{entry.name}|{entry.layout}|{entry.root}|{label}".encode()
    digest = int.from_bytes(hashlib.sha256(key).digest()[:8], "big")
    return np.random.default_rng([seed, digest])


def _proportional_order(cands: list[_Candidate], rng: np.random.Generator) -> list[_Candidate]:
    """Shuffle each category, then interleave so every prefix is proportional to category sizes
    (item of rank r in a category of n sorts at (r + 1/2) / n; ties by category name)."""
    by_cat: dict[str, list[_Candidate]] = defaultdict(list)
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


def _candidate(rec: Record, raw_root: Path, source_root: Path) -> _Candidate:
    image = Path(rec.image_path)
    rel_src = os.path.relpath(image, source_root)
    if rel_src.startswith(".."):  # a CSV pointing outside the source folder
        digest = hashlib.sha1(str(image).encode()).hexdigest()[:12]
        rel_src = f"_outside/{digest}_{image.name}"
    return _Candidate(
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
                raise ValueError(f"curate.{split}[{i}] {entry.name!r}: option(s) {bad} not "
                                 f"accepted by the {entry.layout!r} adapter (it takes: "
                                 f"{', '.join(p for p in params if p not in ('root', 'source'))})")
            folder = raw / entry.root
            if not folder.is_dir():
                missing.append(f"  curate.{split}[{i}] {entry.name!r} ({entry.layout} layout): "
                               f"{folder} does not exist -> `readl fetch {entry.name}` "
                               f"(prints where to get it when it needs a manual download)")
    if missing:
        raise SourceMissingError(
            "source folder(s) missing:\n" + "\n".join(dict.fromkeys(missing))
            + f"\nThe bundled sample is restored with `dvc pull data.dvc`; see README "
              f"'Using real data' for the full benchmarks.")


# --------------------------------------------------------------------------------------------
# decoding (runs in worker processes)


@dataclass(frozen=True)
class _Task:
    image: str
    mask: str | None
    mask_ref: str | None
    out_image: str
    out_mask: str | None  # None: write no mask
    size: tuple[int, int]
    synthetic: tuple[str, int] | None = None  # (recipe, seed): `image` is a curated base image


def _save_png(array_or_image: Any, path: str, mode: str | None = None) -> None:
    from PIL import Image

    img = array_or_image if isinstance(array_or_image, Image.Image) else \
        Image.fromarray(array_or_image, mode=mode)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


_Result = tuple[str | None, np.ndarray | None, str | None]
"""``(phash, thumbnail, None)`` for a written image, ``(None, None, reason)`` for a bad input."""


def _process(task: _Task) -> _Result:
    """Decode, resize, hash and write one image (+ mask). Returns ``(phash, thumbnail, None)`` or
    ``(None, None, reason)`` for a bad input (nothing written then)."""
    try:
        if task.synthetic is not None:
            img, mask = render_synthetic(task.image, task.size, *task.synthetic)
            digest = phash(img)
        elif task.mask is not None:
            img, mask = load_pair(task.image, task.mask, task.size, coco_image_id=task.mask_ref,
                                  min_side=MIN_SIDE)
            digest = phash(img)
        else:
            img, digest = decode_resize_hash(task.image, task.size, min_side=MIN_SIDE)
            mask = np.zeros((task.size[1], task.size[0]), dtype=bool)
    except BadImageError as exc:
        bad = Path(exc.path)
        is_mask = task.mask is not None and (bad == Path(task.mask) or
                                             bad.is_relative_to(task.mask))
        return None, None, f"{'bad_mask' if is_mask else 'bad_image'}: {exc.reason}"
    _save_png(img, task.out_image)
    if task.out_mask is not None:
        _save_png(mask.astype(np.uint8) * 255, task.out_mask, mode="L")
    return digest, thumbnail(img), None


class _Runner:
    """Map :func:`_process` over tasks inline or on a process pool (results in task order)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def map(self, tasks: Sequence[_Task]) -> Iterable[_Result]:
        if self.workers <= 1 or (self._pool is None and len(tasks) < POOL_MIN_TASKS):
            return map(_process, tasks)
        main_file = getattr(sys.modules["__main__"], "__file__", None)
        if main_file is not None and not os.path.exists(main_file):  # `python -` / `-c`:
            return map(_process, tasks)  # spawn cannot re-import such a __main__
        if self._pool is None:  # spawn: safe whatever the parent imported (torch threads, ...)
            self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"))
        chunk = max(1, min(16, len(tasks) // (4 * self.workers)))
        return self._pool.map(_process, tasks, chunksize=chunk)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


# --------------------------------------------------------------------------------------------
# the stage


class _Curation:
    def __init__(self, cfg: CurateConfig, raw_root: Path, staging: Path,
                 progress: Progress | None) -> None:
        self.cfg = cfg
        self.raw_root = raw_root
        self.staging = staging
        self.progress = progress
        self.size = (cfg.image_size, cfg.image_size)
        self.rejected: list[dict[str, Any]] = []
        self.leaked: list[dict[str, Any]] = []
        self.taken: set[str] = set()
        self.used_names: set[str] = set()
        self.total = 0
        self.guard: LeakageGuard | None = None
        self.eval_thumbs: dict[tuple[str, str], np.ndarray] = {}  # (eval raw image path, pHash) -> thumbnail

    # ---- planning
    def strata(self) -> dict[str, list[_Stratum]]:
        cache: dict[str, list[Record]] = {}
        out: dict[str, list[_Stratum]] = {}
        for split in ("eval", "calib", "train"):
            out[split] = []
            for i, entry in enumerate(getattr(self.cfg, split)):
                where = f"curate.{split}[{i}] {entry.name!r}"
                if entry.layout == "synthetic":
                    self._check_synthetic(split, where, entry)
                key = json.dumps([entry.name, entry.layout, entry.root, entry.options,
                                  entry.published_splits], sort_keys=True)
                if key not in cache:
                    cache[key] = _read_entry(entry, self.raw_root, where, self.rejected)
                source_root = self.raw_root / entry.root
                cands = [_candidate(r, self.raw_root, source_root) for r in cache[key]]
                for label, quota in ((0, entry.normal), (1, entry.anomalous)):
                    pool = [c for c in cands if c.record.label == label]
                    queue = _proportional_order(pool, _stratum_rng(self.cfg.seed, entry, label))
                    out[split].append(_Stratum(split, entry, label, queue, quota))
        return out

    # ---- synthetic anomalies (readl.data.sources.synthetic)
    def _check_synthetic(self, split: str, where: str, entry: CurateSource) -> None:
        others = {e.name: e.layout for e in getattr(self.cfg, split)}
        for name in synthetic_spec(where, **entry.options).base:
            if others.get(name, "synthetic") == "synthetic":
                raise ValueError(f"{where}: base {name!r} is not a non-synthetic entry of "
                                 f"curate.{split} (entries: {', '.join(others)})")

    def derive(self, strata: list[_Stratum]) -> list[_Stratum]:
        """Fill the queues of the synthetic anomaly strata from the normal images their base
        strata (same split) accepted; returns those strata, to run next."""
        derived = []
        for s in strata:
            if s.entry.layout != "synthetic" or s.label != 1:
                continue
            sp = synthetic_spec(s.entry.name, **s.entry.options)
            names = set(sp.base) or {s.entry.name}
            queue, index = [], -1
            for b in strata:
                if b.split != s.split or b.label != 0 or b.entry.name not in names:
                    continue
                for cand, _, image_out, _ in b.accepted:
                    index += 1
                    for recipe, k, seed in sp.variants(s.entry.name, cand.image_rel, index):
                        rec = Record(source=s.entry.name, category=cand.record.category,
                                     split=cand.record.split, label=1, defect_type=recipe,
                                     image_path=self.staging / image_out)
                        queue.append(_Candidate(rec, cand.image_rel, None,
                                                f"{cand.in_source}_{recipe}{k}", (recipe, seed, sp.texture)))
            s.queue, s.pos = queue, 0
            derived.append(s)
        return derived

    def drop_unlisted_bases(self, strata: list[_Stratum]) -> None:
        """``normals: false``: the base normal images of a synthetic source leave the manifest."""
        for s in strata:
            if s.entry.layout == "synthetic" and s.label == 0 and \
                    not synthetic_spec(s.entry.name, **s.entry.options).normals:
                for _, _, image_out, mask_out in s.accepted:
                    for p in (image_out, mask_out):
                        if p is not None:
                            (self.staging / p).unlink(missing_ok=True)
                s.accepted, s.quota = [], 0

    # ---- output naming
    def _out_name(self, split: str, cand: _Candidate) -> str:
        base = f"{split}/{cand.record.source}/{cand.in_source}"
        name = base
        if name in self.used_names:  # e.g. 00.jpg and 00.png in one folder
            name = f"{base}_{Path(cand.record.image_path).suffix.lstrip('.').lower()}"
        n = 1
        while name in self.used_names:
            n += 1
            name = f"{base}_{n}"
        self.used_names.add(name)
        return name

    # ---- running
    def run_phase(self, strata: list[_Stratum], runner: _Runner, guard: bool) -> None:
        while True:
            batch: list[tuple[_Stratum, _Candidate, _Task, str, str | None]] = []
            for s in strata:
                need = s.requested - len(s.accepted)
                while need > 0 and s.pos < len(s.queue):
                    cand = s.queue[s.pos]
                    s.pos += 1
                    if cand.key in self.taken:
                        continue
                    self.taken.add(cand.key)
                    is_eval = s.split == "eval"
                    if is_eval and cand.record.label == 1 and cand.record.mask_path is None \
                            and cand.synthetic is None:
                        self._reject(cand, "missing_mask: anomalous image without a mask; the "
                                           "eval split needs a pixel mask for every anomalous "
                                           "image (add the mask or drop the image)")
                        continue
                    name = self._out_name(s.split, cand)
                    image_out = f"images/{name}.png"
                    has_mask = cand.record.mask_path is not None
                    mask_out = f"masks/{name}.png" if (has_mask or is_eval) else None
                    rec = cand.record
                    batch.append((s, cand, _Task(
                        image=str(rec.image_path),
                        mask=None if rec.mask_path is None else str(rec.mask_path),
                        mask_ref=rec.mask_ref,
                        out_image=str(self.staging / image_out),
                        out_mask=None if mask_out is None else str(self.staging / mask_out),
                        size=self.size, synthetic=cand.synthetic), image_out, mask_out))
                    need -= 1
            if not batch:
                return
            self.total += len(batch)
            for (s, cand, task, image_out, mask_out), (digest, thumb, error) in zip(
                    batch, runner.map([b[2] for b in batch])):
                if error is not None:
                    self._reject(cand, error)
                elif guard and self._leaks(s, cand, digest, thumb):
                    for p in (task.out_image, task.out_mask):
                        if p is not None:
                            Path(p).unlink(missing_ok=True)
                else:
                    s.accepted.append((cand, digest, image_out, mask_out))
                    if not guard:
                        self.eval_thumbs[(cand.image_rel, digest)] = thumb  # synthetic variants share image_rel
                if self.progress is not None:
                    self.progress(1, self.total)

    def _reject(self, cand: _Candidate, reason: str) -> None:
        self.rejected.append({"source": cand.record.source, "image_path": cand.image_rel,
                              "mask_path": cand.mask_rel, "reason": reason})

    def set_eval(self, strata: list[_Stratum]) -> None:
        rows = [(c.record.source, c.image_rel, h) for s in strata for c, h, _, _ in s.accepted]
        self.guard = LeakageGuard(rows, [self.eval_thumbs[(r[1], r[2])] for r in rows],
                                  self.cfg.leakage_max_distance, self.cfg.leakage_min_ssim)

    def _leaks(self, s: _Stratum, cand: _Candidate, digest: str, thumb: np.ndarray) -> bool:
        hit = None if self.guard is None else self.guard.match(digest, thumb)
        if hit is None:
            return False
        self.leaked.append({"split": s.split, "source": cand.record.source,
                            "image_path": cand.image_rel, "phash": digest, **hit})
        return True


def _manifest(strata: list[_Stratum], size: int, prefix: str, references: References) -> pd.DataFrame:
    import pandas as pd

    from .schema import MANIFEST_COLUMNS

    rows = []
    for s in strata:
        for cand, digest, image_out, mask_out in s.accepted:
            r = cand.record
            rows.append({"source": r.source, "category": r.category, "split": r.split,
                         "label": r.label, "defect_type": r.defect_type,
                         "image_path": f"{prefix}/{image_out}",
                         "mask_path": None if mask_out is None else f"{prefix}/{mask_out}",
                         "phash": digest, "width": size, "height": size,
                         "raw_image_path": cand.image_rel, "raw_mask_path": cand.mask_rel,
                         "reference": references(s.entry, r)})
    df = pd.DataFrame(rows, columns=[*MANIFEST_COLUMNS, *MANIFEST_EXTRA_COLUMNS])
    numeric = ("label", "width", "height")
    df = df.astype({c: "int64" if c in numeric else "str" for c in df.columns if c != "reference"})
    df["reference"] = df["reference"].astype(object).where(df["reference"].notna(), None)  # str or null
    return df.sort_values(["source", "category", "label", "raw_image_path"], kind="stable",
                          ignore_index=True)


def _summary(cfg: CurateConfig, strata: dict[str, list[_Stratum]], rejected: list[dict],
             leaked: list[dict]) -> dict[str, Any]:
    splits: dict[str, Any] = {}
    shortfall = 0
    for split in SPLITS:
        sources: dict[str, Any] = {}
        n = Counter()
        for s in strata[split]:
            lab = "anomalous" if s.label else "normal"
            src = sources.setdefault(s.entry.name, {"normal": 0, "anomalous": 0,
                                                    "requested": {}, "categories": {}})
            src[lab] += len(s.accepted)
            if s.quota is not None:
                src["requested"][lab] = s.quota
            short = 0 if s.quota is None else max(0, s.quota - len(s.accepted))
            if short:
                src.setdefault("shortfall", {})[lab] = short
                shortfall += short
            for cand, *_ in s.accepted:
                cat = src["categories"].setdefault(cand.record.category,
                                                   {"normal": 0, "anomalous": 0})
                cat[lab] += 1
            n[lab] += len(s.accepted)
        splits[split] = {"images": n["normal"] + n["anomalous"], "normal": n["normal"],
                         "anomalous": n["anomalous"], "sources": sources}
    by_source = Counter(r["source"] for r in rejected)
    return {
        "image_size": cfg.image_size, "seed": cfg.seed,
        "leakage_max_distance": cfg.leakage_max_distance,
        "leakage_min_ssim": cfg.leakage_min_ssim,
        "splits": splits,
        "rejected": {"total": len(rejected), "by_source": dict(sorted(by_source.items()))},
        "leaked": {"total": len(leaked),
                   "by_source": dict(sorted(Counter(r["source"] for r in leaked).items()))},
        "shortfall": shortfall,
    }


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    df.to_parquet(path, index=False, engine="pyarrow", compression="zstd")


def _write_csv(rows: list[dict[str, Any]], columns: Sequence[str], path: Path) -> None:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(columns))
    frame = frame.sort_values(list(columns[:3]), kind="stable", na_position="first")
    frame.to_csv(path, index=False, lineterminator="\n")


def curate(cfg: CurateConfig, raw_root: str | os.PathLike[str] = "data/raw",
           out_dir: str | os.PathLike[str] = "data/curated", *,
           progress: Progress | None = None) -> CurateResult:
    """Build the curated train / calib / eval sets (module docstring) and replace ``out_dir``.

    Args:
        cfg: the ``curate:`` params (:class:`readl.config.CurateConfig`).
        raw_root: folder holding the sources' ``root`` folders (``data/raw``).
        out_dir: curated folder to (re)write (``data/curated``).
        progress: optional callback ``progress(advance, total)`` per decoded image.
    Returns:
        :class:`CurateResult` (counts per split, rejected, leaked, seconds, summary).
    Raises:
        SourceMissingError: a configured source folder does not exist (nothing is written).
        ReferenceFileError (a ValueError): a references CSV is missing, malformed, or names none of its
            source's images (the message names the file; nothing is written).
        LayoutError: a source's files do not follow its layout (the message names the source).
        ValueError: unknown layout or adapter option; a manifest that fails the schema (a bug).
        On any error ``out_dir`` keeps its previous content and no temporary folder is left.
    """
    from .schema import validate_manifest

    start = time.perf_counter()
    raw = Path(raw_root)
    out = Path(out_dir)
    check_sources(cfg, raw)
    references = References(cfg, raw)  # a bad references CSV fails here, before any image
    runner = _Runner(cfg.workers)
    try:
        with atomic_dir(out) as staging:
            job = _Curation(cfg, raw, staging, progress)
            strata = job.strata()
            for split, ss in strata.items():
                for normal, anomalous in zip(ss[::2], ss[1::2]):  # the two strata of one source entry
                    references.check_matches(normal.entry, [c.record.image_path for c in normal.queue + anomalous.queue],
                                             f"curate.{split} {normal.entry.name!r}")  # fmt: skip
            job.run_phase(strata["eval"], runner, guard=False)
            job.run_phase(job.derive(strata["eval"]), runner, guard=False)
            job.set_eval(strata["eval"])
            rest = strata["calib"] + strata["train"]
            job.run_phase(rest, runner, guard=True)
            job.run_phase(job.derive(rest), runner, guard=True)
            job.drop_unlisted_bases(strata["eval"] + rest)
            counts, with_ref = {}, {}
            for split in SPLITS:
                df = _manifest(strata[split], cfg.image_size, out.as_posix(), references)
                validate_manifest(df, require_masks=(split == "eval"))
                _write_parquet(df, staging / f"{split}.parquet")
                counts[split] = len(df)
                with_ref[split] = int(df["reference"].notna().sum())
            _write_csv(job.rejected, REJECTED_COLUMNS, staging / "rejected.csv")
            _write_csv(job.leaked, LEAKAGE_COLUMNS, staging / "leakage.csv")
            summary = {**_summary(cfg, strata, job.rejected, job.leaked), "with_reference": with_ref}
            (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    finally:
        runner.close()
    for split, ss in strata.items():
        for s in ss:
            if s.quota is not None and len(s.accepted) < s.quota:
                log.warning("curate.%s %s label %d: %d of %d requested images available",
                            split, s.entry.name, s.label, len(s.accepted), s.quota)
    return CurateResult(out, counts, len(job.rejected), len(job.leaked),
                        time.perf_counter() - start, summary)


# --------------------------------------------------------------------------------------------
# reading


def read_manifest(name: str, root: str | os.PathLike[str] = "data/curated") -> pd.DataFrame:
    """The manifest ``<root>/<name>.parquet`` as a DataFrame (columns in the module docstring).

    Raises:
        ValueError: ``name`` is not one of :data:`SPLITS`.
        FileNotFoundError: the manifest does not exist (run ``readl curate`` / ``dvc repro curate``).
    """
    import pandas as pd

    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
    path = Path(root) / f"{name}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `readl curate` (or `dvc repro curate`)")
    return pd.read_parquet(path)


def load_split(name: str, root: str | os.PathLike[str] = "data/curated",
               project_root: str | os.PathLike[str] = ".") -> datasets.Dataset:
    """A curated split as a Hugging Face ``datasets.Dataset``.

    Args:
        name: ``"train"``, ``"calib"`` or ``"eval"``.
        root: the curated folder.
        project_root: what relative ``image_path`` / ``mask_path`` values are relative to (the
            repository root, where the stage ran).
    Returns:
        One row per image: the manifest columns plus ``image``, a ``datasets.Image()`` column
        (decodes to the 420x420 RGB ``PIL.Image``), and ``mask``, also ``datasets.Image()``
        (mode ``L``, values {0, 255}; ``None`` where a train/calib row has no mask).
    Raises:
        ValueError / FileNotFoundError: as :func:`read_manifest`.
    Source: ``datasets.Image`` feature (https://huggingface.co/docs/datasets/image_load).
    """
    import datasets

    df = read_manifest(name, root)
    base = Path(project_root)
    df["image"] = [str(base / p) for p in df["image_path"]]
    df["mask"] = [None if p is None or p != p else str(base / p) for p in df["mask_path"]]
    ds = datasets.Dataset.from_pandas(df, preserve_index=False)
    ds = ds.cast_column("image", datasets.Image())
    return ds.cast_column("mask", datasets.Image())
