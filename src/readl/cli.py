"""The ``readl`` command: one sub-command per pipeline stage, plus predict."""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(help="readl: reasoning-driven industrial anomaly detection (ReAL + CGRO).", no_args_is_help=True)
console = Console(stderr=True)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # One progress bar per long step: no per-file "Loading weights" bars, no deprecation noise from deps.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )


DEFAULT_ADAPTER, DEFAULT_THRESHOLDS = Path("models/adapter"), Path("models/thresholds.json")


def _error(message: str, code: int = 2) -> None:
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True, highlight=False)
    raise typer.Exit(code)


def _params(params: Path | None):
    """params.yaml: an explicit ``--params`` must exist; the default ``params.yaml`` may be absent (defaults)."""
    from readl.config import load_params

    if params is not None and not params.is_file():
        _error(f"--params {params}: file not found; pass an existing params.yaml, or omit --params for "
               f"./params.yaml (built-in defaults when it is absent)")  # fmt: skip
    try:
        return load_params(params or Path("params.yaml"))
    except ValueError as exc:
        _error(str(exc))


def _load_base(base: str, adapter: Path | None, device: str | None, dtype: str):
    """load_model with one-line errors: an HF id that is neither cached nor reachable says so and how to fix it."""
    from readl.model.loading import load_error_message, load_model

    try:
        return load_model(base, adapter=adapter, device=device, dtype=dtype)
    except OSError as exc:
        logging.getLogger(__name__).debug("load_model failed", exc_info=True)
        _error(f"--model {load_error_message(base, exc)}", 1)
    except ValueError as exc:
        _error(str(exc), 1)


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    model: Annotated[str | None, typer.Option(help="Base model: 'tiny', a local folder or an HF id; or a registered "
                                              "model, e.g. models:/readl@champion (base + adapter + thresholds + params). "
                                              "Default: params model.base + models/adapter.")] = None,
    adapter: Annotated[Path | None, typer.Option(help="LoRA adapter folder; default models/adapter when it exists and "
                                                 "--model is not given; 'none' = the base model alone.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder for <stem>.json and <stem>.png.")] = Path("predictions"),
    thresholds: Annotated[Path | None, typer.Option(help="Calibrated thresholds.json (tau_t, tau_i, decision); default "
                                                    "models/thresholds.json with the project's model; 'none' = "
                                                    "per-image rules.")] = None,
    params: Annotated[Path | None, typer.Option(help="params.yaml (model, localization; default ./params.yaml, "
                                                "built-in defaults when absent).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Override model.max_new_tokens.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: auto).")] = None,
    annotate: Annotated[bool, typer.Option("--annotate/--no-annotate", help="Caption (answer, score, decision) and "
                                           "colour bar on the overlay PNG; off = the bare overlay at the image's size.")] = True,
) -> None:
    """Reasoning, Yes/No answer, P(Yes) score, OK/NG decision and ReAL anomaly map for each image."""
    from readl.config import pipeline_base
    from readl.model.inference import GenerationSettings, Predictor
    from readl.predict import adapter_digest, predict_files
    from readl.model.generation import make_generator
    from readl.model.loading import resolve_base

    cfg = _params(params)
    mcfg = cfg.model
    loc, batch_size = cfg.localization, mcfg.batch_size
    no_thresholds = thresholds is not None and str(thresholds).lower() == "none"
    if thresholds is not None and not no_thresholds and not thresholds.is_file():
        _error(f"--thresholds {thresholds}: file not found; run `readl calibrate` (models/thresholds.json) or pass "
               f"--thresholds none for per-image rules")  # fmt: skip
    if model and model.startswith(("models:/", "runs:/")):  # registered: its own adapter, thresholds and params
        from readl.registry import RegistryError
        from readl.registry.load import load_registered

        if adapter is not None:
            _error("--adapter cannot be combined with a registered model (it carries its adapter)")
        try:
            registered = load_registered(model, device=device, max_new_tokens=max_new_tokens)
        except RegistryError as exc:
            _error(str(exc), 1)
        predictor, loc, batch_size = registered.predictor, registered.localization, registered.batch_size
        if thresholds is None:
            thresholds = Path(registered.thresholds_path) if registered.thresholds_path else None
        provenance = {"base": registered.params.model.base, "adapter": adapter_digest(registered.adapter),
                      "registered": registered.registered}  # fmt: skip
    else:
        project = model is None and adapter is None  # the project's own model: params model.base + models/adapter
        if adapter is not None and str(adapter).lower() == "none":
            adapter = None
        elif project and (DEFAULT_ADAPTER / "adapter_config.json").is_file():
            adapter = DEFAULT_ADAPTER
        elif adapter is not None and not (adapter / "adapter_config.json").is_file():
            _error(f"--adapter {adapter}: no adapter_config.json; pass the folder written by `readl train` "
                   f"(models/adapter), or --adapter none for the base model")  # fmt: skip
        if project and thresholds is None and DEFAULT_THRESHOLDS.is_file():
            thresholds = DEFAULT_THRESHOLDS  # calibrate's thresholds belong to that model
        base = model or pipeline_base(cfg)  # models/warmup after `readl warmup`
        net, processor = _load_base(base, adapter, device, mcfg.dtype)
        predictor = Predictor(
            net, processor, image_size=mcfg.image_size, layers=cfg.localization.layers,
            query_row=cfg.localization.query_row,
            generation=GenerationSettings(max_new_tokens=max_new_tokens or mcfg.max_new_tokens),
            generator=make_generator(mcfg.generation_backend, resolve_base(base), adapter),
        )  # fmt: skip
        provenance = {"base": base, "adapter": adapter_digest(adapter), "registered": None}
    if no_thresholds:
        thresholds = None
    console.print(f"predict: model {provenance['base']}, adapter {provenance['adapter'] or 'none'}"
                  f"{', ' + provenance['registered'] if provenance['registered'] else ''}; thresholds "
                  f"{thresholds or 'per-image rules'}", soft_wrap=True, highlight=False)  # fmt: skip
    with _progress() as bar:
        task = bar.add_task("predict", total=len(images))
        outcomes = predict_files(
            images, predictor, loc, out, thresholds_file=thresholds, batch_size=batch_size,
            progress=lambda n: bar.advance(task, n), provenance=provenance, annotate=annotate,
        )  # fmt: skip
    table = Table("image", "answer", "format", "score", "decision", "tokens kept", "overlay")
    for o in outcomes:
        if o.record is not None:
            r = o.record
            table.add_row(
                o.path.name, str(r["answer"]), "ok" if r["format_ok"] else "broken", f"{r['score']:.3f}",
                f"{r['decision']} (t={r['threshold']['value']:.3f})",
                f"{len(r['selected_tokens'])}/{r['n_reasoning_tokens']}", str(o.png_path),
            )  # fmt: skip
    Console().print(table)
    failed = [o for o in outcomes if o.error]
    for o in failed:
        console.print(f"[red]error:[/red] {escape(o.error)}", soft_wrap=True, highlight=False)
    if failed:
        console.print(f"[red]{len(failed)} of {len(outcomes)} file(s) could not be read; the others have results.")
        raise typer.Exit(1)


