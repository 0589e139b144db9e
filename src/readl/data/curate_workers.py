"""The curate stage's per-image work (decode, resize, hash, write), in-process or in a spawn pool of workers.

Workers import only this module and the decoders (:mod:`readl.data.images`, :mod:`readl.data.masks`,
:mod:`readl.data.phash`), not the stage.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from .images import MIN_SIDE, BadImageError
from .leakage import thumbnail
from .masks import load_pair
from .phash import decode_resize_hash, phash
from .sources.synthetic import render as render_synthetic

POOL_MIN_TASKS = 200
"""Batches smaller than this are decoded in-process: starting a spawn pool of 2 and importing the
decoder in it costs ~0.9 s here, the time of ~25-35 images; below a few hundred images the pool
gains little."""
PNG_COMPRESS_LEVEL = 1
"""zlib level of the curated PNGs: 11 ms and ~225 KB per 420x420 RGB image here, vs 69 ms and
~195 KB at PIL's default 6 (lossless either way)."""


@dataclass(frozen=True)
class Task:
    image: str
    mask: str | None
    mask_ref: str | None
    out_image: str
    out_mask: str | None  # None: write no mask
    size: tuple[int, int]
    synthetic: tuple[str, int] | None = None  # (recipe, seed): `image` is a curated base image
    anomalous: bool = False  # label 1: its mask (from a file) must mark some pixels, not all


def _save_png(array_or_image: Any, path: str, mode: str | None = None) -> None:
    from PIL import Image

    img = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image, mode=mode)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


_Result = tuple[str | None, np.ndarray | None, str | None]
"""``(phash, thumbnail, None)`` for a written image, ``(None, None, reason)`` for a bad input."""


def process_task(task: Task) -> _Result:
    """Decode, resize, hash and write one image (+ mask). Returns ``(phash, thumbnail, None)`` or
    ``(None, None, reason)`` for a bad input (nothing written then)."""
    try:
        if task.synthetic is not None:
            img, mask = render_synthetic(task.image, task.size, *task.synthetic)
            digest = phash(img)
        elif task.mask is not None:
            img, mask = load_pair(task.image, task.mask, task.size, coco_image_id=task.mask_ref, min_side=MIN_SIDE)
            if task.anomalous and not mask.any():
                return (
                    None,
                    None,
                    (
                        "empty_mask: the mask of this anomalous image marks no pixel (all background, or "
                        "a defect drawn in a value read as background); fix the mask or the label"
                    ),
                )
            if task.anomalous and mask.all():
                return (
                    None,
                    None,
                    (
                        "full_mask: the mask marks every pixel as defect (an inverted or placeholder "
                        "mask?); fix the mask"
                    ),
                )
            digest = phash(img)
        else:
            img, digest = decode_resize_hash(task.image, task.size, min_side=MIN_SIDE)
            mask = np.zeros((task.size[1], task.size[0]), dtype=bool)
    except BadImageError as exc:
        bad = Path(exc.path)
        is_mask = task.mask is not None and (bad == Path(task.mask) or bad.is_relative_to(task.mask))
        return None, None, f"{'bad_mask' if is_mask else 'bad_image'}: {exc.reason}"
    _save_png(img, task.out_image)
    if task.out_mask is not None:
        _save_png(mask.astype(np.uint8) * 255, task.out_mask, mode="L")
    return digest, thumbnail(img), None


class Runner:
    """Map :func:`process_task` over tasks inline or on a process pool (results in task order)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def map(self, tasks: Sequence[Task]) -> Iterable[_Result]:
        if self.workers <= 1 or (self._pool is None and len(tasks) < POOL_MIN_TASKS):
            return map(process_task, tasks)
        main_file = getattr(sys.modules["__main__"], "__file__", None)
        if main_file is not None and not os.path.exists(main_file):  # `python -` / `-c`:
            return map(process_task, tasks)  # spawn cannot re-import such a __main__
        if self._pool is None:  # spawn: safe whatever the parent imported (torch threads, ...)
            self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"))
        chunk = max(1, min(16, len(tasks) // (4 * self.workers)))
        return self._pool.map(process_task, tasks, chunksize=chunk)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
