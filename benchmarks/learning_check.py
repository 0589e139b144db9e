"""Learning check: R1 vs CGRO from one warm start, on the same data and seeds (issue: does CGRO act?).

Runs the pipeline's own stages in a scratch folder (the bundled data, params.yaml with the overrides below):
curate -> warmup (ONCE; both arms start from this model) -> for each arm: train -> calibrate -> evaluate.

- ``R1``: ``train.rewards [format, accuracy, consistency]`` with ``train.reward_weights [1, 1, 0]``: the
  paper's R1 objective (the consistency reward is out of the advantage) with the consistency J still computed
  and logged, so both arms report J.
- ``CGRO``: ``[format, accuracy, consistency]``, all weights 1 (paper Eq. 8).

Prints, per arm and per block of ``--block`` train steps, the means of the format reward (= format rate of the
rollouts), the accuracy reward, J and the share of steps with a non-zero reward std in some group (from the
trainer's MLflow metrics); then image AUROC and pixel AUROC (modes all / s_i / s_t / both) with 95% bootstrap
intervals on the eval datasets (synthetic anomalies + the real MVTec AD grid images) for both arms and the
baselines of the evaluate stage (untrained model, warm-started model, contrast map). Saves a plot
(``benchmarks/results/learning_check.png``) and the numbers (``benchmarks/results/learning_check.json``).

Runs on CPU (2 cores). Usage::

    .venv/bin/python benchmarks/learning_check.py                   # params.yaml steps (the lead's full run)
    .venv/bin/python benchmarks/learning_check.py --warmup-steps 20 --train-steps 4 --eval-per-image 1 \
        --max-new-tokens 32 --bootstrap 200                          # a smoke run of a few minutes
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the tiny model gains nothing from threads; contention costs 10-100x

import yaml  # noqa: E402

from readl.presets import set_dotted  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
ARMS = {
    "R1": {"rewards": ["format", "accuracy", "consistency"], "reward_weights": [1.0, 1.0, 0.0]},
    "CGRO": {"rewards": ["format", "accuracy", "consistency"], "reward_weights": None},
}
CURVES = {
    "format": "rewards/format/mean",
    "accuracy": "rewards/accuracy/mean",
    "J": "consistency/J_mean",
    "consistency": "rewards/consistency/mean",
    "zero_std": "frac_reward_zero_std",
    "J_anomalous": "consistency/J_anomalous",
    "J_normal": "consistency/J_normal",
    "R_cons_anomalous": "consistency/R_cons_anomalous",
    "R_cons_normal": "consistency/R_cons_normal",
    "reward_std": "reward_std",
}
BLOCK_KEYS = (
    "format",
    "accuracy",
    "J",
    "consistency",
    "J_anomalous",
    "J_normal",
    "R_cons_anomalous",
    "R_cons_normal",
    "reward_std",
)


@contextmanager
def chdir(path: Path):
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def scratch_params(work: Path, a) -> dict:
    """params.yaml of the repository with the run's overrides, written to ``work``."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    if a.warmup_steps is not None:
        params["warmup"]["max_steps"] = a.warmup_steps
    if a.train_steps is not None:
        params["train"]["max_steps"] = a.train_steps
    if a.train_lr is not None:
        params["train"]["learning_rate"] = a.train_lr
    params["train"]["logging_steps"] = 1  # one MLflow point per step
    if a.max_new_tokens is not None:
        params["model"]["max_new_tokens"] = a.max_new_tokens
    if a.eval_per_image is not None:
        for s in params["curate"]["eval"]:
            if s["layout"] == "synthetic":
                s["options"]["per_image"] = a.eval_per_image
    if a.bootstrap is not None:
        params["evaluate"]["bootstrap_resamples"] = a.bootstrap
    for item in a.set:
        key, _, value = item.partition("=")
        set_dotted(params, key, yaml.safe_load(value))
    params["evaluate"]["gallery_per_dataset"] = 0
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def curves(run_id: str) -> dict[str, dict[int, float]]:
    """Per-step values of :data:`CURVES` from the arm's MLflow run: ``{name: {step: value}}``."""
    from mlflow.tracking import MlflowClient

    from readl.training.tracking import tracking_uri

    client = MlflowClient(tracking_uri())
    return {name: {m.step: m.value for m in client.get_metric_history(run_id, key)} for name, key in CURVES.items()}


