"""``readl predict``: the model's reasoning, answer, P(Yes) score, OK/NG decision and ReAL map for image files.

One linear entry, :func:`run`: resolve the model (the project's own ``models/warmup`` + ``models/adapter`` +
``models/thresholds.json``, a base model given by ``--model``, or a registered ``models:/NAME@ALIAS``), build the
predictor (:func:`readl.predictor.build_predictor`), predict and write one JSON record and one overlay PNG per
image (:func:`readl.predictor.predict_files`, which documents the record).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from readl.config import LocalizationConfig, Params
from readl.paths import DEFAULT_PATHS, resolve_model
from readl.predictor import Outcome, adapter_digest, build_predictor, check_outputs, predict_files

__all__ = ["DEFAULT_ADAPTER", "DEFAULT_THRESHOLDS", "PredictRun", "run"]

DEFAULT_ADAPTER, DEFAULT_THRESHOLDS = DEFAULT_PATHS.adapter, DEFAULT_PATHS.thresholds


@dataclass
class PredictRun:
    """What :func:`run` did: one :class:`~readl.predictor.Outcome` per input file (in order), the record's
    ``model`` entry (``base``, ``adapter`` digest, ``registered`` version or None) and the thresholds file used
    (None = the per-image rules and the default decision threshold)."""

    outcomes: list[Outcome]
    provenance: dict
    thresholds: Path | None


def _is_none(p) -> bool:
    return p is not None and str(p).lower() == "none"


def run(
    params: Params,
    images: list[Path],
    out: Path,
    model: str | None = None,
    adapter: Path | None = None,
    thresholds: Path | None = None,
    max_new_tokens: int | None = None,
    device: str | None = None,
    annotate: bool = True,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[dict, Path | None], None] | None = None,
) -> PredictRun:
    """Predict every file of ``images`` and write ``<out>/<stem>.json`` and ``<out>/<stem>.png``.

    Args:
        params: validated params (``model``, ``localization``; a registered model brings its own).
        images: image files; unreadable ones get an error :class:`~readl.predictor.Outcome`, the others results.
        out: output folder (created).
        model: ``None`` = the project's model (``model.base``, or ``models/warmup`` after ``readl warmup``, with
            ``models/adapter`` and ``models/thresholds.json`` when present); ``tiny``, a folder or an HF id; or a
            registered model ``models:/NAME@ALIAS`` / ``runs:/...`` (base + adapter + thresholds + params).
        adapter: a LoRA folder; ``none`` = the base model alone; default ``models/adapter`` for the project model.
        thresholds: a calibrated ``thresholds.json``; ``none`` = per-image rules and decision threshold 0.5.
        max_new_tokens: overrides ``model.max_new_tokens``.
        device: ``cpu``, ``cuda`` ... (default: CUDA when available).
        annotate: caption and colour bar on the overlay PNG (False: the bare overlay at the image's size).
        progress: called with the number of files finished after each batch.
        on_start: called once with ``(provenance, thresholds)`` before the first image (the CLI prints it).

    Returns:
        :class:`PredictRun`.

    Raises:
        ValueError: a bad argument (an output that would replace an input image, ``--thresholds`` file missing,
        ``--adapter`` folder without
            ``adapter_config.json``, ``--adapter`` with a registered model).
        readl.predictor.ModelLoadError: the base model cannot be loaded.
        readl.registry.RegistryError: the registered model cannot be resolved or loaded.
    """
    check_outputs(images, out)  # before the model loads: no output may replace an input
    no_thresholds = _is_none(thresholds)
    if thresholds is not None and not no_thresholds and not Path(thresholds).is_file():
        raise ValueError(
            f"--thresholds {thresholds}: file not found; run `readl calibrate` (models/thresholds.json) "
            f"or pass --thresholds none for per-image rules"
        )
    loc: LocalizationConfig = params.localization
    batch_size = params.model.batch_size
    if model and model.startswith(("models:/", "runs:/")):  # registered: its own adapter, thresholds and params
        from readl.registry.load import load_registered

        if adapter is not None:
            raise ValueError("--adapter cannot be combined with a registered model (it carries its adapter)")
        registered = load_registered(model, device=device, max_new_tokens=max_new_tokens)
        predictor, loc, batch_size = registered.predictor, registered.localization, registered.batch_size
        if thresholds is None:
            thresholds = Path(registered.thresholds_path) if registered.thresholds_path else None
        provenance = {
            "base": registered.base,
            "adapter": adapter_digest(registered.adapter),
            "registered": registered.registered,
        }
    else:
        project = model is None and adapter is None  # the project's own model: params model.base + models/adapter
        if _is_none(adapter):
            adapter = None
        elif project and (DEFAULT_ADAPTER / "adapter_config.json").is_file():
            adapter = DEFAULT_ADAPTER
        elif adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
            raise ValueError(
                f"--adapter {adapter}: no adapter_config.json; pass the folder written by `readl train` "
                f"(models/adapter), or --adapter none for the base model"
            )
        if project and thresholds is None and DEFAULT_THRESHOLDS.is_file():
            thresholds = DEFAULT_THRESHOLDS  # calibrate's thresholds belong to that model
        base = model or resolve_model(params).base  # models/warmup after `readl warmup`
        predictor = build_predictor(params, base, adapter, device=device, max_new_tokens=max_new_tokens)
        provenance = {"base": base, "adapter": adapter_digest(adapter), "registered": None}
    if no_thresholds:
        thresholds = None
    if on_start is not None:
        on_start(provenance, thresholds)
    outcomes = predict_files(
        images,
        predictor,
        loc,
        out,
        thresholds_file=thresholds,
        batch_size=batch_size,
        progress=progress,
        provenance=provenance,
        annotate=annotate,
    )
    return PredictRun(outcomes, provenance, thresholds)
