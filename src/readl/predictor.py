"""The prediction library: one predictor factory, one image decoder, the ReAL map and the JSON record of an image.

Used by ``readl predict`` (:mod:`readl.stages.predict`), the calibrate and evaluate stages and the served model
(:mod:`readl.registry.pyfunc`), so all four build the model, decode images and compute maps the same way:
:func:`build_predictor` (model + adapter + generation settings), :func:`open_image` (files and bytes),
:func:`localize` (paper Eq. 2-5) and :func:`prediction_record`.

``readl predict`` (:func:`predict_files`): reasoning, answer, score, OK/NG decision and ReAL anomaly map for image
files.

For each image it writes ``<out>/<stem>.json`` and ``<out>/<stem>.png`` (the image with its anomaly map
overlaid; by default with a colour bar on the right and a caption under it, the image's pixels staying at the
top-left). The JSON record: ``image``, ``reasoning``, ``answer`` (``"Yes"``/``"No"``, ``null`` when the
completion has no parsable answer), ``format_ok``, ``score`` (P(Yes)), ``decision`` (``anomalous``/``normal``,
also for a malformed answer: readl.evaluation.decision) of ``decision_score`` (P(Yes), or the malformed fallback)
with ``threshold`` (value, rule, source) and ``decision_basis`` (why, in words), ``model``
(base, adapter content hash or registry version), ``thresholds`` (the tau_t/tau_i source), ``overlay`` (the
PNG's path), the reasoning ``tokens`` (decoded, in order), the selected tokens (``index`` into ``tokens``) with
S_T^ / S_I^ / w, ``tau``, ``fallback``. Images are kept at their size capped at
:data:`MAX_SIDE` px on the longest side. A file that is not a readable
image is reported with its path and reason; the others still get their results.
"""

from __future__ import annotations

import functools
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from readl.atomic import atomic_write, write_json
from readl.config import LocalizationConfig, Params
from readl.data.images import IMAGE_EXTENSIONS, MIN_SIDE, BadImageError, load_rgb_fit
from readl.digest import file_digest
from readl.evaluation.decision import decide, decision_basis, image_score, read_decision
from readl.evaluation.report import annotated_overlay, overlay
from readl.localization.anomaly_map import ReALResult, real_map, upsample
from readl.localization.thresholds import ThresholdPair, resolve_taus
from readl.model.inference import Prediction, Predictor

__all__ = [
    "ModelLoadError",
    "build_predictor",
    "wrap_predictor",
    "pipeline_predictor",
    "open_image",
    "resolve_taus",
    "localize",
    "prediction_record",
    "adapter_digest",
    "overlay_caption",
    "output_names",
    "check_outputs",
    "expand_inputs",
    "shown_names",
    "predict_files",
    "outcomes_table",
]

log = logging.getLogger(__name__)
# zlib level of the overlay PNGs (lossless either way): at 1024^2, 1 encodes in ~0.11 s vs ~0.57 s for PIL's
# default 6, for a file ~15% larger (1.4 vs 1.2 MB); benchmarks/predict_memory.py
PNG_COMPRESS_LEVEL = 1


MAX_SIDE = 2048
"""Longest side, pixels, of the image predict keeps (overlay PNG, map upsampling): larger files are
decoded downscaled (JPEG draft / box reduce), so memory is bounded whatever the file (an 8000x8000
JPEG peaked at 5 GB at full size). The model sees 420x420 either way (paper Sec. 5.1)."""


class ModelLoadError(RuntimeError):
    """The base model or adapter could not be loaded (the message names it and the fix)."""