@app.command()
def warmup(
    params: Annotated[Path, typer.Option(help="params.yaml (sections model, warmup, train.lora).")] = Path("params.yaml"),
    manifest: Annotated[Path, typer.Option(help="Curated training manifest.")] = Path("data/curated/train.parquet"),
    output: Annotated[Path, typer.Option(help="Folder for warmup/, warmup_run.json, warmup_checkpoints/.")] = Path("models"),
    device: Annotated[str | None, typer.Option(help="cpu, cuda ... (default: this process's accelerate device).")] = None,
) -> None:
    """Supervised cold start (SFT on the answer format) before CGRO; resumes its last checkpoint by itself."""
    from readl.config import load_params
    from readl.training.warmup import warmup as run_warmup

    try:
        record = run_warmup(load_params(params), manifest=manifest, output_dir=output, device=device)
    except (FileNotFoundError, ValueError) as exc:
        logging.getLogger(__name__).debug("warmup failed", exc_info=True)
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True, highlight=False)
        raise typer.Exit(1) from None
    if record:
        done = f"steps: {record['global_step']}  MLflow run: {record['run_id']}" if record["enabled"] else "disabled"
        console.print(f"warm-started model: {record['model']}  {done}")


@app.command()
def train(
    params: Annotated[Path, typer.Option(help="params.yaml (sections model, train).")] = Path("params.yaml"),
    manifest: Annotated[Path, typer.Option(help="Curated training manifest.")] = Path("data/curated/train.parquet"),
    output: Annotated[Path, typer.Option(help="Folder for adapter/, train_run.json, checkpoints/.")] = Path("models"),
    device: Annotated[str | None, typer.Option(help="cpu, cuda ... (default: this process's accelerate device).")] = None,
) -> None:
    """CGRO fine-tuning (GRPO + LoRA + consistency reward); resumes the last complete checkpoint by itself."""
    from readl.config import load_params
    from readl.training.train import train as run_training

    try:
        record = run_training(load_params(params), manifest=manifest, output_dir=output, device=device)
    except (FileNotFoundError, ValueError) as exc:
        logging.getLogger(__name__).debug("train failed", exc_info=True)
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True, highlight=False)
        raise typer.Exit(1) from None
    if record:
        console.print(f"adapter: {record['adapter']}  MLflow run: {record['run_id']}  steps: {record['global_step']}")


