"""One progress bar for training (rich), with the latest rewards, instead of a printed dict per step."""

from __future__ import annotations

import math

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import TrainerCallback

__all__ = ["StepProgress"]


def _fmt(logs: dict, key: str, name: str) -> str:
    v = logs.get(key)
    return f"{name} {float(v):.3f}" if v is not None and not math.isnan(float(v)) else ""


class StepProgress(TrainerCallback):
    """A rich bar over optimizer steps showing reward, per-reward means, mean Jaccard J, KL,
    the reward std within groups (``r-std``) and the share of groups whose rewards all tie (``zero-std``: such a
    group has no advantage, hence no gradient) (main process)."""

    def __init__(self, label: str = "train") -> None:
        self.label = label
        self.bar: Progress | None = None
        self.task = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.bar = Progress(
            TextColumn(self.label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"), console=Console(stderr=True),
        )  # fmt: skip
        self.task = self.bar.add_task(self.label, total=state.max_steps, completed=state.global_step, status="")
        self.bar.start()

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs:
            return
        parts = [_fmt(logs, "loss", "loss"), _fmt(logs, "reward", "reward"), _fmt(logs, "consistency/J_mean", "J"), _fmt(logs, "kl", "KL")]
        parts += [_fmt(logs, k, k.split("/")[1]) for k in logs if k.startswith("rewards/") and k.endswith("/mean")]
        parts += [_fmt(logs, "reward_std", "r-std"), _fmt(logs, "frac_reward_zero_std", "zero-std")]
        status = "  ".join(p for p in parts if p)
        if status:  # the final summary log has no rewards: keep the last status
            self.bar.update(self.task, status=status)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