def build_predictor(
    params: Params,
    base: str,
    adapter: str | Path | None = None,
    device: str | None = None,
    max_new_tokens: int | None = None,
) -> Predictor:
    """The one predictor factory: load ``base`` (+ LoRA ``adapter``) and wrap it in a greedy-decoding Predictor.

    ``readl predict``, the calibrate and evaluate stages and the served model all build their model here, so
    they share image size, attention layers, query row, generation settings and generation backend.

    Args:
        params: validated params (``model``: dtype, image_size, max_new_tokens, generation_backend;
            ``localization``: layers, query_row).
        base: ``"tiny"``, a local model folder (e.g. ``models/warmup``) or a Hugging Face id.
        adapter: a PEFT LoRA folder (``adapter_config.json`` inside) or ``None`` (the base model alone).
        device: ``cpu``, ``cuda``, ``cuda:1`` ... (default: CUDA when available).
        max_new_tokens: overrides ``model.max_new_tokens`` when given (> 0).

    Returns:
        A :class:`~readl.model.inference.Predictor` (model in eval mode, ReAL attention capture on).

    Raises:
        ModelLoadError: the model cannot be opened (not cached and offline, not a Qwen2.5-VL folder ...); the
            message names the model and the fix.
    """
    from readl.model.generation import make_generator
    from readl.model.loading import load_error_message, load_model, resolve_base

    mcfg = params.model
    try:
        model, processor = load_model(base, adapter=adapter, device=device, dtype=mcfg.dtype)
    except OSError as exc:
        log.debug("load_model failed", exc_info=True)
        raise ModelLoadError(load_error_message(base, exc)) from exc
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from exc
    return wrap_predictor(
        model, processor, params, max_new_tokens, make_generator(mcfg.generation_backend, resolve_base(base), adapter)
    )


def wrap_predictor(model, processor, params: Params, max_new_tokens: int | None = None, generator=None) -> Predictor:
    """A loaded ``(model, processor)`` as :func:`build_predictor` wraps it (image size, attention layers, query row,
    generation settings from ``params``; ``generator`` None = HF generate). For a model built in memory
    (benchmarks/gpu_check.py)."""
    from readl.model.inference import GenerationSettings

    mcfg, loc = params.model, params.localization
    return Predictor(
        model,
        processor,
        image_size=mcfg.image_size,
        layers=loc.layers,
        query_row=loc.query_row,
        generation=GenerationSettings(max_new_tokens=max_new_tokens or mcfg.max_new_tokens),
        generator=generator,
    )


def pipeline_predictor(
    params: Params, base: str, adapter: str | Path | None, device: str | None = None
) -> tuple[Predictor, str, Path | None]:
    """The calibrate / evaluate stages' model: :func:`build_predictor` on the pipeline's base and adapter.

    Args:
        params: validated params.
        base: the base model (the stage's :func:`readl.paths.resolve_model`).
        adapter: the LoRA folder, or ``none`` = the base model alone (the paper's "Vanilla").
        device: default this process's accelerate device under ``accelerate launch``, else CUDA when available.

    Returns:
        ``(predictor, base, adapter)`` with ``adapter`` None when no adapter folder was used.

    Raises:
        FileNotFoundError: ``adapter`` has no ``adapter_config.json`` (a stage run before ``readl train``; the
            message gives both fixes).
        ModelLoadError: as :func:`build_predictor`.
    """
    from readl.evaluation.predictions import process_state

    if adapter is not None and str(adapter).lower() == "none":  # `--adapter none`: the base model (paper "Vanilla")
        adapter = None
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"no adapter at {adapter} (no adapter_config.json): run `readl train` (dvc repro "
            "train) first, or pass --adapter none to use the base model alone"
        )
    if device is None and process_state().num_processes > 1:  # accelerate launch: this process's own device
        device = str(process_state().device)
    return build_predictor(params, base, adapter, device=device), base, adapter


def open_image(path: str | Path, max_side: int = MAX_SIDE, data: bytes | None = None) -> Image.Image:
    """Decode ``path`` (or the encoded file ``data``, named ``path`` in errors) as RGB, EXIF orientation applied,
    at its own size up to ``max_side`` pixels on the longest side (aspect kept; readl's robust decoder: 16-bit,
    CMYK, palette ... handled as in ``readl curate``, truncated files refused). The one decoder of
    ``readl predict``, the stages and the served model.

    Args:
        path: the image file; with ``data``, only the name used in error messages (e.g. ``"row 3"``).
        max_side: longest side kept, pixels (larger images are decoded downscaled, aspect kept).
        data: the bytes of an encoded image file (PNG, JPEG, TIFF ...) instead of reading ``path``.

    Returns:
        PIL image, mode ``"RGB"``, values 0-255, upright.

    Raises:
        BadImageError: missing, empty, truncated or not an image file, or a side under
            ``readl.data.images.MIN_SIDE`` (28 px) (message names the file and the fix; the decoder's advice
            about manifests, curate and fetch is left out: it is for ``readl curate``).
    """
    try:
        return load_rgb_fit(path, max_side, min_side=MIN_SIDE, data=data)
    except BadImageError as exc:
        parts = [p for p in exc.reason.split("; ") if not any(w in p for w in ("manifest", "curate", "readl fetch"))]
        if len(parts) < len(exc.reason.split("; ")):
            parts.append("check the path and the file")
        raise BadImageError(exc.path, "; ".join(parts)) from None


