"""The ``readl`` command: one sub-command per pipeline stage (each calls ``main`` of its :mod:`readl.stages`
module), plus predict, preset, fetch, promote and serve.

This module only parses arguments; exit codes, error lines and logging are :mod:`readl.stages.console`'s (its
docstring lists the exit codes). dvc.yaml runs ``python -m readl.stages.<stage>``, not this module, so an edit here
invalidates no stage.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn

from readl.paths import DEFAULT_PATHS
from readl.stages.console import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    bar,
    console,
    exit_code,
    handled,
    load_params_file,
    make_console,
    setup_logging,
)

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "app", "exit_code"]

app = typer.Typer(help="readl: reasoning-driven industrial anomaly detection (ReAL + CGRO).", no_args_is_help=True)


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Print the traceback of an error.")] = False,
) -> None:
    setup_logging(verbose, debug)


# options that several commands share (each command keeps its own default)
Manifest = Annotated[Path, typer.Option(help="Curated training manifest.")]
TrainDevice = Annotated[str | None, typer.Option(help="cpu, cuda ... (default: this process's accelerate device).")]
Adapter = Annotated[
    Path | None,
    typer.Option(help="LoRA adapter folder (missing: an error, run `readl train`); 'none' = the base model alone."),
]
Cache = Annotated[Path, typer.Option(help="Per-image prediction cache.")]
BaseModel = Annotated[
    str | None, typer.Option(help="Base model (default: models/warmup after the cold start, else params model.base).")
]
ParamsFile = Annotated[
    Path | None,
    typer.Option(
        help="params.yaml (default ./params.yaml; built-in defaults, with a "
        "warning, when it is absent; a given file must exist)."
    ),
]
ModelName = Annotated[str | None, typer.Option(help="Registered model name (default register.model_name).")]


@app.command()
@handled
def predict(
    images: Annotated[
        list[Path], typer.Argument(metavar="IMAGE", help="Image files, or folders of them (read recursively).")
    ],
    model: Annotated[
        str | None,
        typer.Option(
            help="Base model: 'tiny', a local folder or an HF id; or a registered "
            "model, e.g. models:/readl@champion (base + adapter + thresholds + params). "
            "Default: the pipeline's model: models/warmup (after the cold start, else "
            "params model.base) + models/adapter."
        ),
    ] = None,
    adapter: Annotated[
        Path | None,
        typer.Option(
            help="LoRA adapter folder; default models/adapter when it exists and "
            "--model is not given; 'none' = the base model alone."
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Output folder for <stem>.json and <stem>.png.")] = Path("predictions"),
    thresholds: Annotated[
        Path | None,
        typer.Option(
            help="Calibrated thresholds.json (tau_t, tau_i, decision); default "
            "models/thresholds.json with the project's model; 'none' = "
            "per-image rules."
        ),
    ] = None,
    params: Annotated[
        Path | None,
        typer.Option(help="params.yaml (model, localization; default ./params.yaml, built-in defaults when absent)."),
    ] = None,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, help="Override model.max_new_tokens.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: auto).")] = None,
    annotate: Annotated[
        bool,
        typer.Option(
            "--annotate/--no-annotate",
            help="Caption (answer, score, decision) and "
            "colour bar on the overlay PNG; off = the bare overlay at the image's size.",
        ),
    ] = True,
) -> None:
    """Reasoning, Yes/No answer, P(Yes) score, OK/NG decision and ReAL anomaly map for each image."""
    from readl.predictor import expand_inputs, outcomes_table
    from readl.stages.predict import run

    def started(provenance: dict, used: Path | None) -> None:
        console.print(
            f"predict: model {provenance['base']}, adapter {provenance['adapter'] or 'none'}"
            f"{', ' + provenance['registered'] if provenance['registered'] else ''}; thresholds "
            f"{used or 'per-image rules'}",
            soft_wrap=True,
            highlight=False,
        )

    images = expand_inputs(images)  # folders -> their image files; a missing input is an error before the model loads
    with bar("predict", len(images)) as advance:
        outcomes = run(
            load_params_file(params),
            images,
            out,
            model=model,
            adapter=adapter,
            thresholds=thresholds,
            max_new_tokens=max_new_tokens,
            device=device,
            annotate=annotate,
            progress=advance,
            on_start=started,
        ).outcomes
    failed = [o for o in outcomes if o.error]
    if len(failed) < len(outcomes):
        make_console().print(outcomes_table(outcomes))
    for o in failed:
        console.print(f"[red]error:[/red] {escape(o.error)}", soft_wrap=True, highlight=False)
    if failed:
        rest = "; the others have results" if len(failed) < len(outcomes) else ""
        console.print(f"[red]{len(failed)} of {len(outcomes)} file(s) could not be read{rest}.", highlight=False)
        raise typer.Exit(1)


@app.command()
@handled
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
    make_console().print(table)
    if not dry_run:
        write_text(params, yaml.safe_dump(new, sort_keys=False, width=120))
        console.print(
            f"{params}: preset {name} written (`git diff {params}` shows it; `git checkout {params}` undoes it)"
        )


@app.command()
@handled
def warmup(
    params: ParamsFile = None,
    manifest: Manifest = Path("data/curated/train.parquet"),
    output: Annotated[Path, typer.Option(help="Folder for warmup/, warmup_run.json, warmup_checkpoints/.")] = (
        DEFAULT_PATHS.models
    ),
    device: TrainDevice = None,
) -> None:
    """Supervised cold start (SFT on the answer format) before CGRO; resumes its last checkpoint by itself."""
    from readl.stages.warmup import main as stage

    stage(params, manifest=manifest, output=output, device=device)


@app.command()
@handled
def train(
    params: ParamsFile = None,
    manifest: Manifest = Path("data/curated/train.parquet"),
    output: Annotated[
        Path, typer.Option(help="Folder for adapter/, train_run.json, checkpoints/.")
    ] = DEFAULT_PATHS.models,
    device: TrainDevice = None,
) -> None:
    """CGRO fine-tuning (GRPO + LoRA + consistency reward); resumes the last complete checkpoint by itself."""
    from readl.stages.train import main as stage

    stage(params, manifest=manifest, output=output, device=device)


@app.command()
@handled
def curate(
    params: ParamsFile = None,
    raw: Annotated[Path, typer.Option(help="Folder holding the sources' root folders.")] = Path("data/raw"),
    out: Annotated[Path, typer.Option(help="Curated folder, replaced atomically.")] = Path("data/curated"),
) -> None:
    """Build the curated train / calib / eval manifests and 420x420 images (the first DVC stage)."""
    from readl.stages.curate import main as stage

    stage(params, raw=raw, out=out)


@app.command()
@handled
def fetch(
    source: Annotated[
        str,
        typer.Argument(
            help="Benchmark: visa, mvtec_ad, mvtec_loco, sdd, btad, bsdata, ... (readl.data.fetch.SOURCES)."
        ),
    ],
    dest: Annotated[Path, typer.Option(help="Raw-data folder; the benchmark lands in DEST/SOURCE.")] = Path("data/raw"),
    url: Annotated[str | None, typer.Option(help="Archive URL (https:// or s3://) instead of the known one.")] = None,
    sha256: Annotated[str | None, typer.Option(help="Expected SHA-256 of the archive.")] = None,
    endpoint_url: Annotated[
        str | None, typer.Option(help="S3 endpoint (default $READL_S3_ENDPOINT_URL / $AWS_ENDPOINT_URL).")
    ] = None,
    unsigned: Annotated[
        bool | None, typer.Option("--unsigned/--signed", help="Anonymous S3 requests (default: per source).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing DEST/SOURCE.")] = False,
    keep_archive: Annotated[bool, typer.Option(help="Keep the archive in DEST/.fetch after extracting.")] = False,
) -> None:
    """Download a public benchmark archive (resumable, checksummed) and extract it into DEST/SOURCE."""
    from rich.progress import DownloadColumn, TransferSpeedColumn

    from readl.data.fetch import ManualDownloadRequired
    from readl.data.fetch import fetch as run_fetch

    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=console
    )
    tasks: list = []

    def progress(done: int, total: int | None) -> None:  # the bar appears once bytes flow
        if not tasks:
            bar.start()
            tasks.append(bar.add_task(f"fetch {source}", total=None))
        bar.update(tasks[0], completed=done, total=total)

    try:
        result = run_fetch(
            source,
            dest,
            url=url,
            sha256=sha256,
            endpoint_url=endpoint_url,
            unsigned=unsigned,
            force=force,
            keep_archive=keep_archive,
            progress=progress,
        )
    except ManualDownloadRequired as exc:  # instructions, not an error line
        console.print(escape(str(exc)), soft_wrap=True, highlight=False)
        raise typer.Exit(exit_code(exc)) from None
    finally:
        bar.stop()
    check = "verified" if result.verified else "no known checksum: pass it as --sha256 to pin it"
    typer.echo(f"fetch: {source} -> {result.path} (sha256 {result.sha256}, {check})")


@app.command()
@handled
def calibrate(
    manifest: Annotated[Path, typer.Option(help="Calibration manifest.")] = Path("data/curated/calib.parquet"),
    adapter: Adapter = DEFAULT_PATHS.adapter,
    out: Annotated[Path, typer.Option(help="thresholds.json to write (plot beside it).")] = DEFAULT_PATHS.thresholds,
    cache: Cache = Path("reports/predictions/calib"),
    model: BaseModel = None,
    params: ParamsFile = None,
) -> None:
    """Find tau_t (median) and tau_i (maximum curvature) (supplement Table 5) and the OK/NG decision threshold on
    P(Yes) (params calibrate:) on the calibration split."""
    from readl.stages.calibrate import main as stage

    stage(params, manifest=manifest, adapter=adapter, out=out, cache=cache, model=model)


@app.command()
@handled
def evaluate(
    manifest: Annotated[Path, typer.Option(help="Evaluation manifest (with masks).")] = Path(
        "data/curated/eval.parquet"
    ),
    adapter: Adapter = DEFAULT_PATHS.adapter,
    thresholds: Annotated[
        Path | None,
        typer.Option(help="Calibrated thresholds.json; 'none' = the per-image rules and the decision threshold 0.5."),
    ] = DEFAULT_PATHS.thresholds,
    metrics: Annotated[Path, typer.Option(help="metrics.json to write.")] = Path("metrics.json"),
    plots: Annotated[Path, typer.Option(help="Folder for ROC/PR curve JSON (dvc plots).")] = Path("plots"),
    reports: Annotated[Path, typer.Option(help="Folder for tables and the heat-map gallery.")] = Path("reports"),
    cache: Cache = Path("reports/predictions/eval"),
    model: BaseModel = None,
    params: ParamsFile = None,
    calib_manifest: Annotated[
        Path,
        typer.Option(help="Calibration split: the model baselines' own tau_t / tau_i (evaluate.baseline_thresholds)."),
    ] = Path("data/curated/calib.parquet"),
) -> None:
    """Image / pixel / reasoning metrics per dataset and category, curves, tables and a heat-map gallery."""
    from readl.stages.evaluate import main as stage

    stage(
        params,
        manifest=manifest,
        adapter=adapter,
        thresholds=thresholds,
        metrics=metrics,
        plots=plots,
        reports=reports,
        cache=cache,
        model=model,
        calib_manifest=calib_manifest,
    )


@app.command()
@handled
def register(
    params: ParamsFile = None,
    adapter: Annotated[Path, typer.Option(help="LoRA adapter (absent: the base model alone).")] = DEFAULT_PATHS.adapter,
    thresholds: Annotated[
        Path, typer.Option(help="thresholds.json from `readl calibrate`.")
    ] = DEFAULT_PATHS.thresholds,
    metrics: Annotated[Path, typer.Option(help="metrics.json from `readl evaluate` (version tags).")] = Path(
        "metrics.json"
    ),
    train_run: Annotated[
        Path, typer.Option(help="train_run.json: the MLflow run to log the model into.")
    ] = DEFAULT_PATHS.train_run,
    out: Annotated[
        Path, typer.Option(help="Record for DVC: name, version, run_id, aliases.")
    ] = DEFAULT_PATHS.registered,
    name: ModelName = None,
    promote_: Annotated[
        bool,
        typer.Option(
            "--promote/--no-promote",
            help="Run the promotion gate after registering (a refusal is reported, exit status 0).",
        ),
    ] = False,
) -> None:
    """Log the model (pyfunc) into the training run, register it, tag it, alias it 'challenger' (idempotent)."""
    from readl.stages.register import main as stage

    stage(
        params,
        adapter=adapter,
        thresholds=thresholds,
        metrics=metrics,
        train_run=train_run,
        out=out,
        name=name,
        promote=promote_,
    )


@app.command()
@handled
def promote(
    params: ParamsFile = None,
    name: ModelName = None,
    dry_run: Annotated[bool, typer.Option(help="Decide, but do not move 'champion'.")] = False,
) -> None:
    """Move 'champion' to 'challenger' if the gate passes; exit 1 (with the table of why) if it refuses."""
    from readl.registry.gate import gate_table
    from readl.registry.gate import promote as run_promote

    decision = run_promote(load_params_file(params).register, name=name, dry_run=dry_run)
    if decision.checks:
        make_console().print(gate_table(decision))
    verdict = "[green]promoted[/green]" if decision.promoted else "[red]refused[/red]"
    make_console().print(
        f"{verdict}{' (dry run)' if dry_run else ''}: {escape(decision.reason)}; champion is v{decision.champion_after}"
    )
    if not decision.promoted:
        raise typer.Exit(1)


@app.command()
@handled
def serve(
    model_uri: Annotated[
        str | None,
        typer.Option("--model-uri", "-m", help="Registered model (default models:/<register.model_name>@champion)."),
    ] = None,
    port: Annotated[int, typer.Option("--port", "-p", help="Port.")] = 5001,
    host: Annotated[str, typer.Option("--host", "-h", help="Address to listen on.")] = "127.0.0.1",
    workers: Annotated[int, typer.Option(help="Server worker processes (each loads the model).")] = 1,
    params: Annotated[
        Path | None, typer.Option(help="params.yaml (register.model_name; default ./params.yaml).")
    ] = None,
) -> None:
    """Serve a registered model over HTTP (`mlflow models serve` on the project's tracking store).

    The store is the one `readl register` wrote: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db here (made
    absolute for the server). POST /invocations {"dataframe_split": {"columns": ["image"], "data": [["<base64>"]]}}.
    """
    from readl.registry.serve import serve_command

    model_uri = model_uri or f"models:/{load_params_file(params).register.model_name}@champion"
    argv, env = serve_command(model_uri, host=host, port=port, workers=workers)
    console.print(
        f"serve: {model_uri} from {env['MLFLOW_TRACKING_URI']} on http://{host}:{port}/invocations",
        soft_wrap=True,
        highlight=False,
    )
    os.execve(argv[0], argv, env)  # the server replaces this process


ProductionHome = Annotated[
    Path | None,
    typer.Option(help="Production folder: image copies, records (default $READL_PRODUCTION_HOME or data/production)."),
]
ProductionDb = Annotated[
    str | None,
    typer.Option(help="SQLAlchemy URL (default $READL_PRODUCTION_DB or sqlite:///<home>/production.db)."),
]


@app.command()
@handled
def review(
    port: Annotated[int, typer.Option("--port", "-p", help="Port.")] = 8080,
    host: Annotated[str, typer.Option("--host", "-h", help="Address to listen on (0.0.0.0: every interface).")] = (
        "127.0.0.1"
    ),
    home: ProductionHome = None,
    db: ProductionDb = None,
) -> None:
    """Serve the inspectors' review page (reviewers from $READL_REVIEWERS=alice:TOKEN,bob:TOKEN)."""
    import uvicorn

    from readl.production.review import create_app, parse_reviewers
    from readl.production.store import Store, production_home, store_url

    reviewers = parse_reviewers(os.environ.get("READL_REVIEWERS"))
    root = production_home(home)
    app_ = create_app(Store(store_url(db, root)), root, reviewers, host=host)
    console.print(f"review: http://{host}:{port}/ ({len(reviewers)} reviewers; store {root})", highlight=False)
    uvicorn.run(app_, host=host, port=port, log_level="warning")


feedback_app = typer.Typer(help="Inspectors' verdicts back into training.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")


@feedback_app.command("export")
@handled
def feedback_export(
    category: Annotated[str, typer.Option(help="The product the line makes, e.g. metal_plate (names it in training).")],
    home: ProductionHome = None,
    db: ProductionDb = None,
    out: Annotated[Path, typer.Option(help="Export folder (a curate source under data/raw).")] = Path(
        "data/raw/feedback"
    ),
    params: Annotated[Path, typer.Option(help="params.yaml to list the export in (curate.train).")] = Path(
        "params.yaml"
    ),
    add_to_params: Annotated[bool, typer.Option(help="List the export in params curate.train if absent.")] = True,
    mlflow: Annotated[bool, typer.Option(help="Log the agreement per model version to MLflow.")] = True,
) -> None:
    """Write the verdicts as an image-level curate source (labels.csv + images) and log the model's agreement."""
    from readl.production.agreement import agreement, log_agreement, verdict_frame
    from readl.production.feedback import add_source, export
    from readl.production.store import Store, store_url

    store = Store(store_url(db, home))
    result = export(store, category, out)
    console.print(f"feedback: {result.images} images ({result.ok} OK, {result.ng} NG) -> {out}", highlight=False)
    for c in result.conflicts:
        console.print(f"[yellow]conflict, not exported[/yellow]: {escape(c['origin'])} ({escape(c['verdicts'])})")
    table = agreement(verdict_frame(store.reviewed()))
    if not table.empty:
        make_console().print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        if mlflow:
            log_agreement(table)
    root = Path(os.path.relpath(out.resolve(), Path("data/raw").resolve())).as_posix()
    if add_to_params and add_source(params, root):
        console.print(f"{params}: curate.train lists the export (name feedback, root {root})", highlight=False)


if __name__ == "__main__":
    app()
