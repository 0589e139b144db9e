"""``readl train``: CGRO (GRPO + consistency reward) fine-tuning of Qwen2.5-VL with LoRA (paper Sec. 4.2, 5.1).

Linear on purpose (like open-r1's ``grpo.py``): manifest -> model + processor -> dataset -> rewards ->
trainer -> train (resuming the last complete checkpoint) -> adapter + run record.

Outputs (under ``output_dir``, default ``models/``): ``adapter/`` (PEFT LoRA, written atomically),
``train_run.json`` (MLflow run id, and ``summary``: steps, share of steps with non-zero reward std
within a group, mean J and rewards, max |lora_B|; :mod:`readl.training.summary`), ``checkpoints/`` while running (removed after success unless
``train.keep_checkpoints``). Multi-GPU: ``accelerate launch --config_file
src/readl/training/accelerate_multi_gpu.yaml -m readl.cli train``.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

import torch
from accelerate import PartialState
from transformers.trainer_callback import PrinterCallback
from trl import GRPOConfig

from readl.atomic import write_json
from readl.config import Params, pipeline_base
from readl.model.loading import load_model
from readl.training.checkpoints import (
    fingerprint,
    last_complete_checkpoint,
    prepare_checkpoint_dir,
    replace_dir,
    save_run_info,
)
from readl.training.data import build_dataset, fit_processor, load_manifest
from readl.training.progress import StepProgress
from readl.training.lora import DEFAULT_TARGET_REGEX, lora_config, lora_targets
from readl.training.rewards import make_reward_funcs, reward_names
from readl.training.summary import train_summary
from readl.training.tracking import MlflowMetricsCallback, start_run, tracking_uri
from readl.training.trainer import CGROTrainer

__all__ = ["DEFAULT_MANIFEST", "grpo_args", "build_trainer", "run_params", "train"]

log = logging.getLogger(__name__)
DEFAULT_MANIFEST = Path("data/curated/train.parquet")


def run_params(params: Params) -> dict:
    """The parameters a training run depends on (``model`` and ``train``, nested dicts): the checkpoint
    fingerprint and the MLflow run's params. The top-level ``localization:`` is evaluation-side and not in it
    (the trainer reads ``train.localization``)."""
    return params.model_dump(include={"model", "train"})


def grpo_args(params: Params, output_dir: str | Path, model: torch.nn.Module) -> GRPOConfig:
    """``GRPOConfig`` from ``params.train``; precision follows the loaded model (bf16 on GPU), never the
    TRL default ``bf16=True``. The objective (``loss_type``, ``num_iterations``, ``scale_rewards``,
    ``importance_sampling_level``, ``beta``, ``epsilon``) is passed explicitly: paper Eq. 9-10 by default
    (:class:`readl.config.TrainConfig`)."""
    t = params.train
    if t.use_vllm and importlib.util.find_spec("vllm") is None:
        raise ValueError("train.use_vllm is true but vllm is not installed: `pip install 'readl[vllm]'` on a CUDA "
                         "machine, or set train.use_vllm: false in params.yaml")  # fmt: skip
    on_cpu = next(model.parameters()).device.type == "cpu"
    dtype = next(model.parameters()).dtype
    return GRPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        num_generations=t.num_generations,
        reward_weights=t.reward_weights,
        max_completion_length=t.max_completion_length,
        temperature=t.temperature,
        beta=t.beta,
        epsilon=t.epsilon,
        loss_type=t.loss_type,
        num_iterations=t.num_iterations,
        scale_rewards=t.scale_rewards,
        importance_sampling_level=t.importance_sampling_level,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_steps,
        max_steps=t.max_steps if t.max_steps > 0 else -1,
        num_train_epochs=t.num_train_epochs,
        max_grad_norm=t.max_grad_norm,
        activation_checkpointing=t.gradient_checkpointing,
        seed=t.seed,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu=on_cpu,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        logging_steps=t.logging_steps,
        report_to="none",  # MLflow through MlflowMetricsCallback (one run, resumable, system metrics)
        remove_unused_columns=False,  # the rewards read `label`
        dataloader_num_workers=0,
        disable_tqdm=True,
        use_vllm=t.use_vllm,
        vllm_mode=t.vllm_mode,
        vllm_server_base_url=t.vllm_server_base_url,
        vllm_gpu_memory_utilization=t.vllm_gpu_memory_utilization,
    )


def build_trainer(
    params: Params, frame, output_dir: str | Path, device: str | None = None, callbacks=(), model_and_processor=None
) -> CGROTrainer:
    """The CGRO trainer for ``params`` on the manifest rows ``frame`` (from :func:`load_manifest`).

    Loads the base model (``params.model``), pins the processor to ``model.image_size``, builds the dataset,
    the reward functions (``train.rewards``), the LoRA config and the ``GRPOConfig``.

    Args:
        output_dir: the trainer's output (checkpoint) folder.
        device: default: this process's accelerate device.
        callbacks: extra ``TrainerCallback``s.
        model_and_processor: an already loaded ``(model, processor)`` (tests); default: ``load_model``.

    Raises:
        ValueError: an unknown reward, a non-Qwen2.5-VL model/processor, or LoRA targets that match nothing.
    """
    t = params.train
    names = reward_names(t.rewards)
    if model_and_processor is None:
        device = device or str(PartialState().device)
        model_and_processor = load_model(pipeline_base(params), device=device, dtype=params.model.dtype)
    model, processor = model_and_processor
    processor = fit_processor(processor, params.model.image_size)
    target = t.lora.target_modules or DEFAULT_TARGET_REGEX
    log.info("LoRA on %d modules (decoder + merger)", len(lora_targets(model, target)))
    return CGROTrainer(
        model=model,
        reward_funcs=make_reward_funcs(names, t.consistency),
        args=grpo_args(params, output_dir, model),
        train_dataset=build_dataset(frame, params.model.image_size),
        processing_class=processor,
        peft_config=lora_config(t.lora.r, t.lora.alpha, t.lora.dropout, target),
        callbacks=list(callbacks),
        localization=t.localization,
    )


def train(
    params: Params,
    manifest: str | Path = DEFAULT_MANIFEST,
    output_dir: str | Path = "models",
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
    t, state = params.train, PartialState()
    names = reward_names(t.rewards)
    manifest, output_dir = Path(manifest), Path(output_dir)
    frame = load_manifest(manifest, root)
    ckpt_dir = output_dir / "checkpoints"
    trainer = build_trainer(params, frame, ckpt_dir, device=device)  # fails early on a bad model/processor
    trainer.remove_callback(PrinterCallback)  # one progress bar instead of a printed dict per step
    trainer.add_callback(StepProgress())

    fp = fingerprint(run_params(params), manifest)
    resume, run_id = None, None
    if state.is_main_process:
        resume, run_id = prepare_checkpoint_dir(ckpt_dir, fp)
        run_id = start_run(
            t.experiment,
            run_id,
            params={**run_params(params), "data": {
                "manifest": str(manifest), "n_images": len(frame), "n_anomalous": int(frame["label"].sum())}},
            tags={"readl.stage": "train", "readl.rewards": ",".join(names)},
        ).info.run_id  # fmt: skip
        save_run_info(ckpt_dir, fp, run_id)
        trainer.add_callback(MlflowMetricsCallback(run_id))
        log.info("MLflow run %s (%s); %s", run_id, tracking_uri(), f"resuming {resume}" if resume else "fresh start")
    state.wait_for_everyone()
    if not state.is_main_process:
        resume = last_complete_checkpoint(ckpt_dir)

    trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    state.wait_for_everyone()
    if not state.is_main_process:
        return {}
    import mlflow

    policy = trainer.accelerator.unwrap_model(trainer.model)
    adapter = replace_dir(lambda tmp: policy.save_pretrained(tmp), output_dir / "adapter")
    record = {
        "run_id": run_id,
        "experiment": t.experiment,
        "tracking_uri": tracking_uri(),
        "adapter": str(adapter),
        "base": pipeline_base(params),
        "rewards": names,
        "global_step": int(trainer.state.global_step),
        "resumed_from": str(resume) if resume else None,
        "summary": train_summary(trainer.state.log_history, adapter),  # readl.training.summary
    }
    write_json(output_dir / "train_run.json", record)
    mlflow.end_run()
    if not t.keep_checkpoints:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return record