@app.command()
def curate(
    params: Annotated[Path, typer.Option(help="params.yaml (curate section).")] = Path("params.yaml"),
    raw: Annotated[Path, typer.Option(help="Folder holding the sources' root folders.")] = Path("data/raw"),
    out: Annotated[Path, typer.Option(help="Curated folder, replaced atomically.")] = Path("data/curated"),
) -> None:
    """Build the curated train / calib / eval manifests and 420x420 images (the first DVC stage)."""
    from readl.config import load_params
    from readl.data.curate import curate as run_curate

    cfg = load_params(params).curate
    try:
        with _progress() as bar:
            task = bar.add_task("curate", total=None)
            result = run_curate(cfg, raw, out, progress=lambda n, total: bar.update(task, advance=n, total=total))
    except (FileNotFoundError, ValueError) as exc:  # missing source folder, layout error
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True, highlight=False)
        raise typer.Exit(1) from None
    typer.echo(result.one_line())


@app.command()
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

    from readl.data.fetch import FetchError, ManualDownloadRequired
    from readl.data.fetch import fetch as run_fetch
    from readl.storage import StorageError

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
    except ManualDownloadRequired as exc:
        console.print(escape(str(exc)), soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None
    except (FetchError, StorageError, FileExistsError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) else str(exc)
        console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True, highlight=False)
        raise typer.Exit(1) from None
    finally:
        bar.stop()
    check = "verified" if result.verified else "no known checksum: pass it as --sha256 to pin it"
    typer.echo(f"fetch: {source} -> {result.path} (sha256 {result.sha256}, {check})")