def block_means(curve: dict[str, dict[int, float]], block: int) -> list[dict]:
    """Means of each curve over steps ``1..block``, ``block+1..2*block`` ...; ``learning`` = share of those steps
    with ``frac_reward_zero_std < 1`` (some group had reward variance); ``*_anomalous`` / ``*_normal``: J and
    R_cons of the rollouts of anomalous / normal images; ``*_sd``: the standard deviation of the per-step values
    within the block (the block-to-block noise to compare differences against)."""
    steps = sorted(set().union(*(c.keys() for c in curve.values())))
    rows = []
    for lo in range(0, len(steps), block):
        chunk = steps[lo : lo + block]
        mean = lambda name: (lambda v: sum(v) / len(v) if v else float("nan"))(  # noqa: E731
            [curve[name][s] for s in chunk if s in curve.get(name, {})]
        )
        zero = [curve["zero_std"][s] for s in chunk if s in curve["zero_std"]]
        sd = lambda name: (lambda v: statistics.stdev(v) if len(v) > 1 else float("nan"))(  # noqa: E731
            [curve[name][s] for s in chunk if s in curve.get(name, {})]
        )
        rows.append(
            {
                "steps": f"{chunk[0]}-{chunk[-1]}",
                **{k: mean(k) for k in BLOCK_KEYS},
                "J_anomalous_sd": sd("J_anomalous"),
                "J_normal_sd": sd("J_normal"),
                "learning": sum(z < 1 for z in zero) / len(zero) if zero else float("nan"),
            }
        )
    return rows


def run_arm(name: str, params_dict: dict, work: Path, reuse: bool = False) -> dict:
    """train -> calibrate -> evaluate of one arm under ``work/runs/<name>``; returns its numbers. ``reuse``: an arm
    already trained there (its ``train_run.json`` and adapter) is not trained again, nor evaluated again when its
    ``metrics.json`` is there; an interrupted training resumes from its last checkpoint (readl.stages.train)."""
    from readl.config import Params
    from readl.stages.calibrate import run as run_calibrate
    from readl.stages.evaluate import run as run_evaluate
    from readl.stages.train import run as train

    out = work / "runs" / name
    p = json.loads(json.dumps(params_dict))
    p["train"].update(ARMS[name], experiment=f"learning-check-{name}")
    if name != "CGRO":  # the baselines are the same models for both arms: computed once (CGRO arm)
        p["evaluate"]["baselines"] = []
    params = Params.model_validate(p)
    t0 = time.perf_counter()
    done = out / "train_run.json"
    if reuse and done.is_file() and (out / "adapter" / "adapter_config.json").is_file():
        record = json.loads(done.read_text())  # this arm was trained by an earlier (interrupted) run of the check
    else:
        record = train(params, output_dir=out)
    t_train = time.perf_counter() - t0
    if reuse and done.is_file() and (out / "metrics.json").is_file():  # evaluated too (metrics.json is written last)
        metrics = json.loads((out / "metrics.json").read_text())
        return {
            "record": record,
            "curves": curves(record["run_id"]),
            "metrics": metrics,
            "seconds": {"train": t_train, "calibrate+evaluate": 0.0},
        }
    run_calibrate(
        params,
        Path("data/curated/calib.parquet"),
        out / "adapter",
        out / "thresholds.json",
        out / "predictions" / "calib",
    )
    metrics = run_evaluate(
        params,
        Path("data/curated/eval.parquet"),
        out / "adapter",
        out / "thresholds.json",
        out / "metrics.json",
        out / "plots",
        out / "reports",
        out / "predictions" / "eval",
        calib_manifest=Path("data/curated/calib.parquet"),
    )
    return {
        "record": record,
        "curves": curves(record["run_id"]),
        "metrics": metrics,
        "seconds": {"train": t_train, "calibrate+evaluate": time.perf_counter() - t0 - t_train},
    }


