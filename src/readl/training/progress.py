"""Training progress: a rich bar in a terminal, one plain line per logging step elsewhere (pipes, Prefect workers,
CI logs), with the latest rewards instead of a printed dict per step."""

from __future__ import annotations

import math
import sys
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import TrainerCallback

__all__ = ["StepProgress"]


def _fmt(logs: dict, key: str, name: str) -> str:
    v = logs.get(key)
    return f"{name} {float(v):.3f}" if v is not None and not math.isnan(float(v)) else ""


def _status(logs: dict) -> str:
    """``reward R  J J_mean  KL kl  loss L  <reward name> mean ...`` of one log record ("" when it has none)."""
    parts = [
        _fmt(logs, "reward", "reward"),
        _fmt(logs, "consistency/J_mean", "J"),
        _fmt(logs, "kl", "KL"),
        _fmt(logs, "loss", "loss"),
    ]  # the final summary record has `train_loss`, not `loss`: no status
    parts += [_fmt(logs, k, k.split("/")[1]) for k in logs if k.startswith("rewards/") and k.endswith("/mean")]
    # the reward std within groups and the share of groups whose rewards all tie (no advantage, no gradient)
    parts += [_fmt(logs, "reward_std", "r-std"), _fmt(logs, "frac_reward_zero_std", "zero-std")]
    return "  ".join(p for p in parts if p)


class StepProgress(TrainerCallback):
    """Progress over optimizer steps with reward, per-reward means, mean Jaccard J, KL and loss (main process).

    Args:
        label: prefix of the bar / of each line (``train``; the warm-up stage passes ``warmup``).
        stream: where to write (default ``sys.stderr``). A terminal (``isatty()``) gets a rich bar; anything
            else gets one flushed line per logging step, ``<label> step k/N  reward ...  J ...  KL ...  loss ...``.
    """

    def __init__(self, label: str = "train", stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream
        self.bar: Progress | None = None
        self.task = None
        self.lines = False

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        stream = self.stream or sys.stderr
        if not (hasattr(stream, "isatty") and stream.isatty()):
            self.lines = True
            return
        self.bar = Progress(
            TextColumn(self.label),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=Console(file=stream),
        )
        self.task = self.bar.add_task(self.label, total=state.max_steps, completed=state.global_step, status="")
        self.bar.start()

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or (self.bar is None and not self.lines):
            return
        status = _status(logs)
        if not status:  # the final summary log has no rewards: keep the last status
            return
        if self.lines:
            print(
                f"{self.label} step {state.global_step}/{state.max_steps}  {status}",
                file=self.stream or sys.stderr,
                flush=True,
            )
        else:
            self.bar.update(self.task, status=status)

    def on_train_end(self, args, state, control, **kwargs):
        self.lines = False
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
