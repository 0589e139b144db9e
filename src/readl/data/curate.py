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
   not an image, a side under ``readl.data.images.MIN_SIDE`` = 28 px, mask missing / unreadable / of another
   size, anomalous image without a mask in
   eval, an image of a mask-labelled layout without a mask: ``missing_mask``; an anomalous image whose mask marks
   no pixel, ``empty_mask``, or every pixel, ``full_mask``, in any split) goes to ``rejected.csv`` with the reason,
   counted per reason in ``summary.json`` ``rejected.by_reason``; the stage never stops for it.
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
   ``masks/<split>/...``, ``rejected.csv``, ``leakage.csv``, ``summary.json`` (counts per split, source and category)
   and ``counts.json`` (its flat totals: the DVC metrics).

Manifest columns: the schema's (``readl.data.schema.MANIFEST_COLUMNS``) plus ``raw_image_path`` /
``raw_mask_path`` and ``reference`` (the reasoning reference of the image, or null:
:mod:`readl.data.references`; a template sentence by default, or the source's own CSV). ``image_path`` /
``mask_path`` are the CURATED 420x420 PNGs, as POSIX paths
relative to the repository root (the working directory of the stage: ``out_dir`` joined as given,
e.g. ``data/curated/images/train/visa/candle/Data/Images/Normal/0000.png``; absolute when
``out_dir`` is) -- what ``readl train`` / ``readl evaluate`` open. ``raw_*`` are the published
files, relative to the raw root (``data/raw``), for provenance; ``rejected.csv`` and
``leakage.csv`` name raw files the same way. ``width`` / ``height`` are the curated size. Rows are
sorted by source, category, label and raw path; the same raw files, params and ``out_dir`` give
byte-identical manifests and PNGs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from readl.atomic import atomic_dir

from .curate_outputs import (  # noqa: F401 - re-exported: the curated folder's API
    LEAKAGE_COLUMNS,
    MANIFEST_EXTRA_COLUMNS,
    REJECTED_COLUMNS,
    build_manifest,
    build_summary,
    flat_counts,
    load_split,
    read_manifest,
    write_csv,
    write_parquet,
)
from .curate_sources import (  # noqa: F401 - SourceMissingError, LayoutError: part of this module's API
    SPLITS,
    Candidate,
    LayoutError,
    SourceMissingError,
    Stratum,
    check_sources,
    make_candidate,
    proportional_order,
    read_entry,
    stratum_rng,
)
from .curate_workers import Runner, Task, process_task  # noqa: F401 - process_task: benchmarks/curate.py
from .leakage import LeakageGuard
from .references import References
from .sources import Record
from .sources.synthetic import spec as synthetic_spec

if TYPE_CHECKING:  # kept out of the import: decoding workers import this module (spawn)
    from readl.config import CurateConfig, CurateSource

__all__ = [
    "LEAKAGE_COLUMNS",
    "MANIFEST_EXTRA_COLUMNS",
    "REJECTED_COLUMNS",
    "SPLITS",
    "CurateResult",
    "SourceMissingError",
    "curate",
    "load_split",
    "read_manifest",
]

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""``progress(advance, total)``: ``advance`` images done since the last call, ``total`` so far
(it grows when rejected or leaked images are replaced)."""


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
        return (
            f"curate: {parts} images; {self.rejected} rejected, {self.leaked} leaked; "
            f"{self.seconds:.1f} s -> {self.out_dir}"
        )


# --------------------------------------------------------------------------------------------
# the stage


class _Curation:
    def __init__(self, cfg: CurateConfig, raw_root: Path, staging: Path, progress: Progress | None) -> None:
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
    def strata(self) -> dict[str, list[Stratum]]:
        cache: dict[str, list[Record]] = {}
        out: dict[str, list[Stratum]] = {}
        for split in ("eval", "calib", "train"):
            out[split] = []
            for i, entry in enumerate(getattr(self.cfg, split)):
                where = f"curate.{split}[{i}] {entry.name!r}"
                if entry.layout == "synthetic":
                    self._check_synthetic(split, where, entry)
                key = json.dumps(
                    [entry.name, entry.layout, entry.root, entry.options, entry.published_splits], sort_keys=True
                )
                if key not in cache:
                    cache[key] = read_entry(entry, self.raw_root, where, self.rejected)
                source_root = self.raw_root / entry.root
                cands = [make_candidate(r, self.raw_root, source_root) for r in cache[key]]
                for label, quota in ((0, entry.normal), (1, entry.anomalous)):
                    pool = [c for c in cands if c.record.label == label]
                    queue = proportional_order(pool, stratum_rng(self.cfg.seed, entry, label))
                    out[split].append(Stratum(split, entry, label, queue, quota))
        return out

    # ---- synthetic anomalies (readl.data.sources.synthetic)
    def _check_synthetic(self, split: str, where: str, entry: CurateSource) -> None:
        others = {e.name: e.layout for e in getattr(self.cfg, split)}
        for name in synthetic_spec(where, **entry.options).base:
            if others.get(name, "synthetic") == "synthetic":
                raise ValueError(
                    f"{where}: base {name!r} is not a non-synthetic entry of "
                    f"curate.{split} (entries: {', '.join(others)})"
                )

    def derive(self, strata: list[Stratum]) -> list[Stratum]:
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
                        rec = Record(
                            source=s.entry.name,
                            category=cand.record.category,
                            split=cand.record.split,
                            label=1,
                            defect_type=recipe,
                            image_path=self.staging / image_out,
                        )
                        queue.append(
                            Candidate(
                                rec, cand.image_rel, None, f"{cand.in_source}_{recipe}{k}", (recipe, seed, sp.texture)
                            )
                        )
            s.queue, s.pos = queue, 0
            derived.append(s)
        return derived

    def drop_unlisted_bases(self, strata: list[Stratum]) -> None:
        """``normals: false``: the base normal images of a synthetic source leave the manifest."""
        for s in strata:
            if (
                s.entry.layout == "synthetic"
                and s.label == 0
                and not synthetic_spec(s.entry.name, **s.entry.options).normals
            ):
                for _, _, image_out, mask_out in s.accepted:
                    for p in (image_out, mask_out):
                        if p is not None:
                            (self.staging / p).unlink(missing_ok=True)
                s.accepted, s.quota = [], 0

    # ---- output naming
    def _out_name(self, split: str, cand: Candidate) -> str:
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
    def run_phase(self, strata: list[Stratum], runner: Runner, guard: bool) -> None:
        while True:
            batch: list[tuple[Stratum, Candidate, Task, str, str | None]] = []
            for s in strata:
                need = s.requested - len(s.accepted)
                while need > 0 and s.pos < len(s.queue):
                    cand = s.queue[s.pos]
                    s.pos += 1
                    if cand.key in self.taken:
                        continue
                    self.taken.add(cand.key)
                    is_eval = s.split == "eval"
                    if is_eval and cand.record.label == 1 and cand.record.mask_path is None and cand.synthetic is None:
                        self._reject(
                            cand,
                            "missing_mask: anomalous image without a mask; the "
                            "eval split needs a pixel mask for every anomalous "
                            "image (add the mask or drop the image)",
                        )
                        continue
                    name = self._out_name(s.split, cand)
                    image_out = f"images/{name}.png"
                    has_mask = cand.record.mask_path is not None
                    mask_out = f"masks/{name}.png" if (has_mask or is_eval) else None
                    rec = cand.record
                    batch.append(
                        (
                            s,
                            cand,
                            Task(
                                image=str(rec.image_path),
                                mask=None if rec.mask_path is None else str(rec.mask_path),
                                mask_ref=rec.mask_ref,
                                out_image=str(self.staging / image_out),
                                out_mask=None if mask_out is None else str(self.staging / mask_out),
                                size=self.size,
                                synthetic=cand.synthetic,
                                anomalous=rec.label == 1,
                            ),
                            image_out,
                            mask_out,
                        )
                    )
                    need -= 1
            if not batch:
                return
            self.total += len(batch)
            for (s, cand, task, image_out, mask_out), (digest, thumb, error) in zip(
                batch, runner.map([b[2] for b in batch])
            ):
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

    def _reject(self, cand: Candidate, reason: str) -> None:
        self.rejected.append(
            {"source": cand.record.source, "image_path": cand.image_rel, "mask_path": cand.mask_rel, "reason": reason}
        )

    def set_eval(self, strata: list[Stratum]) -> None:
        rows = [(c.record.source, c.image_rel, h) for s in strata for c, h, _, _ in s.accepted]
        self.guard = LeakageGuard(
            rows,
            [self.eval_thumbs[(r[1], r[2])] for r in rows],
            self.cfg.leakage_max_distance,
            self.cfg.leakage_min_ssim,
        )

    def _leaks(self, s: Stratum, cand: Candidate, digest: str, thumb: np.ndarray) -> bool:
        hit = None if self.guard is None else self.guard.match(digest, thumb)
        if hit is None:
            return False
        self.leaked.append(
            {"split": s.split, "source": cand.record.source, "image_path": cand.image_rel, "phash": digest, **hit}
        )
        return True


def curate(
    cfg: CurateConfig,
    raw_root: str | os.PathLike[str] = "data/raw",
    out_dir: str | os.PathLike[str] = "data/curated",
    *,
    progress: Progress | None = None,
) -> CurateResult:
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
    runner = Runner(cfg.workers)
    try:
        with atomic_dir(out) as staging:
            job = _Curation(cfg, raw, staging, progress)
            strata = job.strata()
            for split, ss in strata.items():
                for normal, anomalous in zip(ss[::2], ss[1::2]):  # the two strata of one source entry
                    references.check_matches(
                        normal.entry,
                        [c.record.image_path for c in normal.queue + anomalous.queue],
                        f"curate.{split} {normal.entry.name!r}",
                    )
            job.run_phase(strata["eval"], runner, guard=False)
            job.run_phase(job.derive(strata["eval"]), runner, guard=False)
            job.set_eval(strata["eval"])
            rest = strata["calib"] + strata["train"]
            job.run_phase(rest, runner, guard=True)
            job.run_phase(job.derive(rest), runner, guard=True)
            job.drop_unlisted_bases(strata["eval"] + rest)
            counts, with_ref = {}, {}
            for split in SPLITS:
                df = build_manifest(strata[split], cfg.image_size, out.as_posix(), references)
                validate_manifest(df, require_masks=(split == "eval"))
                write_parquet(df, staging / f"{split}.parquet")
                counts[split] = len(df)
                with_ref[split] = int(df["reference"].notna().sum())
            write_csv(job.rejected, REJECTED_COLUMNS, staging / "rejected.csv")
            write_csv(job.leaked, LEAKAGE_COLUMNS, staging / "leakage.csv")
            summary = {**build_summary(cfg, strata, job.rejected, job.leaked), "with_reference": with_ref}
            (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            (staging / "counts.json").write_text(json.dumps(flat_counts(summary), indent=2) + "\n")  # DVC's metrics
    finally:
        runner.close()
    for split, ss in strata.items():
        for s in ss:
            if s.quota is not None and len(s.accepted) < s.quota:
                log.warning(
                    "curate.%s %s label %d: %d of %d requested images available",
                    split,
                    s.entry.name,
                    s.label,
                    len(s.accepted),
                    s.quota,
                )
    return CurateResult(out, counts, len(job.rejected), len(job.leaked), time.perf_counter() - start, summary)