def print_tables(arms: dict, block: int) -> None:
    from rich.console import Console
    from rich.table import Table

    from readl.evaluation.comparison import comparison_table

    console = Console(width=150)
    t = Table(
        "arm",
        "steps",
        "format",
        "accuracy",
        "J",
        "R_cons",
        "J anom. (sd)",
        "J normal (sd)",
        "R_cons anom.",
        "R_cons normal",
        "reward std",
        "steps w/ reward var.",
        title=f"per-block means of the train rollouts (block = {block} steps; sd: of the per-step values)",
    )
    f = lambda v: "n/a" if v is None or v != v else f"{v:.3f}"  # noqa: E731
    for name, arm in arms.items():
        for row in block_means(arm["curves"], block):
            t.add_row(
                name,
                row["steps"],
                f(row["format"]),
                f(row["accuracy"]),
                f(row["J"]),
                f(row["consistency"]),
                f"{f(row['J_anomalous'])} ({f(row['J_anomalous_sd'])})",
                f"{f(row['J_normal'])} ({f(row['J_normal_sd'])})",
                f(row["R_cons_anomalous"]),
                f(row["R_cons_normal"]),
                f(row["reward_std"]),
                f(row["learning"]),
            )
    console.print(t)
    s = Table(
        "arm",
        "steps",
        "steps w/ reward var.",
        "mean J",
        "max |lora_B|",
        "train s",
        "cal+eval s",
        title="train_run.json summary",
    )
    for name, arm in arms.items():
        sm = arm["record"]["summary"]
        s.add_row(
            name,
            str(sm["n_logged_steps"]),
            f(sm["frac_steps_nonzero_reward_std"]),
            f(sm["J_mean"]),
            f"{sm['max_abs_lora_B']:.2e}",
            f"{arm['seconds']['train']:.0f}",
            f"{arm['seconds']['calibrate+evaluate']:.0f}",
        )
    console.print(s)
    cgro = arms["CGRO"]["metrics"]
    combined = {**cgro, "baselines": {"R1": {"datasets": arms["R1"]["metrics"]["datasets"]}, **cgro["baselines"]}}
    console.print(
        comparison_table(combined, title="R1 vs CGRO vs baselines (AUROC %, 95% bootstrap interval)", model_name="CGRO")
    )


