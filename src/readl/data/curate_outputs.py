"""The curated folder's files: the split manifests, ``rejected.csv`` / ``leakage.csv``, ``summary.json``
(written by :func:`readl.data.curate.curate`), and reading a split back (:func:`read_manifest`,
:func:`load_split`)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .curate_sources import SPLITS, Stratum

if TYPE_CHECKING:
    import datasets
    import pandas as pd

    from readl.config import CurateConfig

    from .references import References

__all__ = ["LEAKAGE_COLUMNS", "MANIFEST_EXTRA_COLUMNS", "REJECTED_COLUMNS", "load_split", "read_manifest"]

REJECTED_COLUMNS = ("source", "image_path", "mask_path", "reason")
LEAKAGE_COLUMNS = (
    "split",
    "source",
    "image_path",
    "phash",
    "eval_source",
    "eval_image_path",
    "eval_phash",
    "distance",
    "ssim",
)
MANIFEST_EXTRA_COLUMNS = ("raw_image_path", "raw_mask_path", "reference")


def build_manifest(strata: list[Stratum], size: int, prefix: str, references: References) -> pd.DataFrame:
    import pandas as pd

    from .schema import MANIFEST_COLUMNS

    rows = []
    for s in strata:
        for cand, digest, image_out, mask_out in s.accepted:
            r = cand.record
            rows.append(
                {
                    "source": r.source,
                    "category": r.category,
                    "split": r.split,
                    "label": r.label,
                    "defect_type": r.defect_type,
                    "image_path": f"{prefix}/{image_out}",
                    "mask_path": None if mask_out is None else f"{prefix}/{mask_out}",
                    "phash": digest,
                    "width": size,
                    "height": size,
                    "raw_image_path": cand.image_rel,
                    "raw_mask_path": cand.mask_rel,
                    "reference": references(s.entry, r),
                }
            )
    df = pd.DataFrame(rows, columns=[*MANIFEST_COLUMNS, *MANIFEST_EXTRA_COLUMNS])
    numeric = ("label", "width", "height")
    df = df.astype({c: "int64" if c in numeric else "str" for c in df.columns if c != "reference"})
    df["reference"] = df["reference"].astype(object).where(df["reference"].notna(), None)  # str or null
    return df.sort_values(["source", "category", "label", "raw_image_path"], kind="stable", ignore_index=True)


def build_summary(
    cfg: CurateConfig, strata: dict[str, list[Stratum]], rejected: list[dict], leaked: list[dict]
) -> dict[str, Any]:
    splits: dict[str, Any] = {}
    shortfall = 0
    for split in SPLITS:
        sources: dict[str, Any] = {}
        n = Counter()
        for s in strata[split]:
            lab = "anomalous" if s.label else "normal"
            src = sources.setdefault(s.entry.name, {"normal": 0, "anomalous": 0, "requested": {}, "categories": {}})
            src[lab] += len(s.accepted)
            if s.quota is not None:
                src["requested"][lab] = s.quota
            short = 0 if s.quota is None else max(0, s.quota - len(s.accepted))
            if short:
                src.setdefault("shortfall", {})[lab] = short
                shortfall += short
            for cand, *_ in s.accepted:
                cat = src["categories"].setdefault(cand.record.category, {"normal": 0, "anomalous": 0})
                cat[lab] += 1
            n[lab] += len(s.accepted)
        splits[split] = {
            "images": n["normal"] + n["anomalous"],
            "normal": n["normal"],
            "anomalous": n["anomalous"],
            "sources": sources,
        }
    by_source = Counter(r["source"] for r in rejected)
    return {
        "image_size": cfg.image_size,
        "seed": cfg.seed,
        "leakage_max_distance": cfg.leakage_max_distance,
        "leakage_min_ssim": cfg.leakage_min_ssim,
        "splits": splits,
        "rejected": {
            "total": len(rejected),
            "by_source": dict(sorted(by_source.items())),
            "by_reason": dict(sorted(Counter(r["reason"].split(":")[0] for r in rejected).items())),
        },
        "leaked": {"total": len(leaked), "by_source": dict(sorted(Counter(r["source"] for r in leaked).items()))},
        "shortfall": shortfall,
    }


def flat_counts(summary: dict[str, Any]) -> dict[str, int]:
    """The flat, short view of ``summary.json`` that ``dvc metrics show`` prints (``counts.json``): images, normal
    and anomalous per split, then rejected, leaked and the shortfall against the requested counts."""
    flat = {f"{split}.{k}": summary["splits"][split][k] for split in SPLITS for k in ("images", "normal", "anomalous")}
    return {
        **flat,
        "rejected": summary["rejected"]["total"],
        "leaked": summary["leaked"]["total"],
        "shortfall": summary["shortfall"],
    }


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    df.to_parquet(path, index=False, engine="pyarrow", compression="zstd")


def write_csv(rows: list[dict[str, Any]], columns: Sequence[str], path: Path) -> None:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(columns))
    frame = frame.sort_values(list(columns[:3]), kind="stable", na_position="first")
    frame.to_csv(path, index=False, lineterminator="\n")


def read_manifest(name: str, root: str | os.PathLike[str] = "data/curated") -> pd.DataFrame:
    """The manifest ``<root>/<name>.parquet`` as a DataFrame (columns in the module docstring).

    Raises:
        ValueError: ``name`` is not one of :data:`SPLITS`.
        FileNotFoundError: the manifest does not exist (run ``readl curate`` / ``dvc repro curate``).
    """
    from .manifest import read_manifest as read_file

    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
    return read_file(Path(root) / f"{name}.parquet", (), allow_empty=True)


def load_split(
    name: str, root: str | os.PathLike[str] = "data/curated", project_root: str | os.PathLike[str] = "."
) -> datasets.Dataset:
    """A curated split as a Hugging Face ``datasets.Dataset``.

    Args:
        name: ``"train"``, ``"calib"`` or ``"eval"``.
        root: the curated folder.
        project_root: what relative ``image_path`` / ``mask_path`` values are relative to (the
            repository root, where the stage ran).
    Returns:
        One row per image: the manifest columns plus ``image``, a ``datasets.Image()`` column
        (decodes to the 420x420 RGB ``PIL.Image``), and ``mask``, also ``datasets.Image()``
        (mode ``L``, values {0, 255}; ``None`` where a train/calib row has no mask).
    Raises:
        ValueError / FileNotFoundError: as :func:`read_manifest`.
    Source: ``datasets.Image`` feature (https://huggingface.co/docs/datasets/image_load).
    """
    import datasets

    df = read_manifest(name, root)
    base = Path(project_root)
    df["image"] = [str(base / p) for p in df["image_path"]]
    df["mask"] = [None if p is None or p != p else str(base / p) for p in df["mask_path"]]
    ds = datasets.Dataset.from_pandas(df, preserve_index=False)
    ds = ds.cast_column("image", datasets.Image())
    return ds.cast_column("mask", datasets.Image())
