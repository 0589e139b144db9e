"""``readl predict``: reasoning, answer, score and ReAL anomaly map for image files.

For each image it writes ``<out>/<stem>.json`` (reasoning, answer, format_ok, score, selected tokens
with S_T^ / S_I^ / w) and ``<out>/<stem>.png`` (the image with its anomaly map overlaid). A file that
is not a readable image is reported with its path and reason; the others still get their results.
"""

from __future__ import annotations

import functools
import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from readl.atomic import atomic_write, write_json
from readl.config import LocalizationConfig
from readl.data.images import BadImageError, load_rgb
from readl.evaluation.report import overlay
from readl.localization.anomaly_map import ReALResult, real_map, upsample
from readl.model.inference import Prediction, Predictor

__all__ = ["open_image", "resolve_taus", "localize", "prediction_record", "predict_files"]

log = logging.getLogger(__name__)
# zlib level of the overlay PNGs (lossless either way): at 1024^2, 1 encodes in ~0.11 s vs ~0.57 s for PIL's
# default 6, for a file ~15% larger (1.4 vs 1.2 MB); benchmarks/predict_memory.py
PNG_COMPRESS_LEVEL = 1


def open_image(path: str | Path) -> Image.Image:
    """Decode ``path`` at its own size as RGB, EXIF orientation applied (readl's robust decoder:
    16-bit, CMYK, palette ... handled as in ``readl curate``).

    Raises:
        BadImageError: missing, empty, truncated or not an image file (message names the file and the fix).
    """
    return load_rgb(path, size=None)


def resolve_taus(cfg: LocalizationConfig, thresholds_file: str | Path | None) -> tuple[float | str, float | str]:
    """tau_t and tau_i for :func:`real_map`: calibrated values if a thresholds file is given, else the rules.

    Args:
        cfg: the ``localization`` params (rules ``median`` / ``max_curvature`` applied per image, or fixed).
        thresholds_file: ``models/thresholds.json`` written by ``readl calibrate`` (keys ``tau_t``, ``tau_i``
            each with a ``value``), or ``None``.

    Raises:
        ValueError: the thresholds file lacks ``tau_t``/``tau_i`` values.
    """
    if thresholds_file is not None:
        data = json.loads(Path(thresholds_file).read_text())
        try:
            return float(data["tau_t"]["value"]), float(data["tau_i"]["value"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{thresholds_file}: needs tau_t.value and tau_i.value; re-run `readl calibrate`") from exc

    def one(t):
        return float(t.value) if t.rule == "fixed" else t.rule

    return one(cfg.tau_t), one(cfg.tau_i)


def localize(pred: Prediction, cfg: LocalizationConfig, taus: tuple[float | str, float | str]) -> ReALResult:
    """ReAL for one prediction (paper Eq. 2-5) with the configured mode, weights and thresholds."""
    return real_map(
        pred.image_attn, pred.anomaly_attn, tau_t=taus[0], tau_i=taus[1],
        alpha=cfg.alpha, beta=cfg.beta, mode=cfg.mode, binarize=cfg.binarize, fallback=cfg.fallback, ties=cfg.ties,
    )  # fmt: skip


def prediction_record(path: Path, pred: Prediction, real: ReALResult) -> dict:
    """The JSON record of one image (see the module docstring)."""
    selected = [
        {"index": int(i), "token": pred.tokens[i], "s_t_hat": round(float(real.s_t_hat[i]), 6),
         "s_i_hat": round(float(real.s_i_hat[i]), 6), "w": round(float(real.w[i]), 6)}
        for i in np.flatnonzero(real.w > 0)
    ]  # fmt: skip
    return {
        "image": str(path),
        "reasoning": pred.parsed.reasoning,
        "answer": pred.parsed.answer,
        "format_ok": pred.parsed.format_ok,
        "score": round(pred.score, 6),
        "completion": pred.completion,
        "n_reasoning_tokens": len(pred.tokens),
        "tau": {"t": real.tau_t, "i": real.tau_i},
        "fallback": real.fallback,
        "selected_tokens": selected,
    }


@dataclass
class Outcome:
    """What happened to one input file: its outputs, or the error."""

    path: Path
    json_path: Path | None = None
    png_path: Path | None = None
    record: dict | None = None
    error: str | None = None


def predict_files(
    paths: list[Path],
    predictor: Predictor,
    cfg: LocalizationConfig,
    out_dir: Path,
    thresholds_file: Path | None = None,
    batch_size: int = 1,
    progress=None,
) -> list[Outcome]:
    """Predict every file in ``paths`` and write its JSON and overlay PNG into ``out_dir``.

    Unreadable files become ``Outcome(error=...)``; they never stop the others. Inputs are decoded one batch
    at a time (``batch_size`` readable images), so memory does not grow with ``len(paths)``; a batch's overlay
    PNGs are drawn and encoded in a background thread while the next batch generates.

    Args:
        paths: image files.
        predictor: a loaded :class:`~readl.model.inference.Predictor`.
        cfg: ``localization`` params.
        out_dir: output folder (created).
        thresholds_file: calibrated ``thresholds.json`` or ``None`` for per-image rules.
        batch_size: images per model call.
        progress: optional callable ``progress(n)`` after each batch, ``n`` = files finished in it (unreadable
            ones included).
    """
    taus = resolve_taus(cfg, thresholds_file)
    outcomes = {p: Outcome(p) for p in paths}
    stems: dict[str, int] = {}
    pending = iter(dict.fromkeys(paths))  # each distinct path once, in order
    # The overlay PNGs of one batch are drawn and encoded in a background thread while the next batch
    # generates (zlib and PIL release the GIL); at most one batch is in flight, so memory stays bounded.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="readl-overlay") as writer:
        in_flight: tuple[int, list[tuple[Outcome, Future]]] = (0, [])
        while True:  # decode one batch of readable images at a time: memory is bounded by batch_size
            batch: list[tuple[Path, Image.Image]] = []
            n_seen = 0
            for p in pending:
                n_seen += 1
                try:
                    batch.append((p, open_image(p)))
                except BadImageError as exc:
                    outcomes[p].error = str(exc)
                    log.error("%s", exc)
                if len(batch) == batch_size:
                    break
            if not n_seen:
                break
            preds = predictor.predict([im for _, im in batch]) if batch else []
            _finish(in_flight, progress)
            writes = []
            for (p, im), pred in zip(batch, preds):
                real = localize(pred, cfg, taus)
                record = prediction_record(p, pred, real)
                n = stems.get(p.stem, 0)
                stems[p.stem] = n + 1
                name = p.stem if n == 0 else f"{p.stem}_{n}"
                o = outcomes[p]
                o.record = record
                o.json_path = write_json(out_dir / f"{name}.json", record)
                draw = functools.partial(_write_overlay, im, real.map, pred.image_size)
                writes.append((o, writer.submit(atomic_write, out_dir / f"{name}.png", draw)))
            in_flight = (n_seen, writes)
        _finish(in_flight, progress)
    return [outcomes[p] for p in paths]


def _write_overlay(image: Image.Image, token_map, size: tuple[int, int], tmp: Path) -> None:
    """The overlay PNG of one image: the (h, w) map upsampled to ``size`` = (H, W), drawn and encoded."""
    overlay(image, upsample(token_map, size)).save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def _finish(in_flight: tuple[int, list[tuple[Outcome, Future]]], progress) -> None:
    """Wait for a batch's overlay writes (errors re-raised), record their paths, report the batch done."""
    n_seen, writes = in_flight
    for o, future in writes:
        o.png_path = future.result()
    if progress is not None and n_seen:
        progress(n_seen)
