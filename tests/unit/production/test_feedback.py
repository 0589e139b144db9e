"""Verdicts back into training: the export (conflicts reported, not guessed), the feedback layout curate reads,
the params entry, and the agreement of decisions with verdicts."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml
from store_fill import fill

from readl.config import load_params
from readl.data.sources import read_source
from readl.production.agreement import agreement, agreement_plot, verdict_frame
from readl.production.feedback import add_source, entry_line, export


def test_export_writes_agreed_verdicts_and_reports_conflicts(store, tmp_path, sample_dir):
    h = fill(store, tmp_path / "home", sample_dir, [0.9, 0.2, 0.6, 0.4])
    store.add_verdict(h[0], "alice", "ng", "r-000000001", defect_type="scratch")
    store.add_verdict(h[0], "bob", "ng", "r-000000002", defect_type="dent")  # NG both: kept, type unknown
    store.add_verdict(h[1], "alice", "ok", "r-000000003")
    store.add_verdict(h[2], "alice", "ok", "r-000000004")
    store.add_verdict(h[2], "bob", "ng", "r-000000005")  # OK vs NG: a conflict
    out = tmp_path / "raw" / "feedback"
    with pytest.raises(ValueError, match="category"):
        export(store, "../x", out)
    result = export(store, "metal_plate", out)
    assert (result.ok, result.ng) == (1, 1)
    assert [c["image_hash"] for c in result.conflicts] == [h[2]]
    rows = list(csv.DictReader(open(out / "labels.csv")))
    by = {r["image"].split("/")[1][:64]: r for r in rows}
    assert set(by) == {h[0], h[1]}
    assert (by[h[0]]["label"], by[h[0]]["defect_type"]) == ("1", "unknown")
    assert (by[h[1]]["label"], by[h[1]]["defect_type"]) == ("0", "good")
    assert {r["category"] for r in rows} == {"metal_plate"}
    assert json.loads((out / "export.json").read_text())["conflicts"] == 1
    recs = list(read_source("feedback", out, source="feedback"))
    assert sorted((r.label, r.split, r.mask_path, r.category) for r in recs) == [
        (0, "train", None, "metal_plate"),
        (1, "train", None, "metal_plate"),
    ]
    assert all(r.image_path.is_file() for r in recs)


def test_export_never_replaces_a_folder_that_is_not_an_export(store, tmp_path, sample_dir):
    """The export replaces its folder as a whole: `--out data/raw` (or a benchmark's folder) must be refused, with
    every file left in place; an earlier export is replaced."""
    h = fill(store, tmp_path / "home", sample_dir, [0.9])
    store.add_verdict(h[0], "alice", "ng", "r-000000001")
    raw = tmp_path / "raw"
    (raw / "mvtec_ad").mkdir(parents=True)
    (raw / "mvtec_ad" / "000.png").write_bytes(b"a benchmark image")
    for out in (raw, raw / "mvtec_ad"):
        with pytest.raises(ValueError, match="not an earlier feedback export"):
            export(store, "metal_plate", out)
    assert (raw / "mvtec_ad" / "000.png").read_bytes() == b"a benchmark image"
    export(store, "metal_plate", raw / "feedback")
    assert export(store, "metal_plate", raw / "feedback").images == 1  # an earlier export: replaced


def test_the_feedback_layout_refuses_a_broken_export(tmp_path):
    from readl.data.sources import LayoutError

    (tmp_path / "fb").mkdir()
    with pytest.raises(LayoutError, match="readl feedback export"):
        list(read_source("feedback", tmp_path / "fb"))
    (tmp_path / "fb" / "labels.csv").write_text("image,label\nimages/a.png,1\n")
    with pytest.raises(LayoutError, match="line 2.*missing"):
        list(read_source("feedback", tmp_path / "fb"))
    (tmp_path / "fb" / "labels.csv").write_text("image,label\nimages/a.png,yes\n")
    with pytest.raises(LayoutError, match="not 0 or 1"):
        list(read_source("feedback", tmp_path / "fb"))


def test_add_source_lists_the_export_once_and_keeps_the_comments(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((Path(__file__).resolve().parents[3] / "params.yaml").read_text())
    before = params.read_text()
    assert add_source(params) is True
    after = params.read_text()
    assert entry_line() in after and len(after.splitlines()) == len(before.splitlines()) + 1
    assert [line for line in after.splitlines() if line != entry_line()] == before.splitlines()  # nothing moved
    train = load_params(params).curate.train
    assert train[0].layout == "feedback" and train[0].root == "feedback"
    assert add_source(params) is False and params.read_text() == after
    flow = tmp_path / "flow.yaml"
    flow.write_text(yaml.safe_dump({"curate": {"train": [], "calib": [], "eval": []}}, default_flow_style=True))
    with pytest.raises(ValueError, match="add under curate.train"):
        add_source(flow)


def test_add_source_follows_the_indentation_of_a_dumped_params_file(tmp_path):
    """`readl preset paper` writes params with yaml.safe_dump: list items at the key's indentation."""
    params = tmp_path / "params.yaml"
    raw = yaml.safe_load((Path(__file__).resolve().parents[3] / "params.yaml").read_text())
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert "\n  train:\n  - name:" in params.read_text()
    assert add_source(params, root="exports/line-1") is True
    train = load_params(params).curate.train
    assert [(s.layout, s.root) for s in train[:2]] == [("feedback", "exports/line-1"), ("mvtec", "hazelnut_toy")]
    (tmp_path / "broken.yaml").write_text("curate: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        add_source(tmp_path / "broken.yaml")


def test_agreement_counts_and_rates_per_model_version(store, tmp_path, sample_dir):
    h = fill(store, tmp_path / "home", sample_dir, [0.9, 0.8, 0.2, 0.1, 0.7])
    h2 = fill(store, tmp_path / "home", sample_dir, [0.9, 0.1], version="readl/2", start=5)
    for i, v in enumerate(["ng", "ok", "ng", "ok", "ng"]):
        store.add_verdict(h[i], "alice", v, f"r-00000000{i}")
    store.add_verdict(h2[0], "alice", "ng", "r-100000000")  # readl/2: TP
    store.add_verdict(h2[1], "alice", "ok", "r-100000001")  # readl/2: TN
    table = agreement(verdict_frame(store.reviewed()))
    assert list(table["model_version"]) == ["readl/1", "readl/2"]
    two = table.iloc[1].to_dict()
    assert (two["tp"], two["fp"], two["fn"], two["tn"], two["agreement"]) == (1, 0, 0, 1, 1.0)
    assert math.isnan(agreement(verdict_frame(store.reviewed()[-1:])).iloc[0]["miss_rate"])  # no NG: no miss rate
    row = table.iloc[0].to_dict()
    # decided anomalous: 0.9 (NG: TP), 0.8 (OK: FP), 0.7 (NG: TP); normal: 0.2 (NG: FN), 0.1 (OK: TN)
    assert (row["tp"], row["fp"], row["fn"], row["tn"]) == (2, 1, 1, 1)
    assert math.isclose(row["agreement"], 3 / 5) and math.isclose(row["false_alarm_rate"], 1 / 2)
    assert math.isclose(row["miss_rate"], 1 / 3)
    assert agreement_plot(verdict_frame(store.reviewed()))[:8] == b"\x89PNG\r\n\x1a\n"
    assert agreement(verdict_frame([])).empty
