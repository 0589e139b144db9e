"""The curated-manifest contract, as a pandera schema.

One row per curated image. Columns (extra columns, e.g. ``mask_kind``/``mask_ref`` from the source
Record, are allowed and not checked):

============ ============ ===================================================================
column       dtype        rule
============ ============ ===================================================================
source       str          non-empty (benchmark name)
category     str          non-empty
split        str          non-empty (as published by the source)
label        int64        0 (normal) or 1 (anomalous)
defect_type  str          non-empty; ``"good"`` exactly on rows with label 0
image_path   str          non-empty, unique over the manifest
mask_path    str or null  when required (eval manifests): present and non-empty on every
                          anomalous row
phash        str          16 lower-case hex characters (``readl.data.phash.phash``)
width        int64        > 0 (pixels, of the curated image)
height       int64        > 0
reference    str or null  optional column; null or non-empty (reasoning reference,
                          ``readl.data.references``)
============ ============ ===================================================================

:func:`validate_manifest` validates lazily (every failure collected, not just the first) and
raises a ``ValueError`` whose message lists each failing row with its image path, plus pandera's
failure-case table.
"""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaError, SchemaErrors

__all__ = ["MANIFEST_COLUMNS", "OPTIONAL_COLUMNS", "ManifestError", "manifest_schema", "validate_manifest"]

MANIFEST_COLUMNS = (
    "source",
    "category",
    "split",
    "label",
    "defect_type",
    "image_path",
    "mask_path",
    "phash",
    "width",
    "height",
)
OPTIONAL_COLUMNS = ("reference",)
"""Columns checked when present (a manifest without them is valid)."""

_NON_EMPTY = pa.Check.str_length(min_value=1, error="empty string")


class ManifestError(ValueError):
    """A manifest that fails the schema. ``failure_cases`` holds pandera's table (DataFrame)."""

    def __init__(self, message: str, failure_cases: pd.DataFrame) -> None:
        super().__init__(message)
        self.failure_cases = failure_cases


def _normal_iff_good(df: pd.DataFrame) -> pd.Series:
    try:
        return (df["label"] == 0) == (df["defect_type"] == "good")
    except (KeyError, TypeError):  # missing columns are reported by the column checks
        return pd.Series(True, index=df.index)


def _anomalies_have_masks(df: pd.DataFrame) -> pd.Series:
    try:
        mask = df["mask_path"]
        has = mask.notna() & (mask.astype("string").str.len() > 0)
        return (df["label"] != 1) | has.fillna(False).astype(bool)
    except (KeyError, TypeError):
        return pd.Series(True, index=df.index)


def _null_or_nonempty_str(s: pd.Series) -> pd.Series:
    return s.isna() | s.map(lambda v: isinstance(v, str) and len(v) > 0).astype(bool)


def manifest_schema(require_masks: bool) -> pa.DataFrameSchema:
    """The manifest schema.

    Args:
        require_masks: True for manifests whose anomalous rows must carry a mask (the eval split:
            pixel metrics need every anomalous image's mask); False for train/calib manifests,
            which may hold image-level-only sources.
    Returns:
        ``pandera.pandas.DataFrameSchema`` (columns and checks in the module docstring);
        ``strict=False`` (extra columns allowed), ``coerce=False`` (dtypes must already match).
    """
    checks = [
        pa.Check(_normal_iff_good, name="normal_iff_good", error="defect_type must be 'good' exactly when label == 0")
    ]
    if require_masks:
        checks.append(
            pa.Check(
                _anomalies_have_masks,
                name="anomaly_has_mask",
                error="anomalous row without mask_path (masks are required here)",
            )
        )
    return pa.DataFrameSchema(
        {
            "source": pa.Column(str, _NON_EMPTY),
            "category": pa.Column(str, _NON_EMPTY),
            "split": pa.Column(str, _NON_EMPTY),
            "label": pa.Column("int64", pa.Check.isin([0, 1])),
            "defect_type": pa.Column(str, _NON_EMPTY),
            "image_path": pa.Column(str, _NON_EMPTY, unique=True),
            # any dtype so that an all-null column (object, or float64 after a CSV round trip)
            # passes; every non-null value must be a non-empty str
            "mask_path": pa.Column(
                None,
                pa.Check(_null_or_nonempty_str, name="null_or_path", error="mask_path must be null or a non-empty str"),
                nullable=True,
            ),
            "phash": pa.Column(str, pa.Check.str_matches(r"^[0-9a-f]{16}$", error="phash must be 16 hex chars")),
            "width": pa.Column("int64", pa.Check.gt(0)),
            "height": pa.Column("int64", pa.Check.gt(0)),
            "reference": pa.Column(
                None,
                pa.Check(_null_or_nonempty_str, name="null_or_text", error="reference must be null or a non-empty str"),
                nullable=True,
                required=False,
            ),
        },
        checks=checks,
        strict=False,
        coerce=False,
        name="manifest_eval" if require_masks else "manifest",
    )


