"""Run the model over a manifest with a per-image cache keyed by content, so an interrupted stage resumes.

calibrate and evaluate both need, for every image of a split, the generation, the P(Yes) score and
the per-token attention (a :class:`~readl.model.inference.Prediction`). Each one is stored as
``<cache_dir>/<image stem>-<key>.npz`` as soon as its batch is done (atomic write). The key
(:func:`entry_key`) is the SHA-256 of

- the content of the curated image (its bytes, not its path: an image overwritten in place and
  re-curated gets a new key and is recomputed), and
- the :func:`fingerprint` of everything else the prediction depends on: base model (id and content of
  a local folder), adapter files, dtype, prompt, image size, attention layers, decoding settings, query-row
  convention, score rule and the source of ``readl.model`` (the code that produces predictions).

The mask is not part of the key: a prediction does not depend on it (evaluate reads masks afresh
each run). Entries no longer used by the manifest are removed when a run completes; ``index.json``
maps each image path to its key and ``fingerprint.json`` shows the current fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

import readl.model
from readl.atomic import atomic_write, write_json
from readl.data.images import load_rgb
from readl.digest import file_digest
from readl.model.inference import SCORE_RULE, Prediction, Predictor
from readl.model.loading import base_digest
from readl.model.prompting import parse_completion
from readl.runtime import record as runtime_record

__all__ = [
    "fingerprint",
    "entry_key",
    "image_id",
    "save_prediction",
    "load_prediction",
    "cached_predictions",
    "predict_manifest",
    "process_state",
]

log = logging.getLogger(__name__)


def fingerprint(predictor: Predictor, base: str, adapter: Path | None) -> dict:
    """Everything a cached prediction depends on besides its image (module docstring).

    Returns:
        A JSON-able dict; :func:`entry_key` hashes it with each image's content.
    """
    g = predictor.generation
    params = getattr(predictor.model, "parameters", None)
    dtype = str(next(params()).dtype) if callable(params) else None
    code = sorted(Path(readl.model.__file__).parent.glob("*.py"))
    return {
        "base": str(base),
        "base_sha256": base_digest(str(base)),
        "adapter_sha256": file_digest([adapter]) if adapter is not None else None,
        "dtype": dtype,
        "prompt": predictor.prompt,
        "image_size": predictor.image_size,
        "layers": predictor.layers,
        "query_row": predictor.query_row,
        "generation_backend": getattr(predictor.generator, "name", type(predictor.generator).__name__),
        "score_rule": SCORE_RULE,
        "generation": {
            "max_new_tokens": g.max_new_tokens,
            "do_sample": g.do_sample,
            "temperature": g.temperature,
            "top_p": g.top_p,
        },
        "code_sha256": file_digest(code, root=code[0].parent),
        "runtime": runtime_record(),  # threads, deterministic mode, torch build: the floating-point path
    }


def entry_key(fp: dict, image: str | Path) -> str:
    """The cache key of one image: SHA-256 (hex) of the fingerprint ``fp`` and the image file's bytes."""
    h = hashlib.sha256(json.dumps(fp, sort_keys=True, default=str).encode())
    h.update(b"\0image:" + file_digest([image]).encode())
    return h.hexdigest()


def image_id(path: str | Path, key: str) -> str:
    """The cache file stem of an image: readable stem + the first 20 hex digits of its :func:`entry_key`."""
    return f"{Path(path).stem}-{key[:20]}"


def save_prediction(path: Path, pred: Prediction) -> Path:
    """Store one prediction as ``.npz`` (arrays + a JSON header), atomically."""
    meta = {
        "completion": pred.completion,
        "score": pred.score,
        "tokens": pred.tokens,
        "image_size": list(pred.image_size),
    }

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, image_attn=pred.image_attn, anomaly_attn=pred.anomaly_attn, meta=np.array(json.dumps(meta)))

    return atomic_write(path, write)


def load_prediction(path: Path) -> Prediction:
    """Inverse of :func:`save_prediction`.

    Raises:
        ValueError: the file is not a readable prediction (delete it to recompute).
    """
    try:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            return Prediction(
                completion=meta["completion"],
                parsed=parse_completion(meta["completion"]),
                score=float(meta["score"]),
                tokens=list(meta["tokens"]),
                image_attn=z["image_attn"],
                anomaly_attn=z["anomaly_attn"],
                image_size=tuple(meta["image_size"]),
            )
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable cached prediction ({exc}); delete it to recompute") from exc


