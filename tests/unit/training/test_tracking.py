"""MLflow tracking of the train stage: a resumed run logs each step once (real sqlite store)."""

from __future__ import annotations

from types import SimpleNamespace

from readl.training.tracking import MlflowMetricsCallback, start_run


def _log(cb: MlflowMetricsCallback, step: int, value: float) -> None:
    state = SimpleNamespace(is_world_process_zero=True, global_step=step)
    cb.on_log(None, state, None, logs={"loss": value, "reward": 2 * value, "epoch": step / 12, "note": "x"})


def test_resume_logs_each_step_once(tmp_path, monkeypatch):
    """12 steps, killed after step 8 with the last checkpoint at step 4: the restarted process re-runs 5-8.
    MLflow must hold 12 points per metric (not 16), one per step, the values of the first run kept."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run_id = start_run("readl-test", params={"train": {"lr": 1e-5}}).info.run_id
    mlflow.end_run()
    first = MlflowMetricsCallback(run_id)
    for step in range(1, 9):
        _log(first, step, float(step))
    _log(first, 8, 99.0)  # the same step twice in one process (e.g. a final log at the last step): once

    run_id2 = start_run("readl-test", run_id=run_id, params={"train": {"lr": 1e-5}}).info.run_id
    assert run_id2 == run_id
    resumed = MlflowMetricsCallback(run_id)  # a new process: resumed from checkpoint-4
    for step in range(5, 13):
        _log(resumed, step, float(step) + 0.5)
    mlflow.end_run()

    client = MlflowClient(uri)
    for key, scale in (("loss", 1.0), ("reward", 2.0)):
        history = client.get_metric_history(run_id, key)
        assert sorted(m.step for m in history) == list(range(1, 13)), (key, [m.step for m in history])
        values = {m.step: m.value for m in history}
        assert values[8] == 8.0 * scale and values[9] == 9.5 * scale  # re-run steps keep the first run's point
    assert "note" not in client.get_run(run_id).data.metrics  # non-numbers are not metrics


def test_runs_are_named_by_their_stage_and_keep_the_name_on_resume(tmp_path, monkeypatch):
    """MLflow's generated names follow the seeded global RNG, so warmup and train (same seed) got the same name
    on every machine; a run's name says its stage and start time instead, and a resumed run keeps it."""
    import random

    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    names = []
    for stage in ("warmup", "train"):
        random.seed(42)  # what transformers' set_seed does before each stage
        run = start_run("readl-test", tags={"readl.stage": stage})
        names.append(run.info.run_name)
        mlflow.end_run()
    assert names[0] != names[1] and names[0].startswith("warmup-") and names[1].startswith("train-"), names
    resumed = start_run("readl-test", run_id=run.info.run_id, tags={"readl.stage": "train"})
    assert resumed.info.run_name == names[1]
    mlflow.end_run()


def test_a_kill_before_mlflow_wrote_a_step_loses_nothing(tmp_path, monkeypatch):
    """Issue (the kill-and-resume test failed 3 of 3 times elsewhere): the kill landed after checkpoint-2 was saved
    but before MLflow had written step 1's points, and steps before the restored checkpoint were never logged again.
    Made deterministic here: the run holds step 2 only; the resumed callback restores step 1 from the checkpoint's
    log_history and does not log step 2 twice."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run_id = start_run("readl-test").info.run_id
    mlflow.end_run()
    _log(MlflowMetricsCallback(run_id), 2, 2.0)  # what reached MLflow before the kill
    history = [
        {"loss": 1.0, "reward": 2.0, "step": 1},
        {"loss": 2.0, "reward": 4.0, "step": 2},
        {"train_runtime": 3.0, "step": 2},
    ]  # the checkpoint's trainer_state.json log_history
    resumed = MlflowMetricsCallback(run_id)
    resumed.on_train_begin(None, SimpleNamespace(is_world_process_zero=True, log_history=history), None)
    _log(resumed, 3, 3.0)
    client = MlflowClient(uri)
    for key in ("loss", "reward"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == [1, 2, 3], key
    assert [m.value for m in client.get_metric_history(run_id, "loss") if m.step == 1] == [1.0]
    assert "step" not in client.get_run(run_id).data.metrics  # the record's step is the x-axis, not a metric