@app.command()
def calibrate(
    manifest: Annotated[Path, typer.Option(help="Calibration manifest.")] = Path("data/curated/calib.parquet"),
    adapter: Annotated[Path | None, typer.Option(help="LoRA adapter (skipped if absent).")] = Path("models/adapter"),
    out: Annotated[Path, typer.Option(help="thresholds.json to write (plot beside it).")] = Path("models/thresholds.json"),
    cache: Annotated[Path, typer.Option(help="Per-image prediction cache.")] = Path("reports/predictions/calib"),
    model: Annotated[str | None, typer.Option(help="Base model (default: params model.base).")] = None,
    params: Annotated[Path, typer.Option(help="params.yaml.")] = Path("params.yaml"),
) -> None:
    """Find tau_t (median) and tau_i (maximum curvature) (supplement Table 5) and the OK/NG decision threshold on
    P(Yes) (params calibrate:) on the calibration split."""
    from readl.config import load_params
    from readl.evaluation.run import read_manifest, run_calibrate

    cfg = load_params(params)
    with _progress() as bar:
        task = bar.add_task("calibrate", total=len(read_manifest(manifest)))
        run_calibrate(cfg, manifest, adapter, out, cache, base=model, progress=lambda n: bar.advance(task, n))


@app.command()
def evaluate(
    manifest: Annotated[Path, typer.Option(help="Evaluation manifest (with masks).")] = Path("data/curated/eval.parquet"),
    adapter: Annotated[Path | None, typer.Option(help="LoRA adapter (skipped if absent).")] = Path("models/adapter"),
    thresholds: Annotated[Path | None, typer.Option(help="Calibrated thresholds.json.")] = Path("models/thresholds.json"),
    metrics: Annotated[Path, typer.Option(help="metrics.json to write.")] = Path("metrics.json"),
    plots: Annotated[Path, typer.Option(help="Folder for ROC/PR curve JSON (dvc plots).")] = Path("plots"),
    reports: Annotated[Path, typer.Option(help="Folder for tables and the heat-map gallery.")] = Path("reports"),
    cache: Annotated[Path, typer.Option(help="Per-image prediction cache.")] = Path("reports/predictions/eval"),
    model: Annotated[str | None, typer.Option(help="Base model (default: params model.base).")] = None,
    params: Annotated[Path, typer.Option(help="params.yaml.")] = Path("params.yaml"),
    calib_manifest: Annotated[Path, typer.Option(help="Calibration split: the model baselines' own tau_t / tau_i "
                                                 "(evaluate.baseline_thresholds).")] = Path("data/curated/calib.parquet"),
) -> None:
    """Image / pixel / reasoning metrics per dataset and category, curves, tables and a heat-map gallery."""
    from readl.config import load_params
    from readl.evaluation.run import read_manifest, run_evaluate

    cfg = load_params(params)
    with _progress() as bar:
        task = bar.add_task("evaluate", total=len(read_manifest(manifest)))
        result = run_evaluate(cfg, manifest, adapter, thresholds, metrics, plots, reports, cache, base=model,
                              progress=lambda n: bar.advance(task, n), calib_manifest=calib_manifest)  # fmt: skip
    if not result:  # a non-main process of `accelerate launch --num_processes N -m readl.cli evaluate`
        return
    from readl.evaluation.report import metrics_table

    Console().print(metrics_table(result))
    if result.get("baselines") or result.get("bootstrap"):
        from readl.evaluation.comparison import comparison_table

        Console().print(comparison_table(result))


def _registry_error(exc: Exception) -> None:
    console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True, highlight=False)
    raise typer.Exit(2) from None


def _gate_table(decision) -> Table:
    pct = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    table = Table("scope", "metric", "champion", "challenger", "rule", "ok", "note",
                  title=f"{decision.name}: challenger v{decision.challenger} vs champion v{decision.champion_before}")  # fmt: skip
    for c in decision.checks:
        table.add_row(c.scope, c.metric, pct(c.champion), pct(c.challenger), c.rule,
                      "[green]yes[/green]" if c.passed else "[red]NO[/red]", c.note)  # fmt: skip
    return table


