"""The ``readl`` command: one sub-command per pipeline stage, plus predict."""

from __future__ import annotations

import logging
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


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    model: Annotated[str | None, typer.Option(help="Base model: 'tiny', a local folder or an HF id.")] = None,
    adapter: Annotated[Path | None, typer.Option(help="LoRA adapter folder (models/adapter).")] = None,
    out: Annotated[Path, typer.Option(help="Output folder for <stem>.json and <stem>.png.")] = Path("predictions"),
    thresholds: Annotated[Path | None, typer.Option(help="Calibrated thresholds.json; default per-image rules.")] = None,
    params: Annotated[Path, typer.Option(help="params.yaml (model, localization sections).")] = Path("params.yaml"),
    max_new_tokens: Annotated[int | None, typer.Option(help="Override model.max_new_tokens.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: auto).")] = None,
) -> None:
    """Reasoning, Yes/No answer, P(Yes) score and ReAL anomaly map for each image."""
    from readl.config import load_params
    from readl.model.inference import GenerationSettings, Predictor
    from readl.model.loading import load_model
    from readl.predict import predict_files

    cfg = load_params(params)
    mcfg = cfg.model
    net, processor = load_model(model or mcfg.base, adapter=adapter, device=device, dtype=mcfg.dtype)
    predictor = Predictor(
        net, processor, image_size=mcfg.image_size, layers=cfg.localization.layers,
        generation=GenerationSettings(max_new_tokens=max_new_tokens or mcfg.max_new_tokens),
    )  # fmt: skip
    with _progress() as bar:
        task = bar.add_task("predict", total=len(images))
        outcomes = predict_files(
            images, predictor, cfg.localization, out, thresholds_file=thresholds, batch_size=mcfg.batch_size,
            progress=lambda n: bar.advance(task, n),
        )  # fmt: skip
    table = Table("image", "answer", "format", "score", "tokens kept", "overlay")
    for o in outcomes:
        if o.record is not None:
            r = o.record
            table.add_row(
                o.path.name, str(r["answer"]), "ok" if r["format_ok"] else "broken", f"{r['score']:.3f}",
                f"{len(r['selected_tokens'])}/{r['n_reasoning_tokens']}", str(o.png_path),
            )  # fmt: skip
    Console().print(table)
    failed = [o for o in outcomes if o.error]
    for o in failed:
        console.print(f"[red]error:[/red] {escape(o.error)}", soft_wrap=True, highlight=False)
    if failed:
        console.print(f"[red]{len(failed)} of {len(outcomes)} file(s) could not be read; the others have results.")
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
