"""The console side of every stage: logging, progress bars, error lines and exit codes.

Shared by the ``readl`` command (:mod:`readl.cli`) and by ``python -m readl.stages.<stage>``, the command dvc.yaml
runs: a stage never imports the CLI, so editing a command's help text invalidates no DVC stage.

Exit codes (every command and stage):

=====  ==========================================================================================================
0      success (``readl register --promote`` also when the gate refuses: the refusal is reported)
1      runtime failure: something the command needs is absent or unavailable (an upstream stage's output, a raw
       data folder, a model that cannot be loaded, the MLflow registry or artifact store, a download), or it
       failed while running; ``readl predict`` when some input files could not be read (the others have
       results); ``readl promote`` when the gate refuses
2      bad input or usage: invalid options or arguments, an explicit ``--params`` that does not exist, an invalid
       params.yaml, an input file with invalid content (manifest columns, thresholds.json, metrics.json, an
       adapter without weights), an unknown ``readl fetch`` source, or a step the user must do by hand
       (``readl fetch`` of a benchmark without a public download)
=====  ==========================================================================================================

An error prints one ``error:`` line naming the file and the fix, without a traceback; ``--debug`` prints the
traceback too.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from readl.redact import RedactingFilter, redact

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
options = {"debug": False}  # set once per process by setup_logging


def make_console(stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr). Outside a terminal (a pipe, a Prefect worker, CI logs) it is 200
    columns wide instead of rich's 80, so summary tables and log lines are not cut; ``COLUMNS`` still wins. Emoji
    codes are off (a file ``a:x:b.png`` is printed as it is, not as ``a❌b.png``); markup in names is escaped where
    they are printed."""
    stream = sys.stderr if stderr else sys.stdout
    wide = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=200 if wide else None, emoji=False)


console = make_console(stderr=True)


def setup_logging(verbose: bool = False, debug: bool = False) -> None:
    """One rich log line per step on stderr (DEBUG with ``verbose``), no URL password in any line
    (:mod:`readl.redact`), no per-file download bars or deprecation noise from dependencies."""
    options["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def exit_code(exc: BaseException) -> int:
    """The documented exit code of an error (module docstring): an ``exit_code`` attribute of the exception
    class, else 2 for a ``ValueError`` (bad input: pydantic's ValidationError, BadImageError, ManifestError,
    LayoutError ... are ValueErrors), else 1."""
    code = getattr(exc, "exit_code", None)
    if isinstance(code, int):
        return code
    return EXIT_USAGE if isinstance(exc, ValueError) else EXIT_FAILURE


def report_error(exc: BaseException) -> int:
    """Print ``exc`` as one ``error:`` line (and its traceback with ``--debug``); return its exit code."""
    if options["debug"]:
        text = redact("".join(traceback.format_exception(exc)))
        console.print(text, markup=False, highlight=False, soft_wrap=True)
    known = isinstance(exc, (ValueError, OSError, RuntimeError, KeyError))
    message = redact(str(exc) if known else f"{type(exc).__name__}: {exc}")
    if not known and not options["debug"]:
        message += " (run with --debug for the traceback)"
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True, highlight=False)
    return exit_code(exc)


def handled(command: Callable) -> Callable:
    """Run ``command``; an exception becomes :func:`report_error`'s line and ``SystemExit`` with its exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - every error ends as a message and an exit code
            if type(exc).__module__.startswith("click"):  # typer.Exit / Abort: already a decision
                raise
            raise SystemExit(report_error(exc)) from None

    return wrapper


def progress() -> Progress:
    """A rich progress bar on the stderr console: description, bar, done/total, elapsed."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )


@contextlib.contextmanager
def bar(name: str, total: int):
    """A progress bar of ``total`` items; yields ``advance(n)``."""
    with progress() as shown:
        task = shown.add_task(name, total=total)
        yield lambda n: shown.advance(task, n)


def params_path(params: Path | None) -> Path:
    """params.yaml: an explicit ``--params`` must exist (``ValueError``, exit 2); the default ``./params.yaml`` may
    be absent (the built-in defaults, with a warning)."""
    if params is not None and not Path(params).is_file():
        raise ValueError(
            f"--params {params}: file not found; pass an existing params.yaml, or omit --params for "
            f"./params.yaml (built-in defaults when it is absent)"
        )
    path = Path(params) if params is not None else Path("params.yaml")
    if not path.is_file():
        logging.getLogger("readl").warning("no ./params.yaml here: running with the built-in defaults")
    return path


def load_params_file(params: Path | None):
    """The validated :class:`readl.config.Params` of ``--params`` (:func:`params_path`)."""
    from readl.config import load_params

    return load_params(params_path(params))


def script(main: Callable, flags: tuple[str, ...] = ()) -> None:
    """``python -m readl.stages.<stage> [--params FILE] [--debug] [-v] [--FLAG ...]``: the stage's ``main`` with its
    default paths (dvc.yaml's commands); each of ``flags`` is a boolean keyword of ``main``. Exits with the stage's
    exit code (module docstring)."""
    spec = main.__globals__.get("__spec__")  # run as ``python -m``: the module's own name, not "__main__"
    prog = f"python -m {spec.name if spec else main.__module__}"
    ap = argparse.ArgumentParser(prog=prog, description=(main.__doc__ or "").split("\n")[0])
    ap.add_argument("--params", type=Path, default=None, help="params.yaml (default ./params.yaml)")
    ap.add_argument("--debug", action="store_true", help="print the traceback of an error")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    for flag in flags:
        ap.add_argument(f"--{flag}", action="store_true")
    args = ap.parse_args()
    setup_logging(args.verbose, args.debug)
    handled(main)(params=args.params, **{flag: getattr(args, flag) for flag in flags})
