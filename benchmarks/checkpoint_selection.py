"""Two levers against the seed-decided warm start (README "One result per commit"), measured per warm-up checkpoint.

Per seed: `readl warmup` with every checkpoint kept (``warmup.save_total_limit: null``, ``keep_checkpoints:
true``), then the image AUROC of P(Yes) (a malformed answer: evaluate's fallback score) on the calibration split
and on the eval split, for each checkpoint and for the uniform weight average of the last ``--average`` of them
(SWA over the cosine tail). The question: would picking the checkpoint with the best CALIBRATION AUROC (image-level
labels only), or averaging the tail, avoid the inverted runs? The eval numbers are read, never used to choose.

The curated data gets 16 synthetic DRAEM anomalies of the calibration normals (``-S`` below), so the calibration
split holds the kind of anomaly the synthetic eval set has. 2 threads; about 5 min per seed on 2 cores.

    python benchmarks/checkpoint_selection.py --seeds 0 1 2 --work /tmp/ckpt
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CALIB_SYNTHETIC = {
    "name": "synthetic",
    "layout": "synthetic",
    "root": ".",
    "options": {
        "base": ["hazelnut_toy", "mpdd_derived", "bottle"],
        "recipes": ["draem"],
        "texture": "procedural",
        "per_image": 1,
        "seed": 1,
    },
}


def readl(args: list[str], cwd: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlruns.db'}"}
    with open(cwd / "log.txt", "a") as log:
        done = subprocess.run(
            [str(Path(sys.executable).with_name("readl")), *args],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    if done.returncode:
        raise SystemExit(f"readl {' '.join(args)} failed in {cwd}; see {cwd / 'log.txt'}")


def average(folders: list[Path], dst: Path) -> Path:
    """A model folder whose weights are the uniform mean of ``folders``' ``model.safetensors`` (float tensors)."""
    from safetensors.torch import load_file, save_file

    if not dst.exists():
        shutil.copytree(folders[-1], dst)
        sds = [load_file(f / "model.safetensors") for f in folders]
        avg = {
            k: (sum(sd[k].double() for sd in sds) / len(sds)).to(v.dtype) if v.is_floating_point() else v
            for k, v in sds[0].items()
        }
        save_file(avg, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def aurocs(params, model: Path, work: Path) -> dict:
    """Image AUROC of P(Yes) per split (``all``) and per source with both labels."""
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from readl.evaluation.decision import image_score
    from readl.predictor import build_predictor, open_image

    pred = build_predictor(params, str(model), None, device="cpu")
    out = {}
    for split in ("calib", "eval"):
        df = pd.read_parquet(work / f"data/curated/{split}.parquet")
        scores = []
        for i in range(0, len(df), 8):
            ims = [open_image(work / p) for p in df["image_path"].iloc[i : i + 8]]
            scores += [image_score(p.score, p.parsed.answer is None, "fallback") for p in pred.predict(ims)]
        df = df.assign(score=scores)
        out[split] = {"all": roc_auc_score(df.label, df.score)}
        out[split].update(
            {src: roc_auc_score(g.label, g.score) for src, g in df.groupby("source") if g.label.nunique() == 2}
        )
    return out


def main() -> None:
    from readl.config import Params
    from readl.runtime import configure

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--average", type=int, default=4, help="checkpoints in the tail average")
    ap.add_argument("--work", type=Path, required=True)
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["curate"]["calib"].append(CALIB_SYNTHETIC)
    p["runtime"]["threads"] = 2
    p["warmup"].update(save_total_limit=None, keep_checkpoints=True)
    if not (work / "data/curated/calib.parquet").is_file():
        (work / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
        readl(["curate", "--raw", str(ROOT / "data/raw"), "--out", "data/curated"], work)
    rows = {}
    for seed in args.seeds:
        run = work / f"s{seed}"
        run.mkdir(exist_ok=True)
        (run / "data").unlink(missing_ok=True)
        (run / "data").symlink_to(work / "data")
        p["warmup"]["seed"] = p["train"]["seed"] = seed
        (run / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
        if not (run / "models/warmup_run.json").is_file():
            readl(["warmup"], run)
        params = Params.model_validate(p)
        configure(params.runtime)
        ckpts = sorted(
            (run / "models/warmup_checkpoints").glob("checkpoint-*"), key=lambda q: int(q.name.split("-")[1])
        )
        models = {c.name: c for c in ckpts}
        models[f"average of the last {args.average}"] = average(ckpts[-args.average :], run / "models/average")
        for name, folder in models.items():
            rows[(seed, name)] = r = aurocs(params, folder, run)
            print(
                json.dumps(
                    {
                        "seed": seed,
                        "model": name,
                        **{f"{s}.{k}": round(v, 3) for s, d in r.items() for k, v in d.items()},
                    }
                ),
                flush=True,
            )
    from tabulate import tabulate

    table = []
    for seed in args.seeds:
        names = [n for (s, n) in rows if s == seed]
        ckpts = [n for n in names if n.startswith("checkpoint-")]
        best = max(ckpts, key=lambda n: (rows[(seed, n)]["calib"]["all"], int(n.split("-")[1])))  # ties: the later
        for label, n in (("final", ckpts[-1]), (f"best on calib ({best})", best), (names[-1], names[-1])):
            r = rows[(seed, n)]
            table.append(
                [
                    seed,
                    label,
                    f"{r['calib']['all']:.3f}",
                    f"{r['eval'].get('synthetic', float('nan')):.3f}",
                    f"{r['eval'].get('mvtec_ad', float('nan')):.3f}",
                ]
            )
    print(tabulate(table, headers=["seed", "warm start", "calib AUROC", "synthetic AUROC", "grid AUROC"]))


if __name__ == "__main__":
    main()
