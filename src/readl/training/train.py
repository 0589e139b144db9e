"""The CGRO trainer of ``readl train`` (paper Sec. 4.2, 5.1): GRPO arguments, model + LoRA + rewards -> trainer.

The stage itself (manifest -> trainer -> train -> adapter + run record) is :func:`readl.stages.train.run`.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
from accelerate import PartialState
from trl import GRPOConfig

from readl.config import Params
from readl.model.loading import load_model
from readl.training.data import build_dataset, fit_processor
from readl.training.lora import default_target_regex, lora_config, lora_targets
from readl.training.rewards import make_reward_funcs, reward_names
from readl.training.trainer import CGROTrainer
from readl.training.trl_adapter import run_args

__all__ = ["DEFAULT_MANIFEST", "grpo_args", "build_trainer", "run_params"]

log = logging.getLogger(__name__)
DEFAULT_MANIFEST = Path("data/curated/train.parquet")


def run_params(params: Params) -> dict:
    """The parameters a training run depends on (``runtime``, ``model`` and ``train``, nested dicts): the
    checkpoint fingerprint and the MLflow run's params. The top-level ``localization:`` is evaluation-side and not in it
    (the trainer reads ``train.localization``)."""
    return params.model_dump(include={"runtime", "model", "train"})


def grpo_args(params: Params, output_dir: str | Path, model: torch.nn.Module) -> GRPOConfig:
    """``GRPOConfig`` from ``params.train``; precision follows the loaded model (bf16 on GPU), never the
    TRL default ``bf16=True``. The objective (``loss_type``, ``num_iterations``, ``scale_rewards``,
    ``importance_sampling_level``, ``beta``, ``epsilon``) is passed explicitly: paper Eq. 9-10 by default
    (:class:`readl.config.TrainConfig`)."""
    t = params.train
    if t.use_vllm and importlib.util.find_spec("vllm") is None:
        raise ValueError(
            "train.use_vllm is true but vllm is not installed: `pip install 'readl[vllm]'` on a CUDA "
            "machine, or set train.use_vllm: false in params.yaml"
        )
    return GRPOConfig(
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
        warmup_steps=t.warmup_steps,
        max_steps=t.max_steps if t.max_steps > 0 else -1,
        num_train_epochs=t.num_train_epochs,
        max_grad_norm=t.max_grad_norm,
        activation_checkpointing=t.gradient_checkpointing,
        save_total_limit=t.save_total_limit,
        use_vllm=t.use_vllm,
        vllm_mode=t.vllm_mode,
        vllm_server_base_url=t.vllm_server_base_url,
        vllm_gpu_memory_utilization=t.vllm_gpu_memory_utilization,
        **run_args(model, t, output_dir),  # shared with the warm start (readl.training.trl_adapter)
    )


def build_trainer(
    params: Params,
    frame,
    output_dir: str | Path,
    device: str | None = None,
    callbacks=(),
    model_and_processor=None,
    base: str | None = None,
) -> CGROTrainer:
    """The CGRO trainer for ``params`` on the manifest rows ``frame`` (from :func:`readl.training.data.load_manifest`).

    Loads the base model (``params.model``), pins the processor to ``model.image_size``, builds the dataset,
    the reward functions (``train.rewards``), the LoRA config and the ``GRPOConfig``.

    Args:
        output_dir: the trainer's output (checkpoint) folder.
        device: default: this process's accelerate device.
        callbacks: extra ``TrainerCallback``s.
        model_and_processor: an already loaded ``(model, processor)`` (tests); default: ``load_model(base)``.
        base: the base model to load (the stage's :func:`readl.paths.resolve_model`); needed without
            ``model_and_processor``.

    Raises:
        ValueError: an unknown reward, a non-Qwen2.5-VL model/processor, or LoRA targets that match nothing.
    """
    t = params.train
    names = reward_names(t.rewards)
    if model_and_processor is None:
        if base is None:
            raise ValueError("build_trainer: pass base (the stage's resolve_model) or model_and_processor")
        device = device or str(PartialState().device)
        model_and_processor = load_model(base, device=device, dtype=params.model.dtype)
    model, processor = model_and_processor
    processor = fit_processor(processor, params.model.image_size)
    target = t.lora.target_modules or default_target_regex(model)  # the backbone family's (readl.model.families)
    log.info("LoRA on %d modules (decoder + merger)", len(lora_targets(model, target)))
    return CGROTrainer(
        model=model,
        reward_funcs=make_reward_funcs(names, t.consistency, t.accuracy_requires_format),
        args=grpo_args(params, output_dir, model),
        train_dataset=build_dataset(frame, params.model.image_size),
        processing_class=processor,
        peft_config=lora_config(t.lora.r, t.lora.alpha, t.lora.dropout, target),
        callbacks=list(callbacks),
        localization=t.localization,
    )
