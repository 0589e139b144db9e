"""The ONE place readl overrides TRL's private ``GRPOTrainer`` methods (written against TRL :data:`TRL_VERSION`).

TRL has no public hook between sampling the rollouts and scoring them, which CGRO needs (paper Sec. 4.2: the
consistency reward reads the policy's attention over each rollout). :class:`GRPOAdapter` overrides exactly
three private methods and turns them into readl's hooks:

- ``_get_train_sampler``: :class:`EpochSeededRepeatSampler` (the data order of a resumed run = the
  uninterrupted run's);
- ``_generate``: returns TRL's result unchanged, plus each rollout's exact prompt token ids as the
  ``extra_fields`` column :data:`PROMPT_IDS_KEY` (TRL merges ``extra_fields`` into each row's inputs before
  scoring): an explicit per-row value, no state kept on the trainer between calls;
- ``_calculate_rewards``: ``inputs = self.reward_inputs(inputs, completion_ids)`` before TRL's reward loop
  (add columns the reward functions read) and ``self.rewards_done(inputs, rewards)`` after it.

It also names the private TRL state the hooks read (:attr:`GRPOAdapter.trl_tokenizer`,
:meth:`GRPOAdapter.group_size`, :meth:`GRPOAdapter.record_metric`). ``tests/unit/training/test_trl_adapter.py`` pins
the TRL
version and these methods' signatures: a TRL upgrade fails there first, with what to re-check.

:func:`run_args` holds the ``TrainingArguments`` that readl's two TRL trainers (GRPO in
:mod:`readl.training.train`, SFT in :mod:`readl.training.warmup`) set alike.
"""

from __future__ import annotations

from pathlib import Path

import torch
from trl import GRPOTrainer
from trl.trainer.utils import RepeatSampler

from readl.config import TrainConfig, WarmupConfig

__all__ = ["TRL_VERSION", "PROMPT_IDS_KEY", "PRIVATE_OVERRIDES", "EpochSeededRepeatSampler", "GRPOAdapter", "run_args"]

TRL_VERSION = "1.16.0"  # the TRL release these overrides were written against (constraints.txt pins it)
PROMPT_IDS_KEY = "readl_prompt_ids"  # per-row column: the unpadded prompt token ids the rollout was sampled from
# TRL private methods overridden here -> the parameters (after self) they were written against
PRIVATE_OVERRIDES = {
    "_get_train_sampler": ("dataset",),
    "_generate": ("prompts",),
    "_calculate_rewards": ("inputs", "prompts", "completions", "completion_ids_list"),
}


def run_args(model, section: WarmupConfig | TrainConfig, output_dir: str | Path) -> dict:
    """``TrainingArguments`` keywords both readl trainers (``GRPOConfig``, ``SFTConfig``) set alike.

    From ``section`` (``params.warmup`` or ``params.train``, same-named fields): the batch size per device,
    gradient accumulation, learning rate and schedule, seed, checkpoint and logging intervals. Precision and
    device follow the loaded ``model`` (bf16 / fp16 from its parameters' dtype, never the TRL default
    ``bf16=True``; ``use_cpu`` when it is on the CPU). Fixed: checkpoints every ``save_steps``; no
    ``report_to`` (MLflow goes through :class:`readl.training.tracking.MlflowMetricsCallback`: one run,
    resumable); dataset columns kept (the rewards read ``label``; rows are built on access) and read in the
    main process; no tqdm bar (readl's own progress).
    """
    first = next(model.parameters())
    return dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=section.per_device_train_batch_size,
        gradient_accumulation_steps=section.gradient_accumulation_steps,
        learning_rate=section.learning_rate,
        lr_scheduler_type=section.lr_scheduler_type,
        seed=section.seed,
        save_steps=section.save_steps,
        logging_steps=section.logging_steps,
        bf16=first.dtype == torch.bfloat16,
        fp16=first.dtype == torch.float16,
        use_cpu=first.device.type == "cpu",
        save_strategy="steps",
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


class EpochSeededRepeatSampler(RepeatSampler):
    """TRL's ``RepeatSampler`` whose shuffle order is a function of (seed, epoch) only.

    The stock sampler draws every epoch from one generator seeded once, so a run resumed in epoch e > 0
    (fresh process) would replay epoch 0's order. ``Trainer`` calls ``set_epoch(e)`` before each epoch;
    reseeding with ``seed + e`` there makes a resumed run see exactly the uninterrupted run's data order.
    """

    def set_epoch(self, epoch: int) -> None:
        if self.shuffle:
            self.generator.manual_seed((self.seed or 0) + int(epoch))


class GRPOAdapter(GRPOTrainer):
    """``GRPOTrainer`` with readl's hooks in place of TRL private methods (module docstring).

    Subclasses override :meth:`reward_inputs` and :meth:`rewards_done`; the defaults change nothing.
    """

    # --- hooks ------------------------------------------------------------------------------------------------
    def reward_inputs(self, inputs: list[dict], completion_ids_list: list[list[int]]) -> list[dict]:
        """The rows passed to the reward functions (default: ``inputs`` as is). Each row holds the dataset
        columns and :data:`PROMPT_IDS_KEY`; ``completion_ids_list`` the rollouts' token ids, one per row."""
        return inputs

    def rewards_done(self, inputs: list[dict], rewards) -> None:
        """Called after every reward function ran, with the rows :meth:`reward_inputs` returned and TRL's
        gathered ``(B_global, n_reward_funcs)`` float32 tensor of rewards (columns in ``reward_func_names`` order)."""

    # --- named access to TRL state ----------------------------------------------------------------------------
    @property
    def trl_tokenizer(self):
        """The tokenizer TRL generates with (the processing class's tokenizer)."""
        return self._tokenizer

    def group_size(self) -> int:
        """G: rollouts per prompt in the current mode (``num_generations`` / ``num_generations_eval``)."""
        return self.num_generations if self.model.training else self.num_generations_eval

    def record_metric(self, name: str, value: float) -> None:
        """Append ``value`` to TRL's logged metric ``name`` of the current mode (averaged per logging step)."""
        self._metrics["train" if self.model.training else "eval"][name].append(float(value))

    # --- the private overrides --------------------------------------------------------------------------------
    def _get_train_sampler(self, dataset=None):
        dataset = self.train_dataset if dataset is None else dataset
        return EpochSeededRepeatSampler(
            data_source=dataset,
            mini_repeat_count=self.num_generations,
            batch_size=self.args.generation_batch_size // self.num_generations,
            repeat_count=self.num_iterations * self.args.steps_per_generation,
            shuffle=self.shuffle_dataset,
            seed=self.args.seed,
        )

    def _generate(self, prompts):
        prompt_ids, completion_ids, tool_mask, completions, logprobs, extra_fields, images, tool_images = (
            super()._generate(prompts)
        )
        extra_fields = {**(extra_fields or {}), PROMPT_IDS_KEY: [list(p) for p in prompt_ids]}
        return prompt_ids, completion_ids, tool_mask, completions, logprobs, extra_fields, images, tool_images

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        inputs = self.reward_inputs(inputs, completion_ids_list)
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self.rewards_done(inputs, rewards)
        return rewards
