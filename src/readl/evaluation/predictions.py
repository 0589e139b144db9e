"""Run the model over a manifest with a per-image cache, so an interrupted stage resumes.

calibrate and evaluate both need, for every image of a split, the generation, the P(Yes) score and
the per-token attention (a :class:`~readl.model.inference.Prediction`). Each one is stored as
``<cache_dir>/<image id>.npz`` as soon as its batch is done (atomic write). The folder carries a
``fingerprint.json`` (base model, adapter content hash, prompt, image size, decoding settings, query-row
convention, score rule): if it
differs from the current one the cache is emptied first, so a new adapter never reuses old answers.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from readl.atomic import atomic_write, write_json
from readl.model.inference import SCORE_RULE, Prediction, Predictor
from readl.model.prompting import parse_completion

__all__ = ["fingerprint", "image_id", "save_prediction", "load_prediction", "cached_predictions"]


def _dir_hash(path: Path | None) -> str | None:
    if path is None:
        return None
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def fingerprint(predictor: Predictor, base: str, adapter: Path | None) -> dict:
    """What the cached predictions depend on (a change empties the cache)."""
    g = predictor.generation
    return {
        "base": str(base),
        "adapter_sha256": _dir_hash(adapter),
        "prompt": predictor.prompt,
        "image_size": predictor.image_size,
        "layers": predictor.layers,
        "query_row": predictor.query_row,
        "generation_backend": getattr(predictor.generator, "name", type(predictor.generator).__name__),
        "score_rule": SCORE_RULE,
        "generation": {"max_new_tokens": g.max_new_tokens, "do_sample": g.do_sample,
                       "temperature": g.temperature, "top_p": g.top_p},
    }  # fmt: skip


def image_id(path: str | Path) -> str:
    """A stable file name for an image path: readable stem + short hash of the full path."""
    p = Path(path)
    return f"{p.stem}-{hashlib.sha1(p.as_posix().encode()).hexdigest()[:10]}"


def save_prediction(path: Path, pred: Prediction) -> Path:
    """Store one prediction as ``.npz`` (arrays + a JSON header), atomically."""
    meta = {"completion": pred.completion, "score": pred.score, "tokens": pred.tokens,
            "image_size": list(pred.image_size)}  # fmt: skip

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
                completion=meta["completion"], parsed=parse_completion(meta["completion"]), score=float(meta["score"]),
                tokens=list(meta["tokens"]), image_attn=z["image_attn"], anomaly_attn=z["anomaly_attn"],
                image_size=tuple(meta["image_size"]),
            )  # fmt: skip
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
) -> Iterator[tuple[pd.Series, Prediction]]:
    """Yield ``(row, prediction)`` for every manifest row, computing only what the cache lacks.

    Args:
        manifest: rows with an ``image_path`` column (resized images written by ``readl curate``).
        predictor: the loaded model.
        cache_dir: folder of ``<image id>.npz`` files (created).
        fp: :func:`fingerprint` of the current model; a different stored one empties ``cache_dir``.
        root: folder the manifest's paths are relative to.
        batch_size: images per model call.
        progress: called with the number of images finished (cached ones included).

    Yields:
        Rows in manifest order with their predictions.
    """
    cache_dir = Path(cache_dir)
    fp_file = cache_dir / "fingerprint.json"
    if cache_dir.exists() and (not fp_file.is_file() or json.loads(fp_file.read_text()) != fp):
        shutil.rmtree(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_json(fp_file, fp)
    rows = [row for _, row in manifest.iterrows()]
    files = [cache_dir / f"{image_id(row['image_path'])}.npz" for row in rows]
    todo = [i for i, f in enumerate(files) if not f.is_file()]
    if progress is not None:
        progress(len(rows) - len(todo))
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        images = []
        for i in batch:
            with Image.open(root / rows[i]["image_path"]) as im:
                images.append(im.convert("RGB"))
        for i, pred in zip(batch, predictor.predict(images)):
            save_prediction(files[i], pred)
        if progress is not None:
            progress(len(batch))
    for row, f in zip(rows, files):
        yield row, load_prediction(f)
