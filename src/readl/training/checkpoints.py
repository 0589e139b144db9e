"""Checkpoints and outputs of the train stage: automatic resume and atomic adapter writes.

Layout under the output folder (``models/``):

- ``checkpoints/checkpoint-N/``: HF Trainer checkpoints (adapter, optimizer, scheduler, RNG, trainer_state);
- ``checkpoints/run.json``: fingerprint of the configuration + manifest, and the MLflow run id;
- ``adapter/``: the final PEFT adapter; ``train_run.json``: the MLflow run id (the register stage logs there).

HF writes a checkpoint in place, ``trainer_state.json`` last, so a checkpoint whose ``trainer_state.json`` is
missing or does not parse was cut off mid-write and is skipped. A checkpoint folder written for another
configuration (fingerprint mismatch) is discarded rather than resumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from readl.atomic import write_json

__all__ = ["fingerprint", "last_complete_checkpoint", "prepare_checkpoint_dir", "save_run_info", "train_resumable"]

log = logging.getLogger(__name__)
_CKPT = re.compile(r"checkpoint-(\d+)")
RUN_FILE = "run.json"


def fingerprint(config: dict, manifest: str | Path) -> str:
    """sha256 over the JSON of ``config`` (sorted keys) and the manifest file's bytes."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    h.update(Path(manifest).read_bytes())
    return h.hexdigest()


def last_complete_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The highest-step ``checkpoint-N`` whose ``trainer_state.json`` parses; ``None`` if there is none."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    found = sorted(
        ((int(m.group(1)), p) for p in ckpt_dir.iterdir() if p.is_dir() and (m := _CKPT.fullmatch(p.name))),
        reverse=True,
    )
    for step, path in found:
        try:
            state = json.loads((path / "trainer_state.json").read_text())
            if int(state["global_step"]) == step:
                return path
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("skipping incomplete checkpoint %s (%s)", path, type(exc).__name__)
    return None


def prepare_checkpoint_dir(ckpt_dir: str | Path, fp: str) -> tuple[Path | None, str | None]:
    """Find what to resume from, discarding checkpoints of a different configuration.

    Args:
        ckpt_dir: the checkpoint folder (created if missing).
        fp: :func:`fingerprint` of this run.

    Returns:
        ``(checkpoint, mlflow_run_id)``: the last complete checkpoint and the run id recorded with it, or
        ``(None, None)`` for a fresh start (the folder is then emptied and ``run.json`` records ``fp``).
    """
    ckpt_dir = Path(ckpt_dir)
    info_path = ckpt_dir / RUN_FILE
    info = {}
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text())
        except ValueError:
            info = {}
    if ckpt_dir.exists() and info.get("fingerprint") == fp:
        ckpt = last_complete_checkpoint(ckpt_dir)
        if ckpt is not None:
            return ckpt, info.get("mlflow_run_id")
    elif ckpt_dir.exists() and any(ckpt_dir.iterdir()):
        log.warning("%s holds checkpoints of another configuration; starting afresh", ckpt_dir)
    if ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True)
    write_json(info_path, {"fingerprint": fp})
    return None, None


def save_run_info(ckpt_dir: str | Path, fp: str, run_id: str | None) -> None:
    """Record the MLflow run id next to the checkpoints, so a restart resumes the same run."""
    write_json(Path(ckpt_dir) / RUN_FILE, {"fingerprint": fp, "mlflow_run_id": run_id})


def train_resumable(
    trainer,
    ckpt_dir: str | Path,
    fp: str,
    start: Callable[[str | None], str],
    describe: Callable[[str, Path | None], None] | None = None,
) -> tuple[Path | None, str | None, bool]:
    """Train ``trainer``, resuming the last complete checkpoint of ``ckpt_dir`` when it has the same fingerprint,
    with one MLflow run across restarts and processes (``readl train`` and ``readl warmup``).

    Args:
        trainer: an HF / TRL ``Trainer`` whose ``args.output_dir`` is ``ckpt_dir``.
        ckpt_dir: the checkpoint folder (emptied when its fingerprint differs: :func:`prepare_checkpoint_dir`).
        fp: the run's fingerprint (:func:`fingerprint`).
        start: called on the main process with the run id to resume (None: a new run); returns the run id.
        describe: called on the main process with ``(run_id, resume)`` before training (a log line).

    Returns:
        ``(resume, run_id, is_main)``: the checkpoint resumed from (or None), the MLflow run id (None on the
        other processes) and whether this is the main process.
    """
    from accelerate import PartialState

    from readl.training.tracking import MlflowMetricsCallback

    state = PartialState()
    resume, run_id = None, None
    if state.is_main_process:
        resume, run_id = prepare_checkpoint_dir(ckpt_dir, fp)
        run_id = start(run_id)
        save_run_info(ckpt_dir, fp, run_id)
        trainer.add_callback(MlflowMetricsCallback(run_id))
        if describe is not None:
            describe(run_id, resume)
    state.wait_for_everyone()
    if not state.is_main_process:
        resume = last_complete_checkpoint(ckpt_dir)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    state.wait_for_everyone()
    return resume, run_id, state.is_main_process
