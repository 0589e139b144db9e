"""``readl register [--promote]`` (DVC stage ``register``): the trained model into the MLflow registry.

One linear entry, :func:`run`: check every input (:mod:`readl.registry.inputs`) -> log the pyfunc model into the
training run and register it as a new version aliased ``challenger`` (idempotent,
:func:`readl.registry.registration.register`) -> with ``promote``, run the promotion gate
(:func:`readl.registry.gate.promote`) -> write ``models/registered.json`` (name, version, run, aliases, promotion).

Under ``dvc exp run`` (DVC puts ``DVC_EXP_NAME`` in the stages' environment) an experiment is registered, tagged
``readl.dvc_experiment``, and becomes the ``challenger``, but the gate only reports (dry run): an ablation such as
``-S 'train.rewards=[format,accuracy]'`` never replaces the served ``champion``; ``readl promote`` does that
on purpose.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from readl.atomic import write_json
from readl.config import load_params
from readl.paths import DEFAULT_PATHS, Paths, resolve_model
from readl.registry.gate import Decision
from readl.registry.gate import promote as run_promote
from readl.registry.registration import RegisterResult, register
from readl.tracking import call, mlflow_session

__all__ = ["main", "run"]


def run(
    params_file: Path,
    adapter: Path,
    thresholds: Path,
    metrics: Path,
    train_run: Path,
    out: Path,
    name: str | None = None,
    promote: bool = False,
) -> tuple[RegisterResult, Decision | None]:
    """Register the model (and, with ``promote``, decide whether it becomes ``champion``).

    Args:
        params_file: ``params.yaml`` (``register.model_name``, the gate's rules; logged with the model).
        adapter: the LoRA folder (absent: the base model alone, with a warning).
        thresholds: ``thresholds.json`` from ``readl calibrate``.
        metrics: ``metrics.json`` from ``readl evaluate`` (its numbers become version tags ``metrics.*``).
        train_run: ``train_run.json`` (the MLflow run the model is logged into).
        out: the record for DVC (``models/registered.json``), written atomically; with ``promote`` it also holds
            ``promotion`` (the gate's decision) and ``champion`` among the aliases when the gate moved it.
        name: registered model name (default ``register.model_name``).
        promote: run the promotion gate after registering (a refusal is a result, not an error); a dry run
            inside ``dvc exp run`` (module docstring).

    Returns:
        ``(result, decision)``: the :class:`~readl.registry.registration.RegisterResult` and the gate's
        :class:`~readl.registry.gate.Decision` (``None`` without ``promote``).

    Raises:
        FileNotFoundError: an input file is missing (the message names the stage to run).
        ValueError: an input is incomplete or malformed, or params.yaml is invalid (nothing is registered).
        readl.registry.RegistryError: the tracking server or artifact store failed (after retries).
    """
    cfg = load_params(params_file)  # read once: the model, the registration and the gate's rules below
    model = resolve_model(cfg, Paths(Path(train_run).parent))
    result = register(
        params_file=params_file,
        model=model,
        params=cfg,
        adapter=adapter,
        thresholds=thresholds,
        metrics=metrics,
        train_run=train_run,
        out=out,
        name=name,
    )
    experiment = os.environ.get("DVC_EXP_NAME")
    if experiment:
        with mlflow_session() as client:
            call(
                lambda: client.set_model_version_tag(result.name, result.version, "readl.dvc_experiment", experiment),
                "tag the experiment's model version",
            )
    if not promote:
        return result, None
    decision = run_promote(cfg.register, name=result.name, dry_run=bool(experiment))
    if experiment:
        decision = dataclasses.replace(
            decision,
            reason=f"dvc experiment {experiment}: dry run, champion unchanged "
            f"(`readl promote` moves it): {decision.reason}",
        )
    record = json.loads(Path(out).read_text())
    if decision.champion_after == result.version:
        record["aliases"] = sorted({*record["aliases"], "champion"})
    write_json(out, {**record, "promotion": decision.as_dict()})
    return result, decision


def main(
    params: Path | None = None,
    adapter: Path = DEFAULT_PATHS.adapter,
    thresholds: Path = DEFAULT_PATHS.thresholds,
    metrics: Path = Path("metrics.json"),
    train_run: Path = DEFAULT_PATHS.train_run,
    out: Path = DEFAULT_PATHS.registered,
    name: str | None = None,
    promote: bool = False,
) -> None:
    """Log the model (pyfunc) into the training run, register it, tag it, alias it 'challenger' (idempotent);
    with ``promote`` run the promotion gate (a refusal is reported, exit status 0).

    ``readl register`` and ``python -m readl.stages.register --promote`` (dvc.yaml): :func:`run`, its lines on
    stdout, the gate's table, and the evaluation numbers (the last stage of ``dvc repro`` ends with them)."""
    from readl.evaluation.report import metrics_table
    from readl.registry.gate import gate_table
    from readl.stages.console import make_console, params_path

    result, decision = run(
        params_path(params), adapter, thresholds, metrics, train_run, out, name=name, promote=promote
    )
    reused = " reused" if result.reused else ""
    print(
        f"register: {result.name} version {result.version} (run {result.run_id}){reused}; "
        f"aliases: {', '.join(result.aliases)}"
    )
    if decision is not None:
        if decision.checks:
            make_console().print(gate_table(decision))
        print(f"promote: {decision.reason}")
    if metrics.is_file():
        make_console().print(metrics_table(json.loads(metrics.read_text()), title=f"{result.name} v{result.version}"))


if __name__ == "__main__":
    from readl.stages.console import script

    script(main, flags=("promote",))