def plot(arms: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from readl.evaluation.evaluate import MODES

    datasets = list(arms["CGRO"]["metrics"]["datasets"])
    fig, axes = plt.subplots(1, 3 + len(datasets), figsize=(4.2 * (3 + len(datasets)), 3.6))
    panels = {
        "format": ("format",),
        "accuracy": ("accuracy",),
        "J (solid: anomalous, dashed: normal)": ("J_anomalous", "J_normal"),
    }
    for ax, (title, names) in zip(axes, panels.items()):
        for (arm, d), color in zip(arms.items(), ("tab:blue", "tab:orange")):
            for name, style in zip(names, ("-", "--")):
                pts = sorted(d["curves"].get(name, {}).items())
                if pts:
                    ax.plot(*zip(*pts), style, color=color, label=f"{arm} {name}", lw=0.8)
        ax.set(title=f"{title} (train rollouts)", xlabel="step")
        ax.legend(fontsize=7)
    for ax, ds in zip(axes[3:], datasets):
        systems = {"R1": arms["R1"]["metrics"], "CGRO": arms["CGRO"]["metrics"]}
        systems.update(arms["CGRO"]["metrics"].get("baselines", {}))
        labels, vals, errs = [], [], []
        for sname, m in systems.items():
            d = m["datasets"].get(ds)
            if d is None:
                continue
            entries = (
                [(f"{sname}:{mode}", d["modes"][mode]) for mode in MODES] if "modes" in d else [(sname, d["pixel"])]
            )
            for label, e in entries:
                v = e["AUROC"] if e["AUROC"] is not None else float("nan")
                ci = e.get("AUROC_ci") or [v, v]
                lo, hi = (c if c is not None else v for c in ci)
                labels.append(label)
                vals.append(v)
                errs.append((max(v - lo, 0), max(hi - v, 0)))
        ax.barh(range(len(vals)), vals, xerr=list(zip(*errs)) if errs else None, color="tab:blue")
        ax.set_yticks(range(len(vals)), labels, fontsize=6)
        ax.axvline(0.5, color="grey", lw=0.8)
        ax.set(title=f"pixel AUROC, {ds}", xlim=(0, 1))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warmup-steps", type=int, default=None, help="warmup.max_steps (default: params.yaml)")
    ap.add_argument("--train-steps", type=int, default=None, help="train.max_steps (default: params.yaml)")
    ap.add_argument("--train-lr", type=float, default=None, help="train.learning_rate (default: params.yaml)")
    ap.add_argument(
        "--eval-per-image",
        type=int,
        default=None,
        help="synthetic eval variants per normal image (default: params.yaml)",
    )
    ap.add_argument("--max-new-tokens", type=int, default=None, help="model.max_new_tokens at evaluation")
    ap.add_argument("--bootstrap", type=int, default=None, help="evaluate.bootstrap_resamples")
    ap.add_argument("--block", type=int, default=10, help="train steps per block of the learning table")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=RESULTS / "learning_check.png", help="the plot")
    ap.add_argument(
        "-S",
        dest="set",
        action="append",
        default=[],
        help="params override key=value, e.g. -S train.num_generations=8 (applied to both arms)",
    )
    ap.add_argument(
        "--reuse-arms",
        action="store_true",
        help="keep <workdir>/runs/<arm> trained by an interrupted earlier run (same params): calibrate and "
        "evaluate them only",
    )
    ap.add_argument(
        "--reuse-warmup",
        action="store_true",
        help="keep <workdir>/models/warmup of an earlier run with the same warmup params (probes of train)",
    )
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = (a.workdir or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        (work / "data").mkdir(exist_ok=True)
        if not (work / "data" / "raw").exists():
            (work / "data" / "raw").symlink_to(REPO / "data" / "raw")
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlruns.db'}"
        with chdir(work):
            params_dict = scratch_params(work, a)
            from typer.testing import CliRunner

            from readl.cli import app
            from readl.config import Params
            from readl.stages.warmup import run as warmup

            seconds = {}
            t0 = time.perf_counter()
            res = CliRunner().invoke(app, ["curate"])
            if res.exit_code != 0:
                raise SystemExit(f"curate failed:\n{res.output}")
            seconds["curate"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            if not (a.reuse_warmup and (work / "models" / "warmup" / "config.json").is_file()):
                warmup(Params.model_validate(params_dict), output_dir="models")  # ONE warm start for both arms
            seconds["warmup"] = time.perf_counter() - t0
            arms = {name: run_arm(name, params_dict, work, a.reuse_arms) for name in ARMS}
        print_tables(arms, a.block)
        print(
            "wall time (s): "
            + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())
            + "; "
            + ", ".join(
                f"{n} train {d['seconds']['train']:.0f}, calibrate+evaluate {d['seconds']['calibrate+evaluate']:.0f}"
                for n, d in arms.items()
            )
        )
        plot(arms, a.out)
        summary = {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
            "seconds": seconds,
            "arms": {
                n: {
                    "summary": d["record"]["summary"],
                    "seconds": d["seconds"],
                    "blocks": block_means(d["curves"], a.block),
                    "datasets": d["metrics"]["datasets"],
                }
                for n, d in arms.items()
            },
            "baselines": arms["CGRO"]["metrics"].get("baselines", {}),
        }
        from readl.evaluation.report import write_metrics

        write_metrics(a.out.with_suffix(".json"), summary)
        print(f"plot: {a.out}; numbers: {a.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