def localize(pred: Prediction, cfg: LocalizationConfig, taus: ThresholdPair) -> ReALResult:
    """ReAL for one prediction (paper Eq. 2-5) with the configured mode, weights and thresholds
    (``taus``: :func:`~readl.localization.thresholds.resolve_taus`)."""
    return real_map(
        pred.image_attn,
        pred.anomaly_attn,
        tau_t=taus.tau_t,
        tau_i=taus.tau_i,
        alpha=cfg.alpha,
        beta=cfg.beta,
        mode=cfg.mode,
        binarize=cfg.binarize,
        fallback=cfg.fallback,
        ties=cfg.ties,
    )


def prediction_record(path: Path, pred: Prediction, real: ReALResult, decision: dict | None = None) -> dict:
    """The JSON record of one image (see the module docstring).

    ``decision``: :func:`readl.evaluation.decision.read_decision`'s result (default: no thresholds file).
    """
    decision = decision or read_decision(None)
    selected = [
        {
            "index": int(i),
            "token": pred.tokens[i],
            "s_t_hat": round(float(real.s_t_hat[i]), 6),
            "s_i_hat": round(float(real.s_i_hat[i]), 6),
            "w": round(float(real.w[i]), 6),
        }
        for i in np.flatnonzero(real.w > 0)
    ]
    score = image_score(pred.score, pred.parsed.answer is None, decision["malformed"])
    return {
        "image": str(path),
        "reasoning": pred.parsed.reasoning,
        "answer": pred.parsed.answer,
        "format_ok": pred.parsed.format_ok,
        "score": round(pred.score, 6),
        "decision": decide(score, decision["value"]),
        "decision_score": round(score, 6),
        "decision_basis": decision_basis(
            pred.score, pred.parsed.answer is None, decision["malformed"], decision["value"], decision["rule"]
        ),
        "threshold": {k: decision[k] for k in ("value", "rule", "source")},
        "completion": pred.completion,
        "n_reasoning_tokens": len(pred.tokens),
        "tokens": list(pred.tokens),
        "tau": {"t": real.tau_t, "i": real.tau_i},
        "fallback": real.fallback,
        "selected_tokens": selected,
    }


def adapter_digest(adapter: str | Path | None) -> str | None:
    """``"sha256:<hex>"`` over the adapter folder's file names and bytes (``None`` without an adapter)."""
    if adapter is None:
        return None
    return f"sha256:{file_digest([Path(adapter)])}"


def overlay_caption(name: str, record: dict) -> str:
    """The caption under a predict overlay: file, answer, score, decision and its threshold."""
    t = record["threshold"]
    answer = record["answer"] or "none (malformed)"
    return (
        f"{name} | answer {answer} | score P(Yes) {record['score']:.3f} | decision "
        f"{record['decision']} (P(Yes) >= {t['value']:.3f}, {t['rule']})"
    )


@dataclass
class Outcome:
    """What happened to one input file: its outputs, or the error."""

    path: Path
    json_path: Path | None = None
    png_path: Path | None = None
    record: dict | None = None
    error: str | None = None


def expand_inputs(paths: list[Path]) -> list[Path]:
    """The image files ``readl predict`` reads: each file as given, each folder's image files (recursively, sorted;
    suffixes of :data:`readl.data.images.IMAGE_EXTENSIONS`, any case; dot-files and dot-folders skipped).
    Checked before any model loads.

    Raises:
        ValueError: an input does not exist (all such named), or a folder holds no image file.
    """
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise ValueError(f"input not found: {', '.join(missing)}; give image files or folders of them")
    files: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            files.append(p)
            continue
        found = sorted(
            f
            for f in p.rglob("*")
            if f.is_file()
            and f.suffix.lower() in IMAGE_EXTENSIONS
            and not any(part.startswith(".") for part in f.relative_to(p).parts)
        )
        if not found:
            raise ValueError(f"{p}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder or below")
        files.extend(found)
    return files


