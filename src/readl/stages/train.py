"""``readl train`` (DVC stage ``train``): CGRO (GRPO + consistency reward) fine-tuning with LoRA (paper Sec. 4.2, 5.1).

One linear entry, :func:`run` (like open-r1's ``grpo.py``): manifest -> model + processor -> dataset -> rewards
-> trainer (:func:`readl.training.train.build_trainer`) -> train (resuming the last complete checkpoint) ->
adapter + run record.

Outputs (under ``output_dir``, default ``models/``): ``adapter/`` (PEFT LoRA, written atomically),
``train_run.json`` (MLflow run id, and ``summary``: steps, share of steps with non-zero reward std
within a group, mean J and rewards, max |lora_B|; :mod:`readl.training.summary`), ``checkpoints/`` while running
(removed after success unless ``train.keep_checkpoints``). Multi-GPU: ``accelerate launch --config_file
src/readl/training/accelerate_multi_gpu.yaml -m readl.cli train``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from transformers.trainer_callback import PrinterCallback

from readl.atomic import atomic_dir, write_json
from readl.config import Params
from readl.digest import file_digest
from readl.model.loading import base_digest
from readl.paths import DEFAULT_PATHS, Paths, resolve_model
from readl.redact import redact
from readl.runtime import configure
from readl.training.checkpoints import fingerprint, train_resumable
from readl.training.data import balanced_rows, load_manifest
from readl.training.progress import StepProgress
from readl.training.rewards import reward_names
from readl.training.summary import train_summary
from readl.training.tracking import start_run, tracking_uri
from readl.training.train import DEFAULT_MANIFEST, build_trainer, run_params

__all__ = ["main", "resume_key", "run"]

log = logging.getLogger(__name__)


def resume_key(params: Params, manifest: Path, base: str) -> str:
    """The key a checkpoint must carry to be resumed: the training params, the manifest's bytes, the starting weights
    (``models/warmup``, re-made by a changed warm-up, or ``model.base``) and the training code's bytes: a crashed run
    resumes, a run whose start or code changed starts over (sha256 hex)."""
    code = sorted((Path(__file__).parents[1] / "training").glob("*.py"))
    return fingerprint(
        {
            **run_params(params),
            "base_sha256": base_digest(base),
            "training_code_sha256": file_digest(code, root=code[0].parent),
        },
        manifest,
    )


def run(
    params: Params,
    manifest: str | Path = DEFAULT_MANIFEST,
    output_dir: str | Path = DEFAULT_PATHS.models,
    device: str | None = None,
    root: str | Path = ".",
) -> dict:
    """Run (or resume) CGRO training and write the adapter and the run record.

    Args:
        params: validated ``params.yaml`` (sections ``model`` and ``train``, token selection in ``train.localization``).
        manifest: curated training manifest (``image_path``, ``label`` ...).
        output_dir: where ``adapter/``, ``train_run.json`` and ``checkpoints/`` go.
        device: ``cpu`` / ``cuda`` ...; default: this process's accelerate device.
        root: folder that relative image paths are resolved against (the repository root).

    Returns:
        The record written to ``train_run.json`` (on the main process; other ranks get ``{}``).

    Raises:
        FileNotFoundError / ValueError: a missing or empty manifest (says to run ``readl curate``), an unknown
            reward, or a model/processor that is not Qwen2.5-VL.
    """
    t = params.train
    runtime = configure(params.runtime)
    names = reward_names(t.rewards)
    manifest, output_dir = Path(manifest), Path(output_dir)
    paths = Paths(output_dir)
    model = resolve_model(params, paths)  # models/warmup after the cold start, else model.base
    frame = load_manifest(manifest, root)
    if t.balance:  # class-balanced rows: the minority label repeated
        frame = frame.iloc[balanced_rows(frame["label"], t.seed)].reset_index(drop=True)
    ckpt_dir = output_dir / "checkpoints"
    trainer = build_trainer(params, frame, ckpt_dir, device=device, base=model.base)  # fails early on a bad model
    trainer.remove_callback(PrinterCallback)  # one progress bar instead of a printed dict per step
    trainer.add_callback(StepProgress())

    fp = resume_key(params, manifest, model.base)
    data = {"manifest": str(manifest), "n_rows": len(frame), "n_anomalous_rows": int(frame["label"].sum())}

    def start(run_id: str | None) -> str:
        return start_run(
            t.experiment,
            run_id,
            params={**run_params(params), "data": data, "runtime": runtime},
            tags={"readl.stage": "train", "readl.rewards": ",".join(names)},
        ).info.run_id

    def describe(run_id: str, resume: Path | None) -> None:
        log.info("MLflow run %s (%s); %s", run_id, tracking_uri(), f"resuming {resume}" if resume else "fresh start")

    resume, run_id, main = train_resumable(trainer, ckpt_dir, fp, start, describe)
    if not main:
        return {}
    import mlflow

    policy = trainer.accelerator.unwrap_model(trainer.model)
    adapter = paths.adapter
    with atomic_dir(adapter) as tmp:  # never a half-written adapter
        policy.save_pretrained(tmp)
    record = {
        "run_id": run_id,
        "experiment": t.experiment,
        "tracking_uri": redact(tracking_uri()),  # the record names the store, never its credentials
        "adapter": str(adapter),
        "base": model.base,
        "rewards": names,
        "global_step": int(trainer.state.global_step),
        "resumed_from": str(resume) if resume else None,
        "runtime": runtime,
        "seed": t.seed,
        "summary": train_summary(trainer.state.log_history, adapter),  # readl.training.summary
    }
    write_json(paths.train_run, record)
    mlflow.end_run()
    if not t.keep_checkpoints:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return record


def main(
    params: Path | None = None,
    manifest: Path = Path("data/curated/train.parquet"),
    output: Path = DEFAULT_PATHS.models,
    device: str | None = None,
) -> None:
    """CGRO fine-tuning (GRPO + LoRA + consistency reward); resumes the last complete checkpoint by itself.

    ``readl train`` and ``python -m readl.stages.train`` (dvc.yaml): :func:`run` plus its console line."""
    from readl.stages.console import console, load_params_file

    record = run(load_params_file(params), manifest=manifest, output_dir=output, device=device)
    if record:
        console.print(f"adapter: {record['adapter']}  MLflow run: {record['run_id']}  steps: {record['global_step']}")


if __name__ == "__main__":
    from readl.stages.console import script

    script(main)