def _describe(df: pd.DataFrame, fc: pd.DataFrame) -> str:
    """One line per failing row (with its image path), then schema-level problems."""
    lines: list[str] = []
    paths = df["image_path"] if "image_path" in df.columns else None
    rows: dict[object, list[str]] = {}
    general: list[str] = []
    for _, f in fc.iterrows():
        check = str(f.get("check"))
        col = f.get("column")
        idx = f.get("index")
        if idx is None or (isinstance(idx, float) and pd.isna(idx)):
            general.append(f"  {col}: {check} (failure case: {f.get('failure_case')!r})")
            continue
        what = (
            check if f.get("schema_context") == "DataFrameSchema" else f"{col}={f.get('failure_case')!r} fails {check}"
        )
        msgs = rows.setdefault(idx, [])
        if what not in msgs:
            msgs.append(what)
    for idx in sorted(rows, key=lambda i: (str(type(i)), i)):
        where = ""
        if paths is not None and idx in df.index:
            where = f" ({df.at[idx, 'image_path']})"
        lines.append(f"  row {idx}{where}: " + "; ".join(rows[idx]))
    head = f"manifest failed validation: {len(rows)} failing row(s)" + (
        f", {len(general)} column/schema problem(s)" if general else ""
    )
    return "\n".join([head, *general, *lines])


def _collapse(fc: pd.DataFrame) -> pd.DataFrame:
    """Dataframe-level checks report one failure per column of a failing row: keep one, with the
    row's image path as the failure case."""
    fc = fc.copy()
    frame_level = (fc["schema_context"] == "DataFrameSchema") & fc["index"].notna()
    keep = fc[~frame_level]
    rows = fc[frame_level & (fc["column"] == "image_path")].copy()
    missing = fc[frame_level].drop_duplicates(["check", "index"])
    missing = missing[~missing.set_index(["check", "index"]).index.isin(rows.set_index(["check", "index"]).index)]
    rows = pd.concat([rows, missing.assign(failure_case=None)])
    rows["column"] = None
    return pd.concat([keep, rows])


def validate_manifest(df: pd.DataFrame, require_masks: bool, columns: list[str] | None = None) -> pd.DataFrame:
    """Validate a manifest lazily and return it unchanged when valid.

    Args:
        df: the manifest (columns in :data:`MANIFEST_COLUMNS`, dtypes as in the module docstring).
        require_masks: see :func:`manifest_schema`.
        columns: check only these columns (a stage's reader: the ones the file has); default all.
    Returns:
        The validated DataFrame (pandera's output; same data).
    Raises:
        ManifestError (a ValueError): one or more failures. The message lists every failing row
            (index and image path, with each failed rule), column-level problems (missing
            column, wrong dtype), and pandera's failure-case table; ``.failure_cases`` holds the
            table as a DataFrame.
    Source: pandera lazy validation (``DataFrameSchema.validate(lazy=True)`` -> ``SchemaErrors``).
    """
    schema = manifest_schema(require_masks)
    if columns is not None:
        schema = schema.select_columns(columns)
    try:
        return schema.validate(df, lazy=True)
    except SchemaErrors as exc:
        fc = _collapse(exc.failure_cases)
    except SchemaError as exc:  # pragma: no cover - lazy=True collects; kept for safety
        fc = pd.DataFrame(
            [
                {
                    "schema_context": "DataFrameSchema",
                    "column": None,
                    "check": str(exc),
                    "check_number": None,
                    "failure_case": None,
                    "index": None,
                }
            ]
        )
    fc = fc.reset_index(drop=True)
    table = fc.to_string(index=False, max_rows=200, max_colwidth=80)
    message = f"{_describe(df, fc)}\n\npandera failure cases:\n{table}"
    raise ManifestError(message, fc)