def cached_predictions(
    manifest: pd.DataFrame,
    predictor: Predictor,
    cache_dir: Path,
    fp: dict,
    root: Path = Path("."),
    batch_size: int = 4,
    progress: Callable[[int], None] | None = None,
    prune: bool = True,
) -> Iterator[tuple[pd.Series, Prediction]]:
    """Yield ``(row, prediction)`` for every manifest row, computing only what the cache lacks.

    Args:
        manifest: rows with an ``image_path`` column (resized images written by ``readl curate``).
        predictor: the loaded model.
        cache_dir: folder of ``<image stem>-<key>.npz`` files (created).
        fp: :func:`fingerprint` of the current model; with each image's bytes it keys the entries.
        root: folder the manifest's paths are relative to.
        batch_size: images per model call.
        progress: called with the number of images finished (cached ones included).
        prune: after the last row, remove the entries of other keys and rewrite ``index.json`` (False for one
            shard of a multi-process run, whose siblings write into the same folder).

    Yields:
        Rows in manifest order with their predictions. When all are yielded, entries of other keys
        (other images, models or settings) are deleted from ``cache_dir``.

    Raises:
        FileNotFoundError: a manifest image is missing (re-run ``readl curate``).
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_json(cache_dir / "fingerprint.json", fp)
    rows = [row for _, row in manifest.iterrows()]
    keys = [entry_key(fp, root / row["image_path"]) for row in rows]
    files = [cache_dir / f"{image_id(row['image_path'], k)}.npz" for row, k in zip(rows, keys)]
    todo = [i for i, f in enumerate(files) if not f.is_file()]
    log.info("%s: %d of %d predictions cached, %d to compute", cache_dir, len(rows) - len(todo), len(rows), len(todo))
    if progress is not None:
        progress(len(rows) - len(todo))
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        images = []
        for i in batch:
            images.append(load_rgb(root / rows[i]["image_path"], None))  # the project decoder
        for i, pred in zip(batch, predictor.predict(images)):
            save_prediction(files[i], pred)
        if progress is not None:
            progress(len(batch))
    if prune:
        write_json(cache_dir / "index.json", {str(r["image_path"]): k for r, k in zip(rows, keys)})
    for row, f in zip(rows, files):
        yield row, load_prediction(f)
    if not prune:  # a shard of a multi-process run: the other shards' entries are not stale
        return
    keep = set(files)
    for old in cache_dir.glob("*.npz"):
        if old not in keep:
            old.unlink(missing_ok=True)


def process_state():
    """This process's accelerate state: one process unless started by ``accelerate launch`` (GPUs) or
    ``torchrun --nproc_per_node N`` (also on CPU: gloo, as accelerate's own CPU launcher needs MPI)."""
    import os

    import torch
    from accelerate import PartialState

    cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return PartialState(cpu=cpu)


def predict_manifest(
    manifest: pd.DataFrame,
    predictor: Predictor,
    base: str,
    adapter: Path | None,
    cache_dir: Path,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[pd.Series, Prediction]] | None:
    """Every manifest row's prediction through the per-image cache (:func:`cached_predictions`), across processes
    when launched with ``accelerate launch --num_processes N``: the main process checks the cache's fingerprint
    first, then process r predicts rows r, r + N, ... into the shared cache, and the main process reads them all
    back in manifest order.

    Args:
        manifest: the split's rows (``image_path`` relative to the working directory).
        predictor: the loaded model; base, adapter: what it was built from (the cache fingerprint).
        cache_dir: the per-image cache folder.
        batch_size: images per model call.
        progress: called with the number of images finished (main process only).

    Returns:
        ``[(row, prediction), ...]`` in manifest order on the main process; ``None`` on the other processes.

    Raises:
        FileNotFoundError: a manifest image is missing (re-run ``readl curate``).
    """
    fp = fingerprint(predictor, base, adapter)
    state = process_state()
    bs = batch_size
    if state.num_processes == 1:
        return list(cached_predictions(manifest, predictor, cache_dir, fp, batch_size=bs, progress=progress))
    if state.is_main_process:  # fingerprint check (may empty the cache) before anyone writes into it
        list(cached_predictions(manifest.iloc[:0], predictor, cache_dir, fp, batch_size=bs, prune=False))
    state.wait_for_everyone()
    shard = manifest.iloc[state.process_index :: state.num_processes]
    log.info("process %d/%d: %d of %d images", state.process_index, state.num_processes, len(shard), len(manifest))
    for _ in cached_predictions(
        shard,
        predictor,
        cache_dir,
        fp,
        batch_size=bs,
        prune=False,
        progress=progress if state.is_main_process else None,
    ):
        pass
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    return list(cached_predictions(manifest, predictor, cache_dir, fp, batch_size=bs))
