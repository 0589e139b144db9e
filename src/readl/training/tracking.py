"""MLflow for the train stage: one run per training (resumed by id after a crash), params, per-step metrics
(every number the trainer logs: rewards, J stats, KL, clip fractions, completion length, learning rate, loss ...) and
system metrics (CPU/GPU/memory, sampled by MLflow's monitor thread).

Tracking URI: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlruns.db`` in the working directory (README "Training on
GPUs"). A new sqlite
store is created once under a file lock (:func:`readl.tracking.ensure_store`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping

from transformers import TrainerCallback

from readl.tracking import DEFAULT_TRACKING_URI, ensure_store, tracking_uri  # one definition for all stages

__all__ = ["DEFAULT_TRACKING_URI", "tracking_uri", "start_run", "flatten", "MlflowMetricsCallback"]

log = logging.getLogger(__name__)


def flatten(d: Mapping, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}`` (MLflow params are flat strings, <= 6000 chars)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out


def start_run(experiment: str, run_id: str | None = None, params: Mapping | None = None, tags: Mapping | None = None):
    """Start (or, with ``run_id``, resume) the active MLflow run with system-metrics logging.

    A new run is named ``<tags["readl.stage"]>-<UTC start time>`` (e.g. ``train-20261202-031500``); a resumed
    one keeps its name. A ``run_id`` the tracking server does not know (database reset) starts a new run, with
    a warning.
    Params already on a resumed run are not logged again (MLflow forbids changing a param; equal values
    are the expected case because the checkpoint fingerprint matched).

    Args:
        experiment: experiment name (created if missing).
        run_id: the run to resume; ``None`` = a new run.
        params: flat or nested mapping, logged flattened with :func:`flatten`.
        tags: run tags.

    Returns:
        The ``mlflow.ActiveRun``; end it with ``mlflow.end_run()``.
    """
    import mlflow

    ensure_store(tracking_uri())
    mlflow.set_tracking_uri(tracking_uri())
    exp = mlflow.set_experiment(experiment)
    if run_id is not None:
        try:
            mlflow.tracking.MlflowClient().get_run(run_id)
        except mlflow.exceptions.MlflowException:
            log.warning("MLflow run %s not found at %s; starting a new run", run_id, tracking_uri())
            run_id = None
    # a new run is named "<readl.stage>-<UTC start time>": MLflow's generated names follow the (seeded) global
    # RNG, so every warmup and train run would share one name
    name = (
        None if run_id else f"{(tags or {}).get('readl.stage', 'run')}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    )
    run = mlflow.start_run(
        run_id=run_id, experiment_id=None if run_id else exp.experiment_id, run_name=name, log_system_metrics=True
    )
    if params:
        have = run.data.params if run_id else {}
        new = {k: v for k, v in flatten(params).items() if k not in have}
        if new:
            mlflow.log_params(new)
    if tags:
        mlflow.set_tags(dict(tags))
    return run


class MlflowMetricsCallback(TrainerCallback):
    """Logs every finite number of each ``Trainer`` log record to one MLflow run, at ``step = global_step``.

    Only the main process logs. Metric names keep TRL's names (``rewards/consistency/mean``,
    ``consistency/J_mean``, ``kl``, ``completions/mean_length``, ``learning_rate`` ...), including the fraction
    of completion tokens whose ratio the Eq. 9 clip cut: ``clip_ratio/region_mean`` (``low_mean`` for a < 0,
    ``high_mean`` for a > 0); all 0 when ``train.num_iterations`` is 1 (the ratio is 1).

    Each (metric, step) is logged once, and a kill at any instant loses none: a run resumed from a checkpoint
    first logs what the checkpoint's ``log_history`` holds and the run lacks (the steps whose points MLflow had not
    written when the kill landed), then re-runs the steps after the checkpoint, skipping those already in the run
    (the first point of a step is kept; a resumed run recomputes the same values). The steps already in the run are
    read when the callback is created.
    """

    def __init__(self, run_id: str):
        from mlflow.tracking import MlflowClient

        self.run_id = run_id
        self.client = MlflowClient(tracking_uri())
        self.logged: dict[str, set[int]] = {}  # metric -> steps already in the run
        for key in self.client.get_run(run_id).data.metrics:  # empty for a new run
            if not key.startswith("system/"):  # MLflow's system monitor numbers its own steps
                self.logged[key] = {m.step for m in self.client.get_metric_history(run_id, key)}

    def on_train_begin(self, args, state, control, **kwargs):
        """Log the restored checkpoint's history that the run lacks (empty for a fresh start)."""
        for record in state.log_history if state.is_world_process_zero else []:
            if "step" in record:
                self._log(record, int(record["step"]))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self._log(logs, int(state.global_step))

    def _log(self, logs: Mapping, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(k, float(v), now, step)
            for k, v in logs.items()
            if k != "step"
            and isinstance(v, (int, float))
            and not isinstance(v, bool)
            and math.isfinite(v)
            and step not in self.logged.get(k, ())
        ]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)
            for m in metrics:
                self.logged.setdefault(m.key, set()).add(step)
