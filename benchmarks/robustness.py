"""Does the default recipe's result survive a change of seed or thread count?

Runs the pipeline (curate once; then per run warmup -> train -> calibrate -> evaluate, model baselines off
unless ``--baselines`` names some, e.g. ``warmup``: the warm start's image AUROC per dataset is then a column) for
every (seed, threads, isa) triple in a scratch folder, with ``warmup.seed = train.seed = seed`` and
``runtime.threads = threads``, and prints per run the image AUROC, the pixel AUROC (modes ``both`` and ``all``)
and the format rate per eval dataset, then min / median / max over the runs. ``--isa avx2`` runs a stage with
the CPU kernels another machine would use (``ATEN_CPU_CAPABILITY``, ``MKL_ENABLE_INSTRUCTIONS``,
``ONEDNN_MAX_CPU_ISA`` capped at AVX2): a stand-in for "a fresh clone on another machine", whose different
floating-point path is what the seed cannot fix. ``-S key=value`` overrides
params.yaml as ``dvc exp run -S`` does (a lever to try); the curated data never changes between runs.

    python benchmarks/robustness.py                       # 3 seeds x 2 thread counts, params.yaml as is
    python benchmarks/robustness.py -S warmup.balance=false --label no-balance
    python benchmarks/robustness.py --seeds 0 --threads 2 --repeat 2   # determinism: identical bytes?
    python benchmarks/robustness.py --threads 2 --isa native avx2      # the other-machine axis

Targets (README "One result per commit"): no image AUROC < 0.5 on any dataset, synthetic image AUROC min >= 0.75 and
max - min <= 0.10. About 7 min per run on 2 idle cores.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from readl.presets import set_dotted

ROOT = Path(__file__).resolve().parents[1]
STAGES = (["warmup"], ["train"], ["calibrate"], ["evaluate"])


def override(params: dict, assignments: list[str]) -> dict:
    """Apply ``key.sub=value`` assignments (value parsed as YAML) to a nested params dict, in place."""
    for a in assignments:
        key, _, value = a.partition("=")
        set_dotted(params, key, yaml.safe_load(value))
    return params


ISA = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}


def digest(folder: Path) -> str:
    """SHA-256 over the relative names and bytes of every file under ``folder`` (first 12 hex digits), but
    ``readl_base.json`` (it names the MLflow run, a new id per run)."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != "readl_base.json":
            h.update(str(p.relative_to(folder)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:12]


def readl(args: list[str], cwd: Path, log, isa: str = "native") -> None:
    """Run ``readl ARGS`` in ``cwd`` (MLflow in the run's own sqlite file, CPU kernels ``ISA[isa]``); its output
    goes to ``log``."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlruns.db'}", "COLUMNS": "200", **ISA[isa]}
    exe = Path(sys.executable).with_name("readl")
    done = subprocess.run([str(exe), *args], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"readl {' '.join(args)} failed in {cwd} (exit {done.returncode}); see {log.name}")


def one_run(
    work: Path, base: dict, seed: int, threads: int, isa: str, tag: str, baselines: tuple[str, ...] = ()
) -> dict:
    run = work / f"run-s{seed}-t{threads}-{isa}{tag}"
    run.mkdir()
    (run / "data").symlink_to(work / "data")
    params = override(
        json.loads(json.dumps(base)),
        [
            f"warmup.seed={seed}",
            f"train.seed={seed}",
            f"runtime.threads={threads}",
            f"evaluate.baselines={json.dumps(list(baselines))}",
        ],
    )
    (run / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    t0 = time.perf_counter()
    with open(run / "log.txt", "w") as log:
        for stage in STAGES:
            readl(stage, run, log, isa)
    m = json.loads((run / "metrics.json").read_text())
    numbers = json.dumps({k: v for k, v in m.items() if k != "runtime"}, sort_keys=True)  # runtime names threads
    row = {
        "seed": seed,
        "threads": threads,
        "isa": isa,
        "minutes": round((time.perf_counter() - t0) / 60, 1),
        "adapter": digest(run / "models/adapter"),
        "warmup": digest(run / "models/warmup"),
        "metrics": hashlib.sha256(numbers.encode()).hexdigest()[:12],
    }
    for ds, d in m["datasets"].items():
        row[f"{ds}.image_AUROC"] = d["image"]["AUROC"]
        row[f"{ds}.image_AUROC_ci"] = d["image"].get("AUROC_ci")
        row[f"{ds}.pixel_AUROC_both"] = d["modes"]["both"]["AUROC"]
        row[f"{ds}.pixel_AUROC_all"] = d["modes"]["all"]["AUROC"]
        row[f"{ds}.format_rate"] = d["format_rate"]
    for name, b in m.get("baselines", {}).items():  # e.g. the warm start: is the spread the warm-up's or CGRO's?
        for ds, d in b.get("datasets", {}).items():
            row[f"{ds}.image_AUROC_{name}"] = d["image"]["AUROC"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--isa", nargs="+", default=["native"], choices=sorted(ISA), help="CPU kernel sets (see above)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per (seed, threads): >1 checks byte-identity")
    ap.add_argument("-S", dest="set", action="append", default=[], help="params override key=value (a lever)")
    ap.add_argument("--label", default="default", help="name of this configuration in the table and CSV")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    ap.add_argument(
        "--baselines", nargs="*", default=[], help="evaluate.baselines to run too, e.g. warmup (default: none)"
    )
    ap.add_argument("--csv", type=Path, default=None, help="append each run's row to this CSV as the run ends")
    args = ap.parse_args()

    base = override(yaml.safe_load(args.params.read_text()), args.set)
    work = args.work or Path(tempfile.mkdtemp(prefix="readl-robustness-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "params.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    source = args.params if args.params != ROOT / "params.yaml" else "params.yaml"
    print(f"robustness [{args.label}]: {source} {' '.join(args.set) or 'as is'}; scratch {work}", flush=True)
    with open(work / "curate.log", "w") as log:
        readl(["curate", "--raw", str(ROOT / "data/raw"), "--out", "data/curated"], work, log)

    rows = []
    for seed in args.seeds:
        for threads in args.threads:
            for isa in args.isa:
                for r in range(args.repeat):
                    tag = f"-r{r}" if args.repeat > 1 else ""
                    row = one_run(work, base, seed, threads, isa, tag, tuple(args.baselines))
                    rows.append({"label": args.label, **row})
                    print(json.dumps(rows[-1]), flush=True)
                    if args.csv:  # each run's row as it ends: a stopped or crashed sweep keeps its finished runs
                        append_rows(args.csv, rows[-1:])
    print_table(rows)


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append ``rows`` to the CSV at ``path``; a column the file lacks (a new eval dataset) widens the header, the
    older rows left blank there. The file is replaced atomically."""
    old, fields = [], []
    if path.exists():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            old, fields = list(reader), list(reader.fieldnames or [])
    fields += [k for r in rows for k in r if k not in fields]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(fields)))
        w.writeheader()
        w.writerows(old + rows)
    tmp.replace(path)


