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
  (add columns the reward functions read) and ``self.rewards_done(inputs)`` after it.

It also names the private TRL state the hooks read (:attr:`GRPOAdapter.trl_tokenizer`,
:meth:`GRPOAdapter.group_size`, :meth:`GRPOAdapter.record_metric`). ``tests/unit/training/test_trl_adapter.py`` pins the TRL
version and these methods' signatures: a TRL upgrade fails there first, with what to re-check.
"""

from __future__ import annotations

from trl import GRPOTrainer
from trl.trainer.utils import RepeatSampler

__all__ = ["TRL_VERSION", "PROMPT_IDS_KEY", "PRIVATE_OVERRIDES", "EpochSeededRepeatSampler", "GRPOAdapter"]

TRL_VERSION = "1.16.0"  # the TRL release these overrides were written against (constraints.txt pins it)
PROMPT_IDS_KEY = "readl_prompt_ids"  # per-row column: the unpadded prompt token ids the rollout was sampled from
# TRL private methods overridden here -> the parameters (after self) they were written against
PRIVATE_OVERRIDES = {
    "_get_train_sampler": ("dataset",),
    "_generate": ("prompts",),
    "_calculate_rewards": ("inputs", "prompts", "completions", "completion_ids_list"),
}


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

    def rewards_done(self, inputs: list[dict]) -> None:
        """Called after every reward function ran, with the rows :meth:`reward_inputs` returned."""

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
        self.rewards_done(inputs)
        return rewards
