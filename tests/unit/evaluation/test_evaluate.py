"""calibrate and evaluate: threshold rules on constructed tokens, malformed fallback, reasoning
metrics, and the two stages end to end on the bundled real images with the tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from readl.cli import app
from readl.config import LocalizationConfig, ThresholdConfig
from readl.evaluation.calibration import calibrate_thresholds
from readl.evaluation.evaluate import FALLBACK_SCORE, MODES, image_metrics, score_images
from readl.evaluation.predictions import load_prediction, save_prediction
from readl.evaluation.reasoning import rouge_l, sbert_cosine
from readl.model.inference import Prediction
from readl.model.prompting import parse_completion


def _blobs(n: int) -> np.ndarray:
    """A 8x8 map with n equal, separate one-cell blobs: S_I = log(n) (0 for one blob)."""
    m = np.full((8, 8), 1e-4, np.float32)
    for k in range(n):
        m[2 * (k // 4), 2 * (k % 4)] = 1.0
    return m


def _pred(n_blobs: list[int], s_t: list[float], completion="<think>x</think><answer>Yes</answer>", score=0.8):
    maps = np.stack([_blobs(n) for n in n_blobs]) if n_blobs else np.zeros((0, 8, 8), np.float32)  # (R, 8, 8)
    return Prediction(
        completion=completion,
        parsed=parse_completion(completion),
        score=score,
        tokens=[f"t{i}" for i in range(len(n_blobs))],
        image_attn=maps,
        anomaly_attn=np.array(s_t, np.float32)[:, None],
        image_size=(8, 8),
    )


def test_calibration_finds_the_knee_and_the_median():
    # per image: one diffuse token (4 blobs -> S_I^ 0), ten 2-blob tokens (0.5), two 1-blob tokens (1.0)
    preds = [_pred([4] + [2] * 10 + [1] * 2, list(np.linspace(0, 1, 13))) for _ in range(3)]
    cfg = LocalizationConfig()
    record, s_t_hat, s_i_hat = calibrate_thresholds(preds, cfg)
    assert record["n_tokens"] == 39 and record["n_images"] == 3
    # sorted S_I^: 3 x 0, 30 x 0.5, 6 x 1: the curve lies farther above its chord (0.42 at the plateau's start) than
    # below it (0.34 at its end), so it is concave and bends where the 0.5 plateau starts (Kneedle)
    assert record["tau_i"]["value"] == pytest.approx(0.5)
    assert record["tau_i"]["index"] == 3 and record["tau_i"]["fallback"] is None
    assert record["tau_i"]["curve"] == "concave"
    assert record["tau_t"]["value"] == pytest.approx(0.5)  # median of 3 x linspace(0, 1, 13)
    fixed = LocalizationConfig(tau_t=ThresholdConfig(rule="fixed", value=0.2), tau_i=ThresholdConfig(rule="median"))
    rec2, _, _ = calibrate_thresholds(preds, fixed)
    assert rec2["tau_t"]["value"] == 0.2 and rec2["tau_i"]["value"] == pytest.approx(0.5)


def test_calibration_without_tokens_is_an_error():
    with pytest.raises(ValueError, match="no reasoning tokens"):
        calibrate_thresholds([_pred([], [])], LocalizationConfig())


def _row(label, source="ds", category="c", mask=None, reference=None):
    return pd.Series(
        {
            "source": source,
            "category": category,
            "label": label,
            "image_path": "x.png",
            "mask_path": mask,
            "reference": reference,
        }
    )


def test_malformed_answers_fall_back_and_are_counted():
    good = _pred([1, 2, 4], [0.9, 0.5, 0.1])
    bad = _pred([1, 2, 4], [0.9, 0.5, 0.1], completion="no answer here", score=0.9)
    res = score_images([(_row(1), good), (_row(1), bad)], LocalizationConfig(), ("median", "max_curvature"))
    assert [r.malformed for r in res] == [False, True]
    assert res[1].score == FALLBACK_SCORE and all(not res[1].maps[m].any() for m in MODES)
    assert res[1].real_map.any(), "the gallery still shows what ReAL drew"
    assert res[0].score == 0.8 and res[0].maps["both"].any()
    assert image_metrics(res)["ACC"] == 0.5  # a malformed answer is a wrong answer
    kept = score_images([(_row(1), bad)], LocalizationConfig(), ("median", "max_curvature"), malformed="score")
    assert kept[0].score == 0.9


def test_prediction_cache_roundtrip(tmp_path):
    pred = _pred([1, 2], [0.3, 0.7])
    back = load_prediction(save_prediction(tmp_path / "p.npz", pred))
    assert back.completion == pred.completion and back.score == pred.score and back.tokens == pred.tokens
    assert np.array_equal(back.image_attn, pred.image_attn) and back.parsed == pred.parsed
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="delete it"):
        load_prediction(tmp_path / "broken.npz")


def test_reasoning_metrics():
    same = "There is a crack near the top of the hazelnut."
    r = rouge_l([same, "The grid looks uniform."], [same, same])
    assert r[0] == pytest.approx(1.0) and r[1] < 0.3
    s = sbert_cosine([same, "The grid looks uniform."], [same, "A crack is visible at the top of the nut."])
    assert s[0] == pytest.approx(1.0, abs=1e-5) and s[1] < 0.6


@pytest.fixture(scope="module")
def stage_dir(tmp_path_factory, tiny_dir, sample_dir):
    """A working folder with the bundled raw data, short generations, and `readl curate` run."""
    work = tmp_path_factory.mktemp("stages")
    (work / "data").mkdir()
    (work / "data" / "raw").symlink_to(sample_dir)
    params = (sample_dir.parents[1] / "params.yaml").read_text()
    params = params.replace("max_new_tokens: 256", "max_new_tokens: 12")
    assert "per_image: 3" in params and "normal: 40," in params  # the synthetic eval dataset, here 6 + 6 images
    mpdd = "published_splits: [train, val]}"  # the mpdd eval dataset, here 4 + 4 images
    assert params.count(mpdd) == 1
    (work / "params.yaml").write_text(
        params.replace("per_image: 3", "per_image: 1")
        .replace("normal: 40,", "normal: 6,")
        .replace(mpdd, "published_splits: [train, val], normal: 4, anomalous: 4}")
    )
    return work


@pytest.mark.slow
def test_calibrate_and_evaluate_end_to_end(stage_dir, monkeypatch, resolve_model_calls):
    monkeypatch.chdir(stage_dir)
    runner = CliRunner()
    assert runner.invoke(app, ["curate"]).exit_code == 0
    out = runner.invoke(app, ["calibrate", "--adapter", "none"])
    assert out.exit_code == 0, out.output
    assert len(resolve_model_calls) == 1  # each stage decides its model once
    thresholds = json.loads((stage_dir / "models/thresholds.json").read_text())
    assert thresholds["tau_i"]["rule"] == "max_curvature" and thresholds["tau_t"]["rule"] == "median"
    assert thresholds["n_images"] == len(pd.read_parquet(stage_dir / "data/curated/calib.parquet"))
    assert (stage_dir / "models/thresholds.png").stat().st_size > 0
    decision = thresholds["decision"]  # the OK/NG threshold on P(Yes), params calibrate: (F1-max by default)
    assert decision["rule"] == "f1_max" and decision["malformed"] == "fallback" and 0.0 <= decision["value"] <= 1.0
    assert decision["n_normal"] + decision["n_anomalous"] == thresholds["n_images"]

    out = runner.invoke(app, ["evaluate", "--adapter", "none"])
    assert out.exit_code == 0, out.output
    assert len(resolve_model_calls) == 2  # evaluate's baselines use the same decision
    metrics = json.loads((stage_dir / "metrics.json").read_text())
    n_eval = len(pd.read_parquet(stage_dir / "data/curated/eval.parquet"))
    assert metrics["n_images"] == n_eval and 0 <= metrics["n_malformed"] <= n_eval
    assert set(metrics["datasets"]) == {"mvtec_ad", "mpdd", "synthetic"} and set(metrics["modes"]) == set(MODES)
    per = metrics["datasets"]
    assert sum(d["n_images"] for d in per.values()) == n_eval
    for d in per.values():  # the share of strictly formatted answers, per dataset: a malformed one is never strict
        assert 0.0 <= d["format_rate"] <= 1 - d["n_malformed"] / d["n_images"] + 1e-12
    ds = metrics["datasets"]["mvtec_ad"]
    for key in ("AUROC", "AUPR", "AUPRO", "ACC", "ACC_oracle"):
        v = ds["pixel"][key]
        assert v is None or 0.0 <= v <= 1.0
    # pixel.ACC's threshold comes from the normal calibration images (no mask), not from the evaluated masks
    t_pixel = thresholds["pixel"]["value"]
    assert set(t_pixel) == set(MODES) and thresholds["pixel"]["rule"] == "false_alarm_rate"
    assert metrics["pixel_threshold"]["value"] == t_pixel[metrics["pixel_threshold"]["mode"]]
    assert ds["pixel"]["ACC"] is not None
    assert metrics["thresholds"]["tau_i"] == pytest.approx(thresholds["tau_i"]["value"])
    assert metrics["decision"]["value"] == decision["value"] and metrics["decision"]["rule"] == "f1_max"
    for image in (ds["image"], metrics["image"]):  # the decision's ACC next to the answer's
        assert 0.0 <= image["ACC_at_threshold"] <= 1.0 and 0.0 <= image["ACC"] <= 1.0
    assert metrics["thresholds"]["rule_fallbacks"] == thresholds["rule_fallbacks"]
    assert set(thresholds["rule_fallbacks"]) == {"tau_t", "tau_i"}
    assert 0 <= ds["n_fallback"] <= n_eval and ds["modes"]["all"]["n_fallback"] == 0
    assert ds["kept_fraction"] is None or 0.0 <= ds["kept_fraction"] <= 1.0
    # curate's template references (readl.data.references) -> the reasoning metrics of paper Table 1 are produced
    reasoning = metrics["reasoning"]
    assert reasoning["averaged_over"] == ["mvtec_ad"]  # evaluate.reasoning_datasets: the paper averages MVTec AD
    assert reasoning["n"] == per["mvtec_ad"]["n_images"] and 0.0 <= reasoning["ROUGE_L"] <= 1.0
    assert reasoning["ROUGE_L"] == per["mvtec_ad"]["reasoning"]["ROUGE_L"] and -1.0 <= reasoning["SBERT"] <= 1.0
    assert per["synthetic"]["reasoning"]["n"] == per["synthetic"]["n_images"]  # each dataset's own numbers too
    assert reasoning["reference_source"] == {"mvtec_ad": "template", "mpdd": "template", "synthetic": "template"}
    for kind in ("image_roc", "image_pr", "pixel_roc", "pixel_pr"):
        rows = json.loads((stage_dir / "plots" / kind / "mvtec_ad.json").read_text())
        assert rows and set(rows[0]) in ({"fpr", "tpr"}, {"recall", "precision"})
    table = pd.read_csv(stage_dir / "reports/per_category.csv")
    assert sorted(zip(table["dataset"], table["category"])) == [
        ("mpdd", "metal_plate"),
        ("mvtec_ad", "grid"),
        ("synthetic", "bottle"),
    ]
    assert table["n"].sum() == n_eval
    assert "| grid" in (stage_dir / "reports/per_category.md").read_text()
    html = (stage_dir / "reports/gallery/index.html").read_text()
    pngs = sorted((stage_dir / "reports/gallery").glob("*.png"))
    assert len(pngs) == 4 * 3 and all(p.name in html for p in pngs)  # gallery_per_dataset x 3 datasets

    # resume: the per-image cache is reused; a deleted entry is recomputed, the rest untouched
    cache = sorted((stage_dir / "reports/predictions/eval").glob("*.npz"))
    assert len(cache) == n_eval
    stamps = {p: p.stat().st_mtime_ns for p in cache[1:]}
    cache[0].unlink()
    assert runner.invoke(app, ["evaluate", "--adapter", "none"]).exit_code == 0
    assert cache[0].is_file() and all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    again = json.loads((stage_dir / "metrics.json").read_text())
    assert again["image"] == metrics["image"] and again["pixel"] == metrics["pixel"]


def test_missing_manifest_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(app, ["evaluate"])
    assert out.exit_code == 1 and "dvc repro curate" in out.output  # a missing upstream output: runtime failure
    assert "Traceback" not in out.output


def test_macro_average_skips_undefined():
    from readl.evaluation.evaluate import _macro

    assert _macro({"a": {"x": 0.5}, "b": {"x": math.nan}, "c": {"x": 1.0}}, ["x"]) == {"x": 0.75}


def test_evaluate_reports_reasoning_against_references(tmp_path):
    from PIL import Image

    from readl.evaluation.evaluate import evaluate

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[0, 0] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    text = "<think>There is a crack.</think><answer>Yes</answer>"
    items = [
        (_row(1, mask="m.png", reference="There is a crack."), _pred([1, 2, 4], [0.9, 0.5, 0.1], completion=text)),
        (_row(0, reference="The surface is clean."), _pred([4, 2, 1], [0.1, 0.5, 0.9], score=0.2)),
    ]
    results = score_images(items, LocalizationConfig(), ("median", "max_curvature"))
    metrics, table = evaluate(results, "both", root=tmp_path)
    assert metrics["reasoning"]["n"] == 2 and metrics["reasoning"]["averaged_over"] == ["ds"]  # no mvtec_ad: all
    assert 0.0 < metrics["reasoning"]["ROUGE_L"] < 1.0 and 0.0 < metrics["reasoning"]["SBERT"] < 1.0
    assert metrics["image"]["AUROC"] == 1.0 and len(table) == 1
    # two datasets: the top level averages only those of reasoning_datasets
    other = [
        (
            _row(1, source="other", mask="m.png", reference="A scratch."),
            _pred([1, 2, 4], [0.9, 0.5, 0.1], completion=text),
        )
    ]
    results += score_images(other, LocalizationConfig(), ("median", "max_curvature"))
    metrics, _ = evaluate(results, "both", root=tmp_path, reasoning_datasets=["ds"])
    assert metrics["reasoning"]["averaged_over"] == ["ds"] and metrics["reasoning"]["n"] == 2
    assert metrics["reasoning"]["ROUGE_L"] == metrics["datasets"]["ds"]["reasoning"]["ROUGE_L"]
    assert metrics["datasets"]["other"]["reasoning"]["n"] == 1


def test_pixel_acc_uses_the_given_threshold_and_the_oracle_the_masks(tmp_path):
    """pixel.ACC = share of pixels where ``map > t_pixel`` agrees with the mask, t_pixel given (fitted on normal
    calibration images); ACC_oracle = ACC at the F1-max threshold of the evaluated masks (an upper bound)."""
    from PIL import Image

    from readl.evaluation.evaluate import pixel_metrics
    from readl.localization.anomaly_map import upsample

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[:2, :2] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    items = [(_row(1, mask="m.png"), _pred([1, 2, 4], [0.9, 0.5, 0.1])), (_row(0), _pred([4, 2, 1], [0.1, 0.5, 0.9]))]
    results = score_images(items, LocalizationConfig(), ("median", "max_curvature"))
    masks = [mask > 127, np.zeros((8, 8), bool)]
    maps = [upsample(r.maps["all"], (8, 8)) for r in results]
    for t in (0.0, float(np.median(np.concatenate([m.ravel() for m in maps]))), 10.0):
        got = pixel_metrics(results, "all", tmp_path, threshold=t)
        want = np.mean(np.concatenate([((m > t) == k).ravel() for m, k in zip(maps, masks)]))
        assert got["ACC"] == pytest.approx(want)
    assert math.isnan(pixel_metrics(results, "all", tmp_path)["ACC"])  # no t_pixel: no ACC
    oracle = pixel_metrics(results, "all", tmp_path)["ACC_oracle"]
    assert oracle >= max(pixel_metrics(results, "all", tmp_path, threshold=t)["ACC"] for t in (0.0, 10.0)) - 1e-9


def test_pixel_threshold_flags_the_false_alarm_share_of_normal_pixels(tmp_path):
    from PIL import Image

    from readl.evaluation.calibration import pixel_thresholds
    from readl.localization.anomaly_map import upsample

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    items = [
        (_row(0), _pred([1, 2, 4], [0.9, 0.5, 0.1])),
        (_row(0), _pred([4, 2, 1], [0.1, 0.5, 0.9])),
        (_row(1), _pred([1, 1, 1], [0.9, 0.9, 0.9])),
    ]  # the anomalous image is never read
    results = score_images(items, LocalizationConfig(), ("median", "max_curvature"))
    rec = pixel_thresholds(results, 0.1, tmp_path)
    assert rec["n_images"] == 2 and rec["n_pixels"] == 128 and set(rec["value"]) == set(MODES)
    normal = np.concatenate([upsample(r.maps["both"], (8, 8)).ravel() for r in results[:2]])
    assert np.mean(normal > rec["value"]["both"]) <= 0.1  # at most the false-alarm rate is flagged
    assert pixel_thresholds(results[2:], 0.1, tmp_path)["value"] == {}  # no normal image: no t_pixel


def test_calibration_reports_a_tied_top_block():
    # per image 2 diffuse (4 blobs), 1 two-blob, 4 one-blob tokens: 4/7 of the pooled S_I^ tie at 1, so
    # their median (supplement Table 5, "median" rows for tau_i) is 1.0; below the tie: 6 x 0, 3 x 0.5 -> 0
    preds = [_pred([4, 4, 2, 1, 1, 1, 1], list(np.linspace(0, 1, 7))) for _ in range(3)]
    record, _, s_i_hat = calibrate_thresholds(preds, LocalizationConfig(tau_i=ThresholdConfig(rule="median")))
    assert record["tau_i"]["top_tied"] == 12 and record["tau_i"]["value"] == 0.0
    assert (s_i_hat > record["tau_i"]["value"]).sum() == 15  # the tied 12 and the three 2-blob tokens
    assert record["rule_fallbacks"] == {
        "tau_t": {"fallback": 0, "top_tied": 0},
        "tau_i": {"fallback": 0, "top_tied": 1},
    }


def test_metrics_count_fallbacks_and_kept_tokens(tmp_path):
    from PIL import Image

    from readl.evaluation.evaluate import evaluate

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    # image 1: the S_T^ median keeps 1 of 3 tokens in `both`; image 2: every token has the same scores -> all
    # S_T^ = S_I^ = 1 -> kept by the tie rule; image 3: no reasoning tokens
    items = [
        (_row(1), _pred([1, 2, 4], [0.9, 0.5, 0.1])),
        (_row(0), _pred([2, 2], [0.3, 0.3], score=0.2)),
        (_row(0), _pred([], [], score=0.1)),
    ]
    cfg = LocalizationConfig()
    results = score_images(items, cfg, ("median", "max_curvature"))
    metrics, _ = evaluate(results, "both", root=tmp_path)
    ds = metrics["datasets"]["ds"]
    assert ds["n_fallback"] == 0 and ds["n_no_tokens"] == 1
    assert ds["kept_fraction"] == pytest.approx((1 / 3 + 1.0) / 2)
    assert ds["modes"]["all"]["kept_fraction"] == 1.0 and ds["modes"]["all"]["n_fallback"] == 0
    assert ds["thresholds"]["tau_t"] == {"rule": "median", "n_fallback": 0, "n_top_tied": 1}
    assert ds["thresholds"]["tau_i"]["rule"] == "max_curvature" and ds["thresholds"]["tau_i"]["n_top_tied"] >= 1
    # with fixed thresholds that no token passes: every image with tokens falls back
    strict = score_images(items, cfg, (1.0, 1.0))
    m2, _ = evaluate(strict, "both", root=tmp_path)
    assert m2["datasets"]["ds"]["n_fallback"] == 2 and m2["datasets"]["ds"]["kept_fraction"] == 0.0
    assert m2["n_fallback"] == 2


@pytest.mark.slow
def test_prediction_cache_is_keyed_by_content(tmp_path, tiny_dir, sample_dir, monkeypatch, caplog):
    """Overwrite one raw image in place, re-curate, re-evaluate: exactly that image is recomputed (same path,
    new content) and the metrics change; a different model setting recomputes everything."""
    import logging
    import shutil

    from PIL import Image

    from readl.config import load_params
    from readl.stages.evaluate import run as run_evaluate

    work = tmp_path / "w"
    shutil.copytree(sample_dir, work / "data" / "raw", symlinks=False)
    params_text = (
        (sample_dir.parents[1] / "params.yaml").read_text().replace("max_new_tokens: 256", "max_new_tokens: 12")
    )
    # the tiny model's answers are malformed: keep its P(Yes) and maps so that the metrics see the predictions
    (work / "params.yaml").write_text(params_text.replace("malformed: fallback", "malformed: score"))
    monkeypatch.chdir(work)
    assert CliRunner().invoke(app, ["curate"]).exit_code == 0
    cfg = load_params(work / "params.yaml")
    cache = work / "reports/predictions/eval"

    def evaluate_once() -> dict:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="readl.evaluation.predictions"):
            run_evaluate(
                cfg,
                work / "data/curated/eval.parquet",
                None,
                None,
                work / "metrics.json",
                work / "plots",
                work / "reports",
                cache,
            )
        return json.loads((work / "metrics.json").read_text())

    before = evaluate_once()
    entries = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npz")}
    n = len(pd.read_parquet(work / "data/curated/eval.parquet"))
    assert len(entries) == n

    raw = work / "data/raw/mvtec_ad/grid/test/bent/000.png"  # an anomalous image: move its defect away
    with Image.open(raw) as im:
        flipped = im.transpose(Image.Transpose.ROTATE_180)
    flipped.save(raw)
    assert CliRunner().invoke(app, ["curate"]).exit_code == 0
    after = evaluate_once()
    now = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npz")}
    recomputed = set(now) - set(entries)
    assert len(recomputed) == 1 and next(iter(recomputed)).startswith("000-"), recomputed  # that image only
    assert len(set(entries) - set(now)) == 1  # its stale entry is gone
    assert all(now[k] == t for k, t in entries.items() if k in now)  # the others were not rewritten
    assert f"{n - 1} of {n} predictions cached, 1 to compute" in caplog.text
    assert (before["image"], before["pixel"]) != (after["image"], after["pixel"])

    again = evaluate_once()  # nothing changed: nothing recomputed, same metrics
    assert f"{n} of {n} predictions cached, 0 to compute" in caplog.text
    assert again["image"] == after["image"] and again["pixel"] == after["pixel"]

    from readl.evaluation.predictions import entry_key

    fp = json.loads((cache / "fingerprint.json").read_text())
    image = work / pd.read_parquet(work / "data/curated/eval.parquet")["image_path"].iloc[0]
    for change in (
        {"generation": {**fp["generation"], "max_new_tokens": 13}},
        {"adapter_sha256": "x"},
        {"base_sha256": "y"},
        {"layers": [1]},
        {"dtype": "torch.bfloat16"},
    ):
        assert entry_key({**fp, **change}, image) != entry_key(fp, image), change


@pytest.mark.slow
def test_evaluate_reports_baselines_with_bootstrap_intervals(tmp_path, tiny_dir, sample_dir, monkeypatch):
    """One evaluate run: the model's AUROCs get 95% intervals, and the untrained, warm-started (models/warmup) and
    contrast baselines are scored on the same images (readl.evaluation.comparison); `evaluate.baselines` turns
    them off."""
    import shutil

    import yaml

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "raw").symlink_to(sample_dir)
    params = yaml.safe_load((sample_dir.parents[1] / "params.yaml").read_text())
    params["model"]["max_new_tokens"] = 8
    params["curate"]["eval"] = [
        {
            "name": "synthetic",
            "layout": "synthetic",
            "root": "hazelnut_toy",  # 6 + 6 images
            "published_splits": ["test"],
            "options": {
                "base_layout": "mvtec",
                "recipes": ["draem"],
                "texture": "procedural",
                "per_image": 1,
                "seed": 0,
                "normals": True,
            },
        }
    ]
    for split in ("train", "calib"):  # the 6 hazelnut_toy test/good images are eval's
        params["curate"][split] = [
            dict(s, published_splits=["train"]) if s["name"] == "hazelnut_toy" else s for s in params["curate"][split]
        ]
    params["evaluate"].update(bootstrap_resamples=200, gallery_per_dataset=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copytree(tiny_dir, tmp_path / "models" / "warmup")  # a warm-started model folder (here: the tiny kit)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    assert runner.invoke(app, ["curate"]).exit_code == 0
    thresholds = tmp_path / "models" / "thresholds.json"
    thresholds.write_text(json.dumps({"tau_t": {"value": 0.0}, "tau_i": {"value": 10.0}}))
    out = runner.invoke(app, ["evaluate", "--adapter", "none"])
    assert out.exit_code == 0, out.output
    assert "model vs baselines" in out.output and "contrast" in out.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    ds = metrics["datasets"]["synthetic"]
    assert metrics["bootstrap"]["n_resamples"] == 200
    # the interval resamples base photos (a photo and its variants): 6 units behind 6 normal + 6 anomalous images
    assert (ds["image"]["n_units"], ds["image"]["n_normal"], ds["image"]["n_anomalous"]) == (6, 6, 6)
    assert metrics["runtime"]["threads"] == params["runtime"]["threads"] and metrics["runtime"]["deterministic"]
    assert metrics["runtime"]["bootstrap_seed"] == 0 and "train" not in metrics["runtime"]  # no train_run.json here

    def check(entry, varies=True):
        lo, hi = entry["AUROC_ci"]
        assert 0.0 <= lo <= entry["AUROC"] <= hi <= 1.0 and (hi > lo or not varies), entry

    # the untrained tiny model never writes the format: its own scores are the 0.5 fallback (a point interval)
    check(ds["image"], varies=False)
    check(ds["pixel"], varies=False)
    for mode in MODES:
        check(ds["modes"][mode], varies=False)
    assert set(metrics["baselines"]) == {"untrained", "warmup", "contrast"}
    for name in ("untrained", "warmup"):
        b = metrics["baselines"][name]["datasets"]["synthetic"]
        check(b["image"], varies=False)  # 6 + 6 images: the untrained model's P(Yes) may separate them all
        assert set(b["modes"]) == set(MODES) and b["pixel"] == b["modes"][params["localization"]["mode"]]
        for mode in MODES:
            check(b["modes"][mode])
        assert 0.0 <= b["format_rate"] <= 1.0
    assert metrics["baselines"]["warmup"]["base"] == str(Path("models") / "warmup")
    assert metrics["baselines"]["untrained"]["base"] == "tiny"
    # each model baseline's tau_t / tau_i are its own, fitted on the calibration split as `readl calibrate` fits them
    own = tmp_path / "untrained_thresholds.json"
    assert (
        runner.invoke(
            app,
            [
                "calibrate",
                "--model",
                "tiny",
                "--adapter",
                "none",
                "--out",
                str(own),
                "--cache",
                str(tmp_path / "own_cache"),
            ],
        ).exit_code
        == 0
    )
    own = json.loads(own.read_text())
    taus = metrics["baselines"]["untrained"]["thresholds"]
    assert taus["source"].startswith("calibrated on") and "calib.parquet" in taus["source"]
    assert (taus["tau_t"], taus["tau_i"]) == (own["tau_t"]["value"], own["tau_i"]["value"])
    assert len(
        list((cache_dir := tmp_path / "reports/predictions/eval/baselines/untrained.calib").glob("*.npz"))
    ) == len(pd.read_parquet(tmp_path / "data/curated/calib.parquet")), cache_dir
    contrast = metrics["baselines"]["contrast"]["datasets"]["synthetic"]
    check(contrast["image"], varies=False)  # procedural DRAEM textures: the contrast score may separate all 12
    check(contrast["pixel"])
    assert contrast["pixel"]["AUROC"] > 0.6  # pasted / painted defects differ in colour: the floor to beat
    cache = tmp_path / "reports" / "predictions" / "eval"
    n_eval = metrics["n_images"]
    for name in ("untrained", "warmup"):
        assert len(list((cache / "baselines" / name).glob("*.npz"))) == n_eval
    assert len(list(cache.glob("*.npz"))) == n_eval  # the model's own cache keeps its entries

    params["evaluate"].update(baselines=["contrast"], bootstrap_resamples=0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert runner.invoke(app, ["evaluate", "--adapter", "none"]).exit_code == 0
    again = json.loads((tmp_path / "metrics.json").read_text())
    assert set(again["baselines"]) == {"contrast"} and again["datasets"]["synthetic"]["image"]["AUROC_ci"] is None
    assert again["baselines"]["contrast"]["datasets"]["synthetic"]["pixel"]["AUROC"] == contrast["pixel"]["AUROC"]


def test_evaluate_warns_at_chance_and_on_a_constant_answer():
    """Issue: a run with an inverted detector (AUROC < 0.5) and an answer ACC equal to the class share (every answer
    "Yes") passed without a word."""
    from readl.stages.evaluate import chance_warnings

    metrics = {
        "datasets": {
            "synthetic": {"image": {"AUROC": 0.161, "ACC": 240 / 246, "n": 246, "n_anomalous": 240, "n_normal": 6}},
            "mvtec_ad": {"image": {"AUROC": 0.85, "ACC": 0.7, "n": 24, "n_anomalous": 11, "n_normal": 13}},
        }
    }
    warnings = chance_warnings(metrics)
    assert len(warnings) == 2 and all(w.startswith("synthetic") for w in warnings)
    assert "inverted" in warnings[0] and "'Yes' to every image" in warnings[1]
