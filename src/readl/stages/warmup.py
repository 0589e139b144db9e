"""``readl warmup`` (DVC stage ``warmup``): the supervised cold start before CGRO (R1-style, as in Vision-R1).

One linear entry, :func:`run`: manifest -> targets (:mod:`readl.training.reasoning_targets`) -> model + processor
-> SFT dataset -> weighted-loss TRL ``SFTTrainer`` (:mod:`readl.training.warmup`: loss, augmentation, trainable
weights) -> train (resuming the last complete checkpoint) -> ``models/warmup`` (a full model folder that
``train``, ``calibrate``, ``evaluate``, ``register`` and ``predict`` use as the base model) + ``warmup_run.json``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from accelerate import PartialState
from transformers.trainer_callback import PrinterCallback

from readl.atomic import atomic_dir, write_json
from readl.config import Params
from readl.model.loading import is_kit, load_model
from readl.paths import DEFAULT_PATHS, Paths
from readl.runtime import configure
from readl.training.checkpoints import fingerprint, train_resumable
from readl.training.data import balanced_rows, fit_processor, load_manifest
from readl.training.lora import default_target_regex, lora_config
from readl.training.progress import StepProgress
from readl.training.reasoning_targets import targets_for
from readl.training.tracking import start_run
from readl.training.warmup import WeightedSFTTrainer, sft_args, sft_dataset

__all__ = ["main", "run"]

log = logging.getLogger(__name__)


def run(
    params: Params,
    manifest: str | Path = "data/curated/train.parquet",
    output_dir: str | Path = DEFAULT_PATHS.models,
    device: str | None = None,
    root: str | Path = ".",
) -> dict:
    """Run (or resume) the cold start and write ``output_dir/warmup`` (model + processor) and ``warmup_run.json``.

    With ``warmup.enabled: false`` nothing is trained: the folder records the base model reference only
    (``warmup_run.json`` with ``"enabled": false``) and the later stages use ``model.base``.

    Args:
        params: validated ``params.yaml`` (sections ``model``, ``warmup``, ``train.lora``).
        manifest: curated training manifest (``image_path``, ``label``, ``category``, ``defect_type`` ...).
        output_dir: where ``warmup/``, ``warmup_run.json`` and ``warmup_checkpoints/`` go.
        device: ``cpu`` / ``cuda`` ...; default: this process's accelerate device.
        root: folder that relative image paths are resolved against.

    Returns:
        The record written to ``warmup_run.json`` (``{}`` on non-main processes).

    Raises:
        FileNotFoundError / ValueError: a missing or empty manifest (says to run ``readl curate``).
    """
    w, state = params.warmup, PartialState()
    runtime = configure(params.runtime)
    manifest, output_dir = Path(manifest), Path(output_dir)
    paths = Paths(output_dir)
    out = paths.warmup
    if not w.enabled:
        if state.is_main_process:
            with atomic_dir(out) as tmp:
                write_json(tmp / "readl_base.json", {"base": params.model.base})
            record = {"enabled": False, "base": params.model.base, "model": str(out)}
            write_json(paths.warmup_run, record)
            return record
        return {}
    frame = load_manifest(manifest, root)
    if w.balance:  # class-balanced rows: the minority label repeated (each read augmented afresh)
        frame = frame.iloc[balanced_rows(frame["label"], w.seed)].reset_index(drop=True)
    targets = targets_for(frame, seed=w.seed)  # phrases keyed by image content (reasoning_targets.row_key)
    model, processor = load_model(params.model.base, device=device or str(state.device), dtype=params.model.dtype)
    processor = fit_processor(processor, params.model.image_size)
    trainable = w.trainable if w.trainable != "auto" else ("full" if is_kit(params.model.base) else "lora")
    peft = None
    if trainable == "lora":
        lcfg = params.train.lora
        peft = lora_config(lcfg.r, lcfg.alpha, lcfg.dropout, lcfg.target_modules or default_target_regex(model))
    model.train()
    ckpt_dir = output_dir / "warmup_checkpoints"
    trainer = WeightedSFTTrainer(
        model=model,
        args=sft_args(params, ckpt_dir, model),
        train_dataset=sft_dataset(
            frame, params.model.image_size, targets, w.seed if w.augment else None, w.augment_grayscale
        ),
        processing_class=processor,
        peft_config=peft,
        decision_tokens=w.decision_tokens,
        decision_weight=w.decision_weight,
        answer_weight=w.answer_weight,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(StepProgress("warmup"))

    fp = fingerprint(
        params.model_dump(include={"runtime", "model", "warmup"}) | {"lora": params.train.lora.model_dump()}, manifest
    )
    data = {"manifest": str(manifest), "n_rows": len(frame), "n_anomalous_rows": int(frame["label"].sum())}

    def start(run_id: str | None) -> str:
        return start_run(
            params.train.experiment,
            run_id,
            tags={"readl.stage": "warmup"},
            params={"model": params.model.model_dump(), "warmup": w.model_dump(), "data": data, "runtime": runtime},
        ).info.run_id

    def describe(run_id: str, resume: Path | None) -> None:
        log.info(
            "warmup: %d rows (class-balanced: %s), %s weights, MLflow run %s; %s",
            len(frame),
            w.balance,
            trainable,
            run_id,
            f"resuming {resume}" if resume else "fresh start",
        )

    resume, run_id, main = train_resumable(trainer, ckpt_dir, fp, start, describe)
    if not main:
        return {}
    import mlflow

    policy = trainer.accelerator.unwrap_model(trainer.model)
    if trainable == "lora":
        policy = policy.merge_and_unload()
    policy.eval()

    with atomic_dir(out) as tmp:  # never a half-written model folder
        policy.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        write_json(tmp / "readl_base.json", {"base": params.model.base, "warmup_run": run_id})
    record = {
        "enabled": True,
        "base": params.model.base,
        "model": str(out),
        "run_id": run_id,
        "global_step": int(trainer.state.global_step),
        "trainable": trainable,
        "resumed_from": str(resume) if resume else None,
        "runtime": runtime,
        "seed": w.seed,
    }
    write_json(paths.warmup_run, record)
    mlflow.end_run()
    if not w.keep_checkpoints:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return record


def main(
    params: Path | None = None,
    manifest: Path = Path("data/curated/train.parquet"),
    output: Path = DEFAULT_PATHS.models,
    device: str | None = None,
) -> None:
    """Supervised cold start (SFT on the answer format) before CGRO; resumes its last checkpoint by itself.

    ``readl warmup`` and ``python -m readl.stages.warmup`` (dvc.yaml): :func:`run` plus its console line; errors as
    :mod:`readl.stages.console` says."""
    from readl.stages.console import console, load_params_file

    record = run(load_params_file(params), manifest=manifest, output_dir=output, device=device)
    if record:
        done = f"steps: {record['global_step']}  MLflow run: {record['run_id']}" if record["enabled"] else "disabled"
        console.print(f"warm-started model: {record['model']}  {done}")


if __name__ == "__main__":
    from readl.stages.console import script

    script(main)
