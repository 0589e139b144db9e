"""readl.data.schema: the manifest contract, lazy validation and readable errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from readl.data.phash import decode_resize_hash
from readl.data.schema import MANIFEST_COLUMNS, OPTIONAL_COLUMNS, ManifestError, manifest_schema, validate_manifest
from readl.data.sources import read_source, records_to_frame

SAMPLE = Path(__file__).parents[3] / "data/raw"


def row(**kw) -> dict:
    base = dict(
        source="mvtec_ad",
        category="grid",
        split="test",
        label=1,
        defect_type="bent",
        image_path="a.png",
        mask_path="a_mask.png",
        phash="0123456789abcdef",
        width=420,
        height=420,
    )
    base.update(kw)
    return base


@pytest.fixture(scope="module")
def grid_manifest() -> pd.DataFrame:
    """A real manifest: the bundled MVTec grid through the adapter and the decode fast path."""
    frame = records_to_frame(read_source("mvtec", SAMPLE / "mvtec_ad", categories=["grid"]))
    hashes, sizes = [], []
    for p in frame["image_path"]:
        arr, h = decode_resize_hash(p, (112, 112))
        hashes.append(h)
        sizes.append(arr.shape[:2])
    frame["phash"] = hashes
    frame["height"] = [s[0] for s in sizes]
    frame["width"] = [s[1] for s in sizes]
    return frame


def test_real_manifest_is_valid(grid_manifest):
    assert set(MANIFEST_COLUMNS) <= set(grid_manifest.columns)
    out = validate_manifest(grid_manifest, require_masks=True)
    assert len(out) == 24
    test_only = grid_manifest[grid_manifest["split"] == "test"]
    validate_manifest(test_only, require_masks=True)


def test_lazy_validation_reports_every_failing_row():
    df = pd.DataFrame(
        [
            row(image_path="ok.png"),
            row(image_path="nomask.png", mask_path=None),
            row(image_path="dup.png"),
            row(image_path="dup.png", mask_path="other.png"),
            row(image_path="badlabel.png", label=2),
            row(image_path="badhash.png", phash="XYZ"),
            row(image_path="zerowidth.png", width=0),
            row(image_path="normal_named.png", label=0, defect_type="bent", mask_path=None),
        ]
    )
    with pytest.raises(ManifestError) as e:
        validate_manifest(df, require_masks=True)
    err = e.value
    assert isinstance(err, ValueError)
    msg = str(err)
    assert "7 failing row(s)" in msg
    for name in ("nomask.png", "dup.png", "badlabel.png", "badhash.png", "zerowidth.png", "normal_named.png"):
        assert name in msg
    assert "ok.png" not in msg.split("pandera failure cases")[0]
    assert "anomalous row without mask_path" in msg and "field_uniqueness" in msg
    assert "isin([0, 1])" in msg and "greater_than(0)" in msg
    assert "pandera failure cases" in msg  # the table itself is in the message
    fc = err.failure_cases
    assert set(fc["index"].dropna()) == {1, 2, 3, 4, 5, 6, 7}


def test_masks_required_only_when_asked():
    df = pd.DataFrame(
        [row(image_path="x.png", mask_path=None), row(image_path="y.png", label=0, defect_type="good", mask_path=None)]
    )
    validate_manifest(df, require_masks=False)
    with pytest.raises(ManifestError, match=r"row 0 \(x.png\): anomalous row without mask_path"):
        validate_manifest(df, require_masks=True)
    empty = pd.DataFrame([row(image_path="x.png", mask_path="")])
    with pytest.raises(ManifestError, match="mask_path"):
        validate_manifest(empty, require_masks=True)


def test_missing_column_and_wrong_dtype_are_reported():
    df = pd.DataFrame([row()]).drop(columns=["phash"])
    df["width"] = df["width"].astype(float)
    with pytest.raises(ManifestError) as e:
        validate_manifest(df, require_masks=False)
    msg = str(e.value)
    assert "phash" in msg and "column_in_dataframe" in msg and "width" in msg


def test_all_null_mask_column_from_csv_round_trip(tmp_path):
    df = pd.DataFrame([row(image_path=f"{i}.png", label=0, defect_type="good", mask_path=None) for i in range(3)])
    p = tmp_path / "m.csv"
    df.to_csv(p, index=False)
    back = pd.read_csv(p)
    assert back["mask_path"].dtype == "float64"
    validate_manifest(back, require_masks=True)


def test_schema_object():
    s = manifest_schema(require_masks=True)
    assert set(MANIFEST_COLUMNS) | set(OPTIONAL_COLUMNS) == set(s.columns)
    assert [c.name for c in s.checks] == ["normal_iff_good", "anomaly_has_mask"]
    assert [c.name for c in manifest_schema(require_masks=False).checks] == ["normal_iff_good"]


def test_reference_column_is_optional_and_null_or_text():
    df = pd.DataFrame([row(image_path="a.png"), row(image_path="b.png")])
    validate_manifest(df, require_masks=True)  # no reference column: valid
    validate_manifest(df.assign(reference=["A bent wire.", None]), require_masks=True)
    with pytest.raises(ManifestError, match=r"row 1 \(b.png\): reference=''"):
        validate_manifest(df.assign(reference=["A bent wire.", ""]), require_masks=True)
