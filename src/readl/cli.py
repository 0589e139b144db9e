"""The ``readl`` command: one sub-command per pipeline stage (each runs :mod:`readl.stages`), plus predict.

This module only parses arguments, prints results and maps errors to exit codes; each stage's code is in
``readl/stages/<stage>.py`` (one ``run`` entry each).

Exit codes (every command):

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

Errors print one ``error:`` line naming the file and the fix, without a traceback; the global ``--debug``
option (``readl --debug evaluate``) prints the traceback too.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from readl.redact import RedactingFilter, redact

app = typer.Typer(help="readl: reasoning-driven industrial anomaly detection (ReAL + CGRO).", no_args_is_help=True)


def _console(stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr). Outside a terminal (a pipe, a Prefect worker, CI logs) it is 200
    columns wide instead of rich's 80, so summary tables and log lines are not cut; ``COLUMNS`` still wins. Emoji
    codes are off (a file ``a:x:b.png`` is printed as it is, not as ``a❌b.png``); markup in names is escaped where
    they are printed."""
    stream = sys.stderr if stderr else sys.stdout
    wide = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=200 if wide else None, emoji=False)


console = _console(stderr=True)
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
_options = {"debug": False}


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Print the traceback of an error.")] = False,
) -> None:
    _options["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    for handler in logging.getLogger().handlers:  # no password of a URL in any log line (readl.redact)
        handler.addFilter(RedactingFilter())
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # One progress bar per long step: no per-file "Loading weights" bars, no deprecation noise from deps.
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


def _handled(command):
    """Run a command; an exception becomes one ``error:`` line (traceback only with ``--debug``) and its exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - every error ends as a message and an exit code
            if _options["debug"]:
                console.print(redact("".join(traceback.format_exception(exc))), markup=False, highlight=False,
                              soft_wrap=True)  # fmt: skip
            known = isinstance(exc, (ValueError, OSError, RuntimeError, KeyError))
            message = redact(str(exc) if known else f"{type(exc).__name__}: {exc}")
            if not known and not _options["debug"]:
                message += " (run `readl --debug ...` for the traceback)"
            console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True, highlight=False)
            raise typer.Exit(exit_code(exc)) from None

    return wrapper


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )


@contextlib.contextmanager
def _bar(name: str, total: int):
    """A progress bar of ``total`` items; yields ``advance(n)``."""
    with _progress() as bar:
        task = bar.add_task(name, total=total)
        yield lambda n: bar.advance(task, n)


# options that several commands share (each command keeps its own default)
Manifest = Annotated[Path, typer.Option(help="Curated training manifest.")]
TrainDevice = Annotated[str | None, typer.Option(help="cpu, cuda ... (default: this process's accelerate device).")]
Adapter = Annotated[Path | None, typer.Option(help="LoRA adapter folder (missing: an error, run `readl train`); "
                                               "'none' = the base model alone.")]
Cache = Annotated[Path, typer.Option(help="Per-image prediction cache.")]
BaseModel = Annotated[str | None, typer.Option(help="Base model (default: models/warmup after the cold start, else "
                                                     "params model.base).")]
ParamsFile = Annotated[Path | None, typer.Option(help="params.yaml (default ./params.yaml; built-in defaults, with a "
                                                  "warning, when it is absent; a given file must exist).")]
ModelName = Annotated[str | None, typer.Option(help="Registered model name (default register.model_name).")]


def _params_path(params: Path | None) -> Path:
    """params.yaml: an explicit ``--params`` must exist (exit 2); the default ``./params.yaml`` may be absent (the
    built-in defaults, with a warning)."""
    if params is not None and not params.is_file():
        raise ValueError(f"--params {params}: file not found; pass an existing params.yaml, or omit --params for "
                         f"./params.yaml (built-in defaults when it is absent)")  # fmt: skip
    path = params or Path("params.yaml")
    if not path.is_file():
        logging.getLogger("readl.cli").warning("no ./params.yaml here: running with the built-in defaults")
    return path


def _params(params: Path | None):
    """The validated params of ``--params`` (:func:`_params_path`)."""
    from readl.config import load_params

    return load_params(_params_path(params))


@app.command()
@_handled
def predict(
    images: Annotated[list[Path], typer.Argument(metavar="IMAGE", help="Image files, or folders of them (read "
                                                 "recursively).")],
    model: Annotated[str | None, typer.Option(help="Base model: 'tiny', a local folder or an HF id; or a registered "
                                              "model, e.g. models:/readl@champion (base + adapter + thresholds + params). "
                                              "Default: the pipeline's model: models/warmup (after the cold start, else "
                                              "params model.base) + models/adapter.")] = None,
    adapter: Annotated[Path | None, typer.Option(help="LoRA adapter folder; default models/adapter when it exists and "
                                                 "--model is not given; 'none' = the base model alone.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder for <stem>.json and <stem>.png.")] = Path("predictions"),
    thresholds: Annotated[Path | None, typer.Option(help="Calibrated thresholds.json (tau_t, tau_i, decision); default "
                                                    "models/thresholds.json with the project's model; 'none' = "
                                                    "per-image rules.")] = None,
    params: Annotated[Path | None, typer.Option(help="params.yaml (model, localization; default ./params.yaml, "
                                                "built-in defaults when absent).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, help="Override model.max_new_tokens.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: auto).")] = None,
    annotate: Annotated[bool, typer.Option("--annotate/--no-annotate", help="Caption (answer, score, decision) and "
                                           "colour bar on the overlay PNG; off = the bare overlay at the image's size.")] = True,
) -> None:
    """Reasoning, Yes/No answer, P(Yes) score, OK/NG decision and ReAL anomaly map for each image."""
    from readl.predictor import expand_inputs, outcomes_table
    from readl.stages.predict import run

    def started(provenance: dict, used: Path | None) -> None:
        console.print(f"predict: model {provenance['base']}, adapter {provenance['adapter'] or 'none'}"
                      f"{', ' + provenance['registered'] if provenance['registered'] else ''}; thresholds "
                      f"{used or 'per-image rules'}", soft_wrap=True, highlight=False)  # fmt: skip

    images = expand_inputs(images)  # folders -> their image files; a missing input is an error before the model loads
    with _bar("predict", len(images)) as advance:
        outcomes = run(_params(params), images, out, model=model, adapter=adapter, thresholds=thresholds,
                       max_new_tokens=max_new_tokens, device=device, annotate=annotate, progress=advance,
                       on_start=started).outcomes  # fmt: skip
    failed = [o for o in outcomes if o.error]
    if len(failed) < len(outcomes):
        _console().print(outcomes_table(outcomes))
    for o in failed:
        console.print(f"[red]error:[/red] {escape(o.error)}", soft_wrap=True, highlight=False)
    if failed:
        rest = "; the others have results" if len(failed) < len(outcomes) else ""
        console.print(f"[red]{len(failed)} of {len(outcomes)} file(s) could not be read{rest}.", highlight=False)
        raise typer.Exit(1)


@app.command()
@_handled
def preset(
    name: Annotated[str, typer.Argument(help="Preset: paper (readl.presets.PRESETS).")],
    params: Annotated[Path, typer.Option(help="params.yaml to write (created when absent).")] = Path("params.yaml"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the overrides; write nothing.")] = False,
) -> None:
    """Write a named set of overrides into params.yaml (e.g. `readl preset paper`: the paper's recipe, warm-up off),
    printing each key, its value and its source (paper or ours). Comments are dropped, as `dvc exp run -S` does."""
    import yaml
    from rich.table import Table

    from readl.atomic import write_text
    from readl.presets import PRESETS, apply_preset

    raw = yaml.safe_load(params.read_text()) if params.is_file() else {}
    new, _ = apply_preset(raw or {}, name)  # validated before anything is written
    table = Table("key", "value", "source", title=f"preset {name}")
    for key, (value, source) in PRESETS[name].items():
        shown = value if not isinstance(value, list) or len(str(value)) < 60 else f"[{len(value)} entries]"
        table.add_row(key, escape(str(shown)), escape(source))
    _console().print(table)
    if not dry_run:
        write_text(params, yaml.safe_dump(new, sort_keys=False, width=120))
        console.print(f"{params}: preset {name} written (`git diff {params}` shows it; `git checkout {params}` undoes it)")


@app.command()
@_handled
def warmup(
    params: ParamsFile = None,
    manifest: Manifest = Path("data/curated/train.parquet"),
    output: Annotated[Path, typer.Option(help="Folder for warmup/, warmup_run.json, warmup_checkpoints/.")] = Path("models"),
    device: TrainDevice = None,
) -> None:
    """Supervised cold start (SFT on the answer format) before CGRO; resumes its last checkpoint by itself."""
    from readl.stages.warmup import run

    record = run(_params(params), manifest=manifest, output_dir=output, device=device)
    if record:
        done = f"steps: {record['global_step']}  MLflow run: {record['run_id']}" if record["enabled"] else "disabled"
        console.print(f"warm-started model: {record['model']}  {done}")


@app.command()
@_handled
def train(
    params: ParamsFile = None,
    manifest: Manifest = Path("data/curated/train.parquet"),
    output: Annotated[Path, typer.Option(help="Folder for adapter/, train_run.json, checkpoints/.")] = Path("models"),
    device: TrainDevice = None,
) -> None:
    """CGRO fine-tuning (GRPO + LoRA + consistency reward); resumes the last complete checkpoint by itself."""
    from readl.stages.train import run

    record = run(_params(params), manifest=manifest, output_dir=output, device=device)
    if record:
        console.print(f"adapter: {record['adapter']}  MLflow run: {record['run_id']}  steps: {record['global_step']}")


@app.command()
@_handled
def curate(
    params: ParamsFile = None,
    raw: Annotated[Path, typer.Option(help="Folder holding the sources' root folders.")] = Path("data/raw"),
    out: Annotated[Path, typer.Option(help="Curated folder, replaced atomically.")] = Path("data/curated"),
) -> None:
    """Build the curated train / calib / eval manifests and 420x420 images (the first DVC stage)."""
    from readl.stages.curate import run

    cfg = _params(params)
    with _progress() as bar:
        task = bar.add_task("curate", total=None)
        result = run(cfg, raw, out, progress=lambda n, total: bar.update(task, advance=n, total=total))
    typer.echo(result.one_line())


@app.command()
@_handled
def fetch(
    source: Annotated[str, typer.Argument(help="Benchmark: visa, mvtec_ad, mvtec_loco, sdd, btad, bsdata, ... (readl.data.fetch.SOURCES).")],
    dest: Annotated[Path, typer.Option(help="Raw-data folder; the benchmark lands in DEST/SOURCE.")] = Path("data/raw"),
    url: Annotated[str | None, typer.Option(help="Archive URL (https:// or s3://) instead of the known one.")] = None,
    sha256: Annotated[str | None, typer.Option(help="Expected SHA-256 of the archive.")] = None,
    endpoint_url: Annotated[str | None, typer.Option(help="S3 endpoint (default $READL_S3_ENDPOINT_URL / $AWS_ENDPOINT_URL).")] = None,
    unsigned: Annotated[bool | None, typer.Option("--unsigned/--signed", help="Anonymous S3 requests (default: per source).")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing DEST/SOURCE.")] = False,
    keep_archive: Annotated[bool, typer.Option(help="Keep the archive in DEST/.fetch after extracting.")] = False,
) -> None:
    """Download a public benchmark archive (resumable, checksummed) and extract it into DEST/SOURCE."""
    from rich.progress import DownloadColumn, TransferSpeedColumn

    from readl.data.fetch import ManualDownloadRequired
    from readl.data.fetch import fetch as run_fetch

    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=console)
    tasks: list = []

    def progress(done: int, total: int | None) -> None:  # the bar appears once bytes flow
        if not tasks:
            bar.start()
            tasks.append(bar.add_task(f"fetch {source}", total=None))
        bar.update(tasks[0], completed=done, total=total)

    try:
        result = run_fetch(
            source, dest, url=url, sha256=sha256, endpoint_url=endpoint_url, unsigned=unsigned, force=force,
            keep_archive=keep_archive, progress=progress,
        )  # fmt: skip
    except ManualDownloadRequired as exc:  # instructions, not an error line
        console.print(escape(str(exc)), soft_wrap=True, highlight=False)
        raise typer.Exit(exit_code(exc)) from None
    finally:
        bar.stop()
    check = "verified" if result.verified else "no known checksum: pass it as --sha256 to pin it"
    typer.echo(f"fetch: {source} -> {result.path} (sha256 {result.sha256}, {check})")


@app.command()
@_handled
def calibrate(
    manifest: Annotated[Path, typer.Option(help="Calibration manifest.")] = Path("data/curated/calib.parquet"),
    adapter: Adapter = Path("models/adapter"),
    out: Annotated[Path, typer.Option(help="thresholds.json to write (plot beside it).")] = Path("models/thresholds.json"),
    cache: Cache = Path("reports/predictions/calib"),
    model: BaseModel = None,
    params: ParamsFile = None,
) -> None:
    """Find tau_t (median) and tau_i (maximum curvature) (supplement Table 5) and the OK/NG decision threshold on
    P(Yes) (params calibrate:) on the calibration split."""
    from readl.data.manifest import read_manifest
    from readl.stages.calibrate import run

    cfg = _params(params)
    with _bar("calibrate", len(read_manifest(manifest))) as advance:
        run(cfg, manifest, adapter, out, cache, base=model, progress=advance)


@app.command()
@_handled
def evaluate(
    manifest: Annotated[Path, typer.Option(help="Evaluation manifest (with masks).")] = Path("data/curated/eval.parquet"),
    adapter: Adapter = Path("models/adapter"),
    thresholds: Annotated[Path | None, typer.Option(help="Calibrated thresholds.json; 'none' = the per-image rules "
                                                    "and the decision threshold 0.5.")] = Path("models/thresholds.json"),
    metrics: Annotated[Path, typer.Option(help="metrics.json to write.")] = Path("metrics.json"),
    plots: Annotated[Path, typer.Option(help="Folder for ROC/PR curve JSON (dvc plots).")] = Path("plots"),
    reports: Annotated[Path, typer.Option(help="Folder for tables and the heat-map gallery.")] = Path("reports"),
    cache: Cache = Path("reports/predictions/eval"),
    model: BaseModel = None,
    params: ParamsFile = None,
    calib_manifest: Annotated[Path, typer.Option(help="Calibration split: the model baselines' own tau_t / tau_i "
                                                 "(evaluate.baseline_thresholds).")] = Path("data/curated/calib.parquet"),
) -> None:
    """Image / pixel / reasoning metrics per dataset and category, curves, tables and a heat-map gallery."""
    from readl.data.manifest import read_manifest
    from readl.stages.evaluate import run

    cfg = _params(params)
    with _bar("evaluate", len(read_manifest(manifest))) as advance:
        thresholds = None if str(thresholds).lower() == "none" else thresholds  # the per-image rules
        result = run(cfg, manifest, adapter, thresholds, metrics, plots, reports, cache, base=model,
                     progress=advance, calib_manifest=calib_manifest)  # fmt: skip
    if not result:  # a non-main process of `accelerate launch --num_processes N -m readl.cli evaluate`
        return
    from readl.evaluation.report import metrics_table

    _console().print(metrics_table(result))
    if result.get("baselines") or result.get("bootstrap"):
        from readl.evaluation.comparison import comparison_table

        _console().print(comparison_table(result))


@app.command()
@_handled
def register(
    params: ParamsFile = None,
    adapter: Annotated[Path, typer.Option(help="LoRA adapter (absent: the base model alone).")] = Path("models/adapter"),
    thresholds: Annotated[Path, typer.Option(help="thresholds.json from `readl calibrate`.")] = Path("models/thresholds.json"),
    metrics: Annotated[Path, typer.Option(help="metrics.json from `readl evaluate` (version tags).")] = Path("metrics.json"),
    train_run: Annotated[Path, typer.Option(help="train_run.json: the MLflow run to log the model into.")] = Path("models/train_run.json"),
    out: Annotated[Path, typer.Option(help="Record for DVC: name, version, run_id, aliases.")] = Path("models/registered.json"),
    name: ModelName = None,
    promote_: Annotated[bool, typer.Option("--promote/--no-promote", help="Run the promotion gate after registering "
                                           "(a refusal is reported, exit status 0).")] = False,
) -> None:
    """Log the model (pyfunc) into the training run, register it, tag it, alias it 'challenger' (idempotent)."""
    from readl.registry.gate import gate_table
    from readl.stages.register import run

    result, decision = run(_params_path(params), adapter, thresholds, metrics, train_run, out, name=name,
                           promote=promote_)  # fmt: skip
    typer.echo(f"register: {result.name} version {result.version} (run {result.run_id}){' reused' if result.reused else ''}; "
               f"aliases: {', '.join(result.aliases)}")  # fmt: skip
    if decision is not None:
        if decision.checks:
            _console().print(gate_table(decision))
        typer.echo(f"promote: {decision.reason}")
    if metrics.is_file():  # the last stage of `dvc repro`: end with the evaluation numbers
        from readl.evaluation.report import metrics_table

        _console().print(metrics_table(json.loads(metrics.read_text()), title=f"{result.name} v{result.version}"))


@app.command()
@_handled
def promote(
    params: ParamsFile = None,
    name: ModelName = None,
    dry_run: Annotated[bool, typer.Option(help="Decide, but do not move 'champion'.")] = False,
) -> None:
    """Move 'champion' to 'challenger' if the gate passes; exit 1 (with the table of why) if it refuses."""
    from readl.registry.gate import gate_table
    from readl.registry.gate import promote as run_promote

    decision = run_promote(_params(params).register, name=name, dry_run=dry_run)
    if decision.checks:
        _console().print(gate_table(decision))
    verdict = "[green]promoted[/green]" if decision.promoted else "[red]refused[/red]"
    _console().print(f"{verdict}{' (dry run)' if dry_run else ''}: {escape(decision.reason)}; champion is v{decision.champion_after}")
    if not decision.promoted:
        raise typer.Exit(1)


@app.command()
@_handled
def serve(
    model_uri: Annotated[str | None, typer.Option("--model-uri", "-m", help="Registered model (default "
                                                  "models:/<register.model_name>@champion).")] = None,
    port: Annotated[int, typer.Option("--port", "-p", help="Port.")] = 5001,
    host: Annotated[str, typer.Option("--host", "-h", help="Address to listen on.")] = "127.0.0.1",
    workers: Annotated[int, typer.Option(help="Server worker processes (each loads the model).")] = 1,
    params: Annotated[Path | None, typer.Option(help="params.yaml (register.model_name; default ./params.yaml).")] = None,
) -> None:
    """Serve a registered model over HTTP (`mlflow models serve` on the project's tracking store).

    The store is the one `readl register` wrote: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db here (made
    absolute for the server). POST /invocations {"dataframe_split": {"columns": ["image"], "data": [["<base64>"]]}}.
    """
    from readl.registry.serve import serve_command

    model_uri = model_uri or f"models:/{_params(params).register.model_name}@champion"
    argv, env = serve_command(model_uri, host=host, port=port, workers=workers)
    console.print(f"serve: {model_uri} from {env['MLFLOW_TRACKING_URI']} on http://{host}:{port}/invocations",
                  soft_wrap=True, highlight=False)  # fmt: skip
    os.execve(argv[0], argv, env)  # the server replaces this process


if __name__ == "__main__":
    app()
