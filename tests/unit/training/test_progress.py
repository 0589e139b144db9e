"""Training progress outside a terminal: one plain line per logging step (piped, Prefect workers); a bar in a TTY."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from types import SimpleNamespace

from readl.training.progress import StepProgress

LOGS = {
    "reward": 1.25,
    "rewards/format/mean": 0.75,
    "rewards/consistency/mean": 0.5,
    "consistency/J_mean": 0.125,
    "kl": 0.0625,
    "loss": 0.03125,
}


def _state(step: int, max_steps: int = 30) -> SimpleNamespace:
    return SimpleNamespace(is_world_process_zero=True, global_step=step, max_steps=max_steps)


def test_non_tty_stream_gets_one_line_per_logging_step():
    stream = io.StringIO()  # isatty() is False, like a pipe or a Prefect worker's captured stderr
    cb = StepProgress(label="warmup", stream=stream)
    cb.on_train_begin(None, _state(0), None)
    for step in (1, 2):
        cb.on_step_end(None, _state(step), None)
        cb.on_log(None, _state(step), None, logs=LOGS)
    cb.on_log(None, _state(2), None, logs={"train_runtime": 12.0})  # the final summary: no rewards, no line
    cb.on_train_end(None, _state(2), None)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("warmup step 1/30") and lines[1].startswith("warmup step 2/30")
    for part in ("reward 1.250", "J 0.125", "KL 0.062", "loss 0.031", "format 0.750", "consistency 0.500"):
        assert part in lines[0], lines[0]
    assert "\x1b[" not in stream.getvalue(), "no terminal control codes in a log"


def test_label_defaults_to_train_and_lines_reach_a_pipe():
    script = textwrap.dedent(f"""
        from types import SimpleNamespace
        from readl.training.progress import StepProgress
        s = SimpleNamespace(is_world_process_zero=True, global_step=3, max_steps=7)
        cb = StepProgress()
        cb.on_train_begin(None, s, None)
        cb.on_log(None, s, None, logs={LOGS!r})
        cb.on_train_end(None, s, None)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert out.stderr.splitlines()[-1].startswith("train step 3/7  reward 1.250"), out.stderr
