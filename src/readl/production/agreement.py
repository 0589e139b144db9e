"""What production says about a model: its decisions against the inspectors' verdicts, per model version.

A verdict ``ng`` is the truth "anomalous", ``ok`` "normal"; the model's ``decision`` (``anomalous`` / ``normal``,
:mod:`readl.evaluation.decision`) is the prediction. Per model version: the confusion matrix (TP = decided
anomalous and NG, FP = decided anomalous and OK, FN = decided normal and NG, TN), ``agreement`` = (TP + TN) / n,
``false_alarm_rate`` = FP / (FP + TN) (OK parts flagged), ``miss_rate`` = FN / (FN + TP) (NG parts passed); NaN
where the denominator is 0. Every verdict counts once (two reviewers of one image: two observations).
"""

from __future__ import annotations

import io
import math

import pandas as pd

__all__ = ["COLUMNS", "agreement", "agreement_plot", "log_agreement", "verdict_frame"]

COLUMNS = ["model_version", "n", "tp", "fp", "fn", "tn", "agreement", "false_alarm_rate", "miss_rate"]


def verdict_frame(reviewed) -> pd.DataFrame:
    """``Store.reviewed()`` pairs as a frame: model_version, decision, verdict, decided_at, day (UTC date)."""
    rows = [
        {
            "model_version": v.model_version or i.model_version or "unknown",
            "decision": i.decision,
            "verdict": v.verdict,
            "decided_at": v.decided_at,
        }
        for i, v in reviewed
    ]
    df = pd.DataFrame(rows, columns=["model_version", "decision", "verdict", "decided_at"])
    df["day"] = pd.to_datetime(df["decided_at"]).dt.floor("D")
    return df


def _rates(g: pd.DataFrame) -> dict:
    pos, bad = g["decision"] == "anomalous", g["verdict"] == "ng"
    tp, fp, fn, tn = int((pos & bad).sum()), int((pos & ~bad).sum()), int((~pos & bad).sum()), int((~pos & ~bad).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else math.nan

    return {
        "n": len(g),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "agreement": ratio(tp + tn, len(g)),
        "false_alarm_rate": ratio(fp, fp + tn),
        "miss_rate": ratio(fn, fn + tp),
    }


def agreement(df: pd.DataFrame, by: tuple[str, ...] = ("model_version",)) -> pd.DataFrame:
    """The module docstring's counts and rates, one row per group of ``by`` (``("model_version", "day")`` for the
    plot over time); an empty frame with the columns when there is no verdict."""
    if df.empty:
        return pd.DataFrame(columns=[*by, *COLUMNS[1:]])
    return pd.DataFrame([{**dict(zip(by, key)), **_rates(g)} for key, g in df.groupby(list(by), sort=True)])


def agreement_plot(df: pd.DataFrame) -> bytes:
    """PNG: agreement, false-alarm and miss rate per day (UTC), one line per model version."""
    import matplotlib.dates as mdates
    from matplotlib.figure import Figure  # no pyplot: no global state shared by the server's threads

    daily = agreement(df, ("model_version", "day"))
    fig = Figure(figsize=(12, 3.2))
    axes = fig.subplots(1, 3, sharex=True)
    for ax, col in zip(axes, ("agreement", "false_alarm_rate", "miss_rate")):
        for version, g in daily.groupby("model_version") if not daily.empty else []:
            ax.plot(g["day"], g[col], marker="o", label=version)
        ax.set_title(col.replace("_", " "))
        ax.set_ylim(-0.05, 1.05)
        if not daily.empty:  # at most ~6 date ticks, a day either side
            first, last = daily["day"].min(), daily["day"].max()
            ax.set_xlim(first - pd.Timedelta(days=1), last + pd.Timedelta(days=1))
            ax.xaxis.set_major_locator(mdates.DayLocator(interval=max(1, ((last - first).days + 2) // 5)))
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
            ax.tick_params(axis="x", labelrotation=30)
    if not daily.empty:
        axes[0].legend(fontsize=7, loc="lower left")
    else:
        axes[1].text(0.5, 0.5, "no verdicts yet", ha="center", transform=axes[1].transAxes)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


def log_agreement(table: pd.DataFrame, uri: str | None = None, experiment: str = "readl-production") -> list[str]:
    """Log each row of :func:`agreement` as an MLflow run of ``experiment`` (tag ``model_version``; metrics
    ``agreement``, ``false_alarm_rate``, ``miss_rate``, ``n_verdicts``, ``tp``/``fp``/``fn``/``tn``; NaN rates
    are left out). Returns the run ids.

    Raises:
        readl.tracking errors: the tracking server cannot be reached (after its retries).
    """
    import mlflow

    from readl.tracking import mlflow_session

    ids = []
    with mlflow_session(uri):
        mlflow.set_experiment(experiment)
        for row in table.to_dict("records"):
            with mlflow.start_run(run_name=f"agreement {row['model_version']}") as run:
                mlflow.set_tag("model_version", row["model_version"])
                metrics = {k: float(row[k]) for k in ("agreement", "false_alarm_rate", "miss_rate")}
                metrics.update(n_verdicts=float(row["n"]), **{k: float(row[k]) for k in ("tp", "fp", "fn", "tn")})
                mlflow.log_metrics({k: v for k, v in metrics.items() if not math.isnan(v)})
                ids.append(run.info.run_id)
    return ids