def _common_root(paths: list[Path]) -> Path:
    """The deepest folder holding every one of ``paths`` (absolute)."""
    return Path(os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]))


def shown_names(paths: list[Path]) -> dict[Path, str]:
    """How tables name each input: its file name when the names are unique, else its path relative to the inputs'
    common folder (``a/000.png``, ``b/c/000.png``)."""
    distinct = list(dict.fromkeys(paths))
    if len({p.name for p in distinct}) == len(distinct):
        return {p: p.name for p in distinct}
    root = _common_root(distinct)
    return {p: Path(os.path.abspath(p)).relative_to(root).as_posix() for p in distinct}


def output_names(paths: list[Path]) -> dict[Path, str]:
    """The output name (no suffix) of each distinct input: its stem when the stems are unique, else its path relative
    to the inputs' common folder with ``/`` as ``__`` (``a/000.png``, ``b/000.png`` -> ``a__000``, ``b__000``); a
    name still taken gets ``_2``, ``_3`` ... Never two inputs on one name (issue: ``b/same`` was overwritten by
    ``c/same_1``)."""
    distinct = list(dict.fromkeys(paths))
    stems = [p.stem for p in distinct]
    if len(set(stems)) == len(stems):
        return dict(zip(distinct, stems))
    resolved = [Path(os.path.abspath(p)) for p in distinct]
    root = _common_root(distinct)
    names, used = {}, set()
    for p, r in zip(distinct, resolved):
        base = "__".join(r.relative_to(root).with_suffix("").parts)
        name, k = base, 1
        while name in used:
            k += 1
            name = f"{base}_{k}"
        used.add(name)
        names[p] = name
    return names


def check_outputs(paths: list[Path], out_dir: Path) -> dict[Path, str]:
    """:func:`output_names`, after checking that no output (``<out_dir>/<name>.json`` / ``.png``) is an input file.

    Raises:
        ValueError: an output would replace an input image (e.g. ``--out`` is the images' folder); the message
            names both and the fix.
    """
    names = output_names(paths)
    inputs = {Path(os.path.abspath(p)): p for p in names}
    for name in names.values():
        for suffix in (".json", ".png"):
            target = Path(os.path.abspath(Path(out_dir) / f"{name}{suffix}"))
            if target in inputs:
                raise ValueError(
                    f"--out {out_dir}: writing {target.name} would replace the input image "
                    f"{inputs[target]}; choose an output folder that holds no input images"
                )
    return names


