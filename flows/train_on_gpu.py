"""Prefect flow ``train-on-gpu``: the train stage on a GPU worker (deployment ``train-on-gpu`` on work pool ``gpu``).

The worker is stateless: it starts from a checkout of the repository (prefect.yaml's pull step clones it),
takes the caller's ``dvc.lock`` (so it knows the exact curated inputs), ``dvc pull``s them from the DVC
remote, runs ``dvc repro -s train`` and ``dvc push --run-cache``es the adapter, the run record and DVC's
run-cache entry; the caller restores the stage from there (see ``flows/stages.py``). A crashed or preempted
run is simply re-run: ``readl train`` resumes from the last complete checkpoint under ``models/checkpoints`` of
the persistent ``workdir`` (prefect.yaml: ``~/.cache/readl/train-on-gpu``; in containers, a volume mounted there).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # loaded by file path (Prefect entrypoint `flows/train_on_gpu.py:train_on_gpu`)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect import flow
from prefect.logging import get_run_logger

from flows.stages import dvc, prepare_workdir, repro

__all__ = ["train_on_gpu"]


@flow(name="train-on-gpu", log_prints=True)
def train_on_gpu(
    lock: str | None = None,
    stage: str = "train",
    workdir: str | None = None,
    pull: bool = True,
    push: bool = True,
    dvc_remote: str | None = None,
) -> dict:
    """Run one DVC stage (``train``) on this worker and publish its outputs through the DVC remote.

    Args:
        lock: the caller's ``dvc.lock`` text (written here before pulling); None keeps the checkout's own.
        stage: the DVC stage to run.
        workdir: where the stage runs (``flows.stages.prepare_workdir``; prefect.yaml:
            ``~/.cache/readl/train-on-gpu``, a persistent checkout, so a killed run resumes from
            ``models/checkpoints`` when run again).
        pull: ``dvc pull --allow-missing`` first (the stage's inputs).
        push: ``dvc push --run-cache`` after (required for the caller to restore the stage).
        dvc_remote: the shared DVC remote, made the default here (None: ``$READL_DVC_REMOTE`` or the checkout's).

    Returns:
        ``{"stage", "status", "seconds", "workdir"}``.
    """
    log = get_run_logger()
    wd = prepare_workdir(workdir, dvc_remote, log)
    t0 = time.monotonic()
    if lock is not None:
        (wd / "dvc.lock").write_text(lock)
    if pull:
        dvc(["pull", "--allow-missing"], str(wd))
    result = repro(stage, str(wd))
    if push:
        dvc(["push", "--run-cache"], str(wd))
    log.info("stage %s %s in %s (%.0f s)", stage, result["status"], wd, time.monotonic() - t0)
    return {**result, "workdir": str(wd)}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Run the train stage here and push it to the DVC remote.")
    ap.add_argument("--stage", default="train")
    ap.add_argument("--workdir")
    ap.add_argument("--no-push", action="store_true")
    a = ap.parse_args()
    print(train_on_gpu(stage=a.stage, workdir=a.workdir, push=not a.no_push))