@app.command()
def register(
    params: Annotated[Path, typer.Option(help="params.yaml (register.model_name; logged with the model).")] = Path("params.yaml"),
    adapter: Annotated[Path, typer.Option(help="LoRA adapter (absent: the base model alone).")] = Path("models/adapter"),
    thresholds: Annotated[Path, typer.Option(help="thresholds.json from `readl calibrate`.")] = Path("models/thresholds.json"),
    metrics: Annotated[Path, typer.Option(help="metrics.json from `readl evaluate` (version tags).")] = Path("metrics.json"),
    train_run: Annotated[Path, typer.Option(help="train_run.json: the MLflow run to log the model into.")] = Path("models/train_run.json"),
    out: Annotated[Path, typer.Option(help="Record for DVC: name, version, run_id, aliases.")] = Path("models/registered.json"),
    name: Annotated[str | None, typer.Option(help="Registered model name (default register.model_name).")] = None,
    promote_: Annotated[bool, typer.Option("--promote/--no-promote", help="Run the promotion gate after registering "
                                           "(a refusal is reported, exit status 0).")] = False,
) -> None:
    """Log the model (pyfunc) into the training run, register it, tag it, alias it 'challenger' (idempotent)."""
    from readl.config import load_params
    from readl.registry import RegistryError
    from readl.registry.registration import register as run_register

    try:
        result = run_register(params_file=params, adapter=adapter, thresholds=thresholds, metrics=metrics,
                              train_run=train_run, out=out, name=name)  # fmt: skip
        decision = None
        if promote_:
            from readl.atomic import write_json
            from readl.registry.gate import promote as run_promote

            decision = run_promote(load_params(params).register, name=result.name)
            record = json.loads(out.read_text())
            if decision.champion_after == result.version:
                record["aliases"] = sorted({*record["aliases"], "champion"})
            write_json(out, {**record, "promotion": decision.as_dict()})
    except (RegistryError, FileNotFoundError, ValueError) as exc:
        _registry_error(exc)
    typer.echo(f"register: {result.name} version {result.version} (run {result.run_id}){' reused' if result.reused else ''}; "
               f"aliases: {', '.join(result.aliases)}")  # fmt: skip
    if decision is not None:
        if decision.checks:
            Console().print(_gate_table(decision))
        typer.echo(f"promote: {decision.reason}")
    if metrics.is_file():  # the last stage of `dvc repro`: end with the evaluation numbers
        from readl.evaluation.report import metrics_table

        Console().print(metrics_table(json.loads(metrics.read_text()), title=f"{result.name} v{result.version}"))


@app.command()
def promote(
    params: Annotated[Path, typer.Option(help="params.yaml (register: model_name, primary_metric, max_drop).")] = Path("params.yaml"),
    name: Annotated[str | None, typer.Option(help="Registered model name (default register.model_name).")] = None,
    dry_run: Annotated[bool, typer.Option(help="Decide, but do not move 'champion'.")] = False,
) -> None:
    """Move 'champion' to 'challenger' if the gate passes; exit 1 (with the table of why) if it refuses, 2 on errors."""
    from readl.config import load_params
    from readl.registry import RegistryError
    from readl.registry.gate import promote as run_promote

    try:
        decision = run_promote(load_params(params).register, name=name, dry_run=dry_run)
    except (RegistryError, ValueError) as exc:
        _registry_error(exc)
    if decision.checks:
        Console().print(_gate_table(decision))
    verdict = "[green]promoted[/green]" if decision.promoted else "[red]refused[/red]"
    Console().print(f"{verdict}{' (dry run)' if dry_run else ''}: {escape(decision.reason)}; champion is v{decision.champion_after}")
    if not decision.promoted:
        raise typer.Exit(1)


@app.command()
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
    from readl.registry import RegistryError
    from readl.registry.serve import serve_command

    model_uri = model_uri or f"models:/{_params(params).register.model_name}@champion"
    try:
        argv, env = serve_command(model_uri, host=host, port=port, workers=workers)
    except RegistryError as exc:
        _error(str(exc), 1)
    console.print(f"serve: {model_uri} from {env['MLFLOW_TRACKING_URI']} on http://{host}:{port}/invocations",
                  soft_wrap=True, highlight=False)  # fmt: skip
    os.execve(argv[0], argv, env)  # the server replaces this process


if __name__ == "__main__":
    app()