def predict_files(
    paths: list[Path],
    predictor: Predictor,
    cfg: LocalizationConfig,
    out_dir: Path,
    thresholds_file: Path | None = None,
    batch_size: int = 1,
    progress=None,
    provenance: dict | None = None,
    annotate: bool = True,
) -> list[Outcome]:
    """Predict every file in ``paths`` and write its JSON and overlay PNG into ``out_dir`` (named by
    :func:`output_names`; :func:`check_outputs` refuses an output that would replace an input).

    Unreadable files become ``Outcome(error=...)``; they never stop the others. Inputs are decoded one batch
    at a time (``batch_size`` readable images), so memory does not grow with ``len(paths)``; a batch's overlay
    PNGs are drawn and encoded in a background thread while the next batch generates.

    Args:
        paths: image files.
        predictor: a loaded :class:`~readl.model.inference.Predictor`.
        cfg: ``localization`` params.
        out_dir: output folder (created).
        thresholds_file: calibrated ``thresholds.json`` (tau_t, tau_i, decision) or ``None`` for per-image
            rules and the default decision threshold.
        batch_size: images per model call.
        progress: optional callable ``progress(n)`` after each batch, ``n`` = files finished in it (unreadable
            ones included).
        provenance: the record's ``model`` entry (``{"base", "adapter", "registered"}``).
        annotate: caption + colour bar on the overlay PNG (:func:`readl.evaluation.report.annotated_overlay`);
            False = the bare overlay at the image's size.
    """
    taus = resolve_taus(cfg, thresholds_file)
    decision = read_decision(thresholds_file)
    outcomes = {p: Outcome(p) for p in paths}
    names = check_outputs(paths, out_dir)
    pending = iter(dict.fromkeys(paths))  # each distinct path once, in order
    # The overlay PNGs of one batch are drawn and encoded in a background thread while the next batch
    # generates (zlib and PIL release the GIL); at most one batch is in flight, so memory stays bounded.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="readl-overlay") as writer:
        in_flight: tuple[int, list[tuple[Outcome, Path, Future]]] = (0, [])
        while True:  # decode one batch of readable images at a time: memory is bounded by batch_size
            batch: list[tuple[Path, Image.Image]] = []
            n_seen = 0
            for p in pending:
                n_seen += 1
                try:
                    batch.append((p, open_image(p)))
                except BadImageError as exc:
                    outcomes[p].error = str(exc)  # reported by the caller (`readl predict` lists them at the end)
                    log.debug("%s", exc)
                if len(batch) == batch_size:
                    break
            if not n_seen:
                break
            preds = predictor.predict([im for _, im in batch]) if batch else []
            _finish(in_flight, progress)
            writes = []
            for (p, im), pred in zip(batch, preds):
                real = localize(pred, cfg, taus)
                record = prediction_record(p, pred, real, decision)
                name = names[p]
                o = outcomes[p]
                png = out_dir / f"{name}.png"
                record.update(
                    model=provenance or {},
                    thresholds=str(thresholds_file)
                    if thresholds_file
                    else "per-image rules (localization.tau_t / tau_i)",
                    overlay=str(png),
                )
                o.record = record
                caption = overlay_caption(p.name, record) if annotate else None
                draw = functools.partial(_write_overlay, im, real.map, pred.image_size, caption)
                writes.append((o, out_dir / f"{name}.json", writer.submit(atomic_write, png, draw)))
            in_flight = (n_seen, writes)
        _finish(in_flight, progress)
    return [outcomes[p] for p in paths]


def _write_overlay(image: Image.Image, token_map, size: tuple[int, int], caption: str | None, tmp: Path) -> None:
    """The overlay PNG of one image: the (h, w) map upsampled to ``size`` = (H, W), drawn (with ``caption`` and
    a colour bar unless it is None) and encoded."""
    full = upsample(token_map, size)  # (H, W)
    im = annotated_overlay(image, full, caption) if caption is not None else overlay(image, full)
    im.save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def _finish(in_flight: tuple[int, list[tuple[Outcome, Path, Future]]], progress) -> None:
    """Wait for a batch's overlay writes, then write each record (a JSON never names an overlay that was not
    written), and report the batch done.

    Raises:
        OSError: an overlay or record could not be written (disk full, ``ulimit -f``); the message names the file.
    """
    n_seen, writes = in_flight
    for o, json_path, future in writes:
        try:
            o.png_path = future.result()
            o.json_path = write_json(json_path, o.record)
        except OSError as exc:
            raise OSError(exc.errno, f"{exc.strerror or exc}: writing {o.record['overlay']} and {json_path}") from exc
    if progress is not None and n_seen:
        progress(n_seen)


def outcomes_table(outcomes: list[Outcome]):
    """``readl predict``'s summary as a ``rich`` table: one row per file with a result (answer, format, score,
    decision with its threshold, tokens kept of the reasoning tokens, overlay PNG)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table("image", "answer", "format", "score", "decision", "tokens kept", "overlay")
    shown = shown_names([o.path for o in outcomes])
    for o in outcomes:
        if o.record is not None:
            r = o.record
            table.add_row(
                escape(shown[o.path]),
                str(r["answer"]),
                "ok" if r["format_ok"] else "broken",
                f"{r['score']:.3f}",
                f"{r['decision']} (t={r['threshold']['value']:.3f})",
                f"{len(r['selected_tokens'])}/{r['n_reasoning_tokens']}",
                escape(str(o.png_path)),
            )
    return table