def print_table(rows: list[dict]) -> None:
    from tabulate import tabulate

    metrics = [k for k in rows[0] if "." in k and not k.endswith("_ci")]

    def fmt(v) -> str:
        return "n/a" if v is None or v != v else f"{v:.3f}"

    def over_runs(fn, k):  # over the runs where the metric is defined
        vals = [r[k] for r in rows if r[k] is not None and r[k] == r[k]]
        return fn(vals) if vals else None

    body = [
        [
            r["label"],
            r["seed"],
            r["threads"],
            r["isa"],
            *(fmt(r[k]) for k in metrics),
            r["warmup"],
            r["adapter"],
            r["metrics"],
            r["minutes"],
        ]
        for r in rows
    ]
    for name, fn in (("min", min), ("median", statistics.median), ("max", max)):
        body.append([name, "", "", "", *(fmt(over_runs(fn, k)) for k in metrics), "", "", "", ""])
    print(
        tabulate(
            body,
            headers=[
                "config",
                "seed",
                "threads",
                "isa",
                *metrics,
                "warm start sha",
                "adapter sha",
                "metrics sha",
                "min",
            ],
        )
    )
    syn = [r["synthetic.image_AUROC"] for r in rows if "synthetic.image_AUROC" in r]
    inverted = sum(any((r[k] or 0.5) < 0.5 for k in metrics if k.endswith("image_AUROC")) for r in rows)
    if syn:
        print(
            f"targets: runs with an image AUROC < 0.5: {inverted} (target 0); synthetic image AUROC min "
            f"{min(syn):.3f} (>= 0.75), max - min {max(syn) - min(syn):.3f} (<= 0.10)"
        )
    widths = {  # widest 95% interval of each dataset's image AUROC over the runs (target <= 0.15)
        k.removesuffix(".image_AUROC_ci"): max(r[k][1] - r[k][0] for r in rows if r.get(k))
        for k in rows[0]
        if k.endswith(".image_AUROC_ci") and any(r.get(k) for r in rows)
    }
    if widths:
        print(
            "image AUROC 95% interval width, widest run (<= 0.15): "
            + ", ".join(f"{k} {w:.2f}" for k, w in widths.items())
        )


if __name__ == "__main__":
    main()
