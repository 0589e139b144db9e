"""The one reader of curated split manifests (``data/curated/{train,calib,eval}.parquet``).

Every stage reads its split through :func:`read_manifest`: the same file check, column check and error
messages (each names the file and the command that writes it). Stage-specific checks (training labels,
image files present) are added by the callers on top (:func:`readl.training.data.load_manifest`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

__all__ = ["CURATE_HINT", "SPLIT_COLUMNS", "read_manifest"]

CURATE_HINT = "run `readl curate` (or `dvc repro curate`) first"
SPLIT_COLUMNS = ("image_path", "label", "source", "category")
"""Columns every curated split has (the full list: readl.data.schema)."""


def read_manifest(
    path: str | os.PathLike[str],
    columns: Sequence[str] = SPLIT_COLUMNS,
    *,
    allow_empty: bool = False,
    what: str = "manifest",
    inside: Path | None = None,
    schema: bool = False,
    require_masks: bool = False,
) -> pd.DataFrame:
    """Read the Parquet (or ``.csv``) manifest ``path`` and check it has ``columns`` and at least one row.

    Args:
        path: the manifest file.
        columns: required column names.
        allow_empty: accept a manifest without rows (curate's calib split may be empty).
        what: how the messages name the file (``"manifest"``, ``"training manifest"``).
        inside: when given, every ``image_path`` / ``mask_path`` (relative to it, or absolute) must lie inside
            this folder (the project: the pipeline's splits never point elsewhere).
        schema: validate the columns it has against curate's schema (:func:`readl.data.schema.validate_manifest`:
            labels 0 / 1, ``good`` exactly on normal rows, unique non-null image paths ...) before any model loads.
        require_masks: with ``schema``, every anomalous row needs a ``mask_path`` (the eval split).

    Returns:
        The manifest as written (one row per image; ``image_path`` relative to the repository root).

    Raises:
        FileNotFoundError: ``path`` does not exist (the message says to run ``readl curate``).
        ValueError: a required column is missing, the manifest is empty and ``allow_empty`` is False, a path
            lies outside ``inside`` (the message names the row, the path and the fix), or (``schema``) a row breaks
            the schema (:class:`readl.data.schema.ManifestError`, naming the file and every failing row).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found; {CURATE_HINT}")
    df = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} {path} lacks column(s) {missing}; re-run `readl curate` (or `dvc repro curate`)")
    if df.empty and not allow_empty:
        raise ValueError(
            f"{what} {path} is empty (no images); {CURATE_HINT}, and check the `curate:` section of params.yaml"
        )
    if schema:
        _validate(df, path, what, require_masks)
    if inside is not None:
        root = Path(os.path.abspath(inside))  # by the paths' text: a data/ folder linked to another disk is fine
        for column in ("image_path", "mask_path"):
            for row, value in zip(df.index, df[column] if column in df.columns else []):
                if isinstance(value, str) and value and root not in Path(os.path.abspath(root / value)).parents:
                    raise ValueError(
                        f"{what} {path}, row {row}: {column} {value!r} lies outside the project {root}; "
                        f"its splits hold paths inside it ({CURATE_HINT})"
                    )
    return df


def _validate(df: pd.DataFrame, path: Path, what: str, require_masks: bool) -> None:
    """curate's schema on the columns ``df`` has (a hand-made manifest may hold only :data:`SPLIT_COLUMNS`)."""
    from readl.data.schema import MANIFEST_COLUMNS, OPTIONAL_COLUMNS, ManifestError, validate_manifest

    try:
        validate_manifest(df, require_masks, columns=[c for c in (*MANIFEST_COLUMNS, *OPTIONAL_COLUMNS) if c in df])
    except ManifestError as err:
        raise ManifestError(
            f"{what} {path}: {err}\n(fix the file, or re-make it: {CURATE_HINT})", err.failure_cases
        ) from None
