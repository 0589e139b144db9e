"""DVC from Prefect: run ``dvc`` in a checkout as Prefect tasks, retrying what is transient.

Every pipeline stage runs as ``dvc repro -s <stage>`` so caching, params tracking and lineage stay in DVC
(``dvc.yaml`` / ``dvc.lock``). Workers are stateless and exchange data only through the DVC remote:

- the caller pushes what it produced (``dvc push --run-cache``: outputs + DVC's run cache);
- the GPU worker gets the caller's ``dvc.lock`` as a flow parameter, ``dvc pull``s the stage's inputs, runs
  the stage, and pushes its outputs and the run-cache entry;
- the caller then runs ``dvc repro -s train --pull``: DVC finds the stage in the run cache (same command,
  deps and params) and checks the outputs out from the remote instead of training again. Should DVC start
  the command instead (run cache not pushed, a different remote, an uncached output), the flow stops it at
  once and fails with an explanation rather than train on the CPU worker.

Transient (retried by the tasks, jittered backoff): DVC remote / network errors (connection refused or
reset, timeouts, HTTP 5xx, S3 throttling), a DVC lock held by another process, an unreachable MLflow server
or a locked sqlite database seen in a stage's output. Deterministic failures (a stage that raises, a missing
file, bad params) fail at once: retrying cannot fix them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from prefect import task
from prefect.logging import get_run_logger

__all__ = [
    "StageError",
    "TransientStageError",
    "RETRIES",
    "RETRY_DELAYS",
    "retry_if_transient",
    "dvc_bin",
    "workdir_of",
    "code_checkout",
    "sync_checkout",
    "prepare_workdir",
    "run_dvc",
    "dvc",
    "repro",
]

RETRIES = 3
RETRY_DELAYS = [10, 60, 300]  # seconds (x0.5-1.5 jitter): a remote or a server that hiccups / restarts
TRANSIENT_PATTERNS = re.compile(
    r"Unable to acquire lock|Connection refused|Connection reset|Connection aborted|RemoteDisconnected|timed out|"
    r"Read timeout|ConnectTimeout|Temporary failure in name resolution|EndpointConnectionError|"
    r"\b50[0234]\b|Service Unavailable|SlowDown|Throttl|TrackingUnavailableError|database is locked|"
    r"too many 50\d error responses",
    re.IGNORECASE,
)


class StageError(RuntimeError):
    """A DVC command failed for a reason that retrying does not fix (the message has the output's tail)."""


class TransientStageError(StageError):
    """A DVC command failed for a reason worth retrying (remote, network, lock, tracking server)."""


def retry_if_transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry only :class:`TransientStageError` (and connection errors)."""
    exc = state.data if isinstance(getattr(state, "data", None), BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:  # noqa: BLE001 (no result to inspect: do not retry)
            return False
    return isinstance(exc, (TransientStageError, ConnectionError, TimeoutError))


def dvc_bin() -> str:
    """The ``dvc`` executable next to this Python (the venv), else on PATH."""
    beside = Path(sys.executable).with_name("dvc")
    return str(beside) if beside.is_file() else (shutil.which("dvc") or "dvc")


def workdir_of(workdir: str | None) -> Path:
    """The checkout to work in: ``workdir``, else ``$READL_WORKDIR``, else the current directory.

    Raises:
        StageError: it has no ``dvc.yaml``.
    """
    wd = Path(workdir or os.environ.get("READL_WORKDIR") or ".").resolve()
    if not (wd / "dvc.yaml").is_file():
        raise StageError(f"{wd}: no dvc.yaml; run the flow in a checkout of the readl repository (or pass workdir)")
    return wd


def code_checkout() -> Path:
    """The checkout this flow's code was loaded from (a worker's clone: prefect.yaml's pull step)."""
    return Path(__file__).resolve().parents[1]


def _git(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StageError(f"`git {' '.join(args)}` in {cwd} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc.stdout.strip()


def sync_checkout(workdir: Path, source: Path) -> str:
    """Make ``workdir`` a git checkout of ``source``'s HEAD commit, keeping everything git does not track.

    A process worker clones the repository into a temporary folder that it deletes after the run; the stages run
    in ``workdir`` instead, which persists, so ``models/checkpoints`` (a training run killed part-way resumes),
    ``.dvc/cache`` and ``.dvc/config.local`` survive from one run to the next. The commit is fetched from the
    clone itself (no second clone, no credentials); tracked files are reset to it (``checkout --force``), files git
    ignores or does not track stay.

    Returns:
        The commit checked out (40 hex digits).

    Raises:
        StageError: ``source`` is not a git checkout, or git failed.
    """
    if not (source / ".git").exists():
        raise StageError(
            f"{source} is not a git checkout, so it cannot be copied into the work directory {workdir}; "
            f"run the flow with workdir=None (stages run in the checkout itself)"
        )
    commit = _git(["rev-parse", "HEAD"], source)
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / ".git").exists():
        _git(["init", "-q"], workdir)
    _git(["fetch", "-q", "--no-tags", str(source), "HEAD"], workdir)
    _git(["checkout", "-q", "--force", "--detach", "FETCH_HEAD"], workdir)
    return commit


def prepare_workdir(workdir: str | None, dvc_remote: str | None = None, log=None) -> Path:
    """The folder the stages run in, ready: see :func:`workdir_of`, :func:`sync_checkout`.

    Args:
        workdir: None = ``$READL_WORKDIR`` or the current directory, used as it is. A folder other than this
            code's checkout (``~`` expanded; prefect.yaml's deployments use ``~/.cache/readl/<deployment>``) is
            made a persistent checkout of this code's commit first.
        dvc_remote: make this DVC remote the checkout's default (``dvc remote default --local``); None =
            ``$READL_DVC_REMOTE``, else leave the checkout's default. A worker's clone has no
            ``.dvc/config.local``: its endpoint and keys come from the environment (``AWS_ENDPOINT_URL``,
            ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``).

    Raises:
        StageError: no dvc.yaml there, git failed, or the remote is not defined in ``.dvc/config``.
    """
    if workdir is not None:
        wd, source = Path(workdir).expanduser().resolve(), code_checkout()
        if wd != source:
            commit = sync_checkout(wd, source)
            if log is not None:
                log.info("work directory %s at commit %s (persistent: checkpoints and DVC cache kept)", wd, commit[:12])
    wd = workdir_of(None if workdir is None else str(Path(workdir).expanduser()))
    remote = dvc_remote or os.environ.get("READL_DVC_REMOTE")
    if remote:
        run_dvc(["remote", "default", "--local", remote], wd)
        if log is not None:
            log.info("DVC default remote: %s", remote)
    return wd


def _env() -> dict[str, str]:
    # stage commands (`readl ...`) and dvc come from this interpreter's environment
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


def run_dvc(args: list[str], workdir: Path, stop_on: str | None = None, log=None) -> str:
    """Run ``dvc ARGS`` in ``workdir``, streaming its output to ``log`` (a logger).

    Args:
        stop_on: if a line of output starts with this text, the command is stopped (its process group
            terminated) and :class:`StageError` raised (used to forbid running a stage on this worker).

    Returns:
        The combined output.

    Raises:
        TransientStageError / StageError: non-zero exit (see the module docstring for which is which).
    """
    cmd = [dvc_bin(), *args]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=workdir,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    stopped = False
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if log is not None:
            log.info("%s", line.rstrip())
        if stop_on and line.startswith(stop_on):
            stopped = True
            os.killpg(proc.pid, signal.SIGTERM)
            break
    try:
        proc.wait(timeout=60 if stopped else None)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    out = "".join(lines)
    tail = out[-4000:]
    where = f"`dvc {' '.join(args)}` in {workdir}"
    if stopped:
        raise StageError(f"{where} started {stop_on!r} on this worker and was stopped:\n{tail}")
    if proc.returncode != 0:
        kind = TransientStageError if TRANSIENT_PATTERNS.search(out) else StageError
        raise kind(f"{where} failed (exit {proc.returncode}) after {time.monotonic() - t0:.0f} s:\n{tail}")
    return out


@task(
    name="dvc",
    task_run_name="dvc {args}",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAYS,
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_transient,
)
def dvc(args: list[str], workdir: str) -> str:
    """``dvc ARGS`` in ``workdir`` as a task (pull, push ...); retried on transient failures."""
    return run_dvc(list(args), Path(workdir), log=get_run_logger())


@task(
    name="repro",
    task_run_name="dvc repro {stage}",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAYS,
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_transient,
)
def repro(stage: str, workdir: str, pull: bool = False, restore_only: bool = False) -> dict:
    """``dvc repro -s STAGE`` (``--pull``: fetch missing data and the remote's run cache first).

    Args:
        restore_only: the stage must come from DVC's run cache (it ran on another worker); if DVC starts its
            command instead, it is stopped and :class:`StageError` explains why.

    Returns:
        ``{"stage", "status": "ran" | "restored" | "unchanged", "seconds"}``.
    """
    t0 = time.monotonic()
    args = ["repro", "-s", stage] + (["--pull"] if pull or restore_only else [])
    try:
        out = run_dvc(
            args, Path(workdir), stop_on=f"Running stage '{stage}'" if restore_only else None, log=get_run_logger()
        )
    except StageError as exc:
        if not restore_only or isinstance(exc, TransientStageError):
            raise
        raise StageError(
            f"stage {stage!r} ran on another worker but DVC could not restore it here from the run cache, so it "
            f"would run on this worker (stopped). Check that the other worker pushes with `dvc push --run-cache` "
            f"to this checkout's default remote, that both use the same commit, params and inputs, and that all "
            f"of the stage's outputs are cached (no `cache: false`).\n{exc}"
        ) from None
    status = "restored" if "skipping run" in out else "unchanged" if "didn't change" in out else "ran"
    return {"stage": stage, "status": status, "seconds": round(time.monotonic() - t0, 1)}
