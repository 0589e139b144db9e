"""Evaluation baselines (readl.evaluation.baselines): contrast map; bootstrap AUROC vs scikit-learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from readl.data import synthetic as syn
from readl.evaluation import baselines as B


def test_contrast_map_grid_and_values():
    img = np.full((420, 420, 3), 100, np.uint8)
    img[28:56, 56:84] = (255, 100, 100)  # exactly token cell (1, 2) of the 15x15 grid
    m = B.contrast_map(img)
    assert m.shape == (15, 15) and m.dtype == np.float32
    assert m[1, 2] == pytest.approx(155 / (255 * np.sqrt(3)), rel=1e-6)
    assert np.count_nonzero(m) == 1 and np.argmax(m) == 1 * 15 + 2
    assert 0 <= m.min() and m.max() <= 1
    # a synthetic CutPaste defect on a flat image is found by contrast alone
    out, mask = syn.cutpaste(np.full((420, 420, 3), 128, np.uint8), np.random.default_rng(0))
    cm = B.contrast_map(Image.fromarray(out), grid=(15, 15))
    from readl.localization.anomaly_map import upsample

    full = upsample(cm, mask.shape)
    assert full[mask].mean() > 5 * full[~mask].mean()
    uneven = B.contrast_map(np.zeros((50, 37, 3), np.uint8), grid=(4, 3))
    assert uneven.shape == (4, 3)
    with pytest.raises(ValueError, match="RGB"):
        B.contrast_map(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="fit"):
        B.contrast_map(np.zeros((10, 10, 3), np.uint8), grid=15)


def _naive_bootstrap(stat, n, n_resamples, seed, ci=0.95):
    vals = []
    for w in B.resample_counts(n, n_resamples, seed):
        for row in w:
            idx = np.repeat(np.arange(n), row.astype(int))
            v = stat(idx)
            if v is not None:
                vals.append(v)
    return np.quantile(vals, [(1 - ci) / 2, 1 - (1 - ci) / 2])


def test_bootstrap_image_auroc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    s = np.round(y * 0.6 + rng.normal(0, 0.5, 40), 1)  # rounded: with ties
    point, lo, hi = B.bootstrap_image_auroc(s, y, n_resamples=300, seed=3)
    assert point == pytest.approx(roc_auc_score(y, s), abs=1e-12)

    def stat(idx):
        return roc_auc_score(y[idx], s[idx]) if len(set(y[idx])) == 2 else None

    want = _naive_bootstrap(stat, 40, 300, 3)
    assert (lo, hi) == pytest.approx(tuple(want), abs=1e-12)
    assert lo < point < hi
    assert B.bootstrap_image_auroc(s, y, n_resamples=300, seed=3) == (point, lo, hi)
    assert B.bootstrap_image_auroc(s, y, n_resamples=300, seed=4) != (point, lo, hi)
    # more images -> a narrower interval
    y2, s2 = np.tile(y, 10), np.tile(s, 10)
    _, lo2, hi2 = B.bootstrap_image_auroc(s2, y2, n_resamples=300, seed=3)
    assert hi2 - lo2 < (hi - lo) / 2


def test_bootstrap_pixel_auroc_matches_sklearn_pooled():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    masks = [rng.random((8, 8)) < p for p in (0.0, 0.2, 0.3, 0.0, 0.5, 0.1)]
    maps = [np.clip(np.rint(m * 4 + rng.normal(2, 2, m.shape)), 0, 9) for m in masks]  # ints
    point, lo, hi = B.bootstrap_pixel_auroc(maps, masks, n_resamples=200, seed=0)
    y_all = np.concatenate([m.ravel() for m in masks])
    s_all = np.concatenate([m.ravel() for m in maps])
    assert point == pytest.approx(roc_auc_score(y_all, s_all), abs=1e-12)  # integer scores: exact

    def stat(idx):
        y = np.concatenate([masks[i].ravel() for i in idx])
        s = np.concatenate([maps[i].ravel() for i in idx])
        return roc_auc_score(y, s) if 0 < y.sum() < len(y) else None

    want = _naive_bootstrap(stat, len(maps), 200, 0)
    assert (lo, hi) == pytest.approx(tuple(want), abs=1e-12)


def test_bootstrap_pixel_auroc_upsamples_token_maps_and_checks_inputs():
    from readl.localization.anomaly_map import upsample

    rng = np.random.default_rng(2)
    grids = [rng.random((3, 3)) for _ in range(4)]
    masks = [rng.random((12, 12)) < 0.3 for _ in range(4)]
    got = B.bootstrap_pixel_auroc(grids, masks, n_resamples=50, seed=0)
    full = B.bootstrap_pixel_auroc([upsample(g, (12, 12)) for g in grids], masks, n_resamples=50, seed=0)
    assert got[0] == pytest.approx(full[0], abs=2e-3)
    with pytest.raises(ValueError, match="equal length"):
        B.bootstrap_pixel_auroc(grids, masks[:2])
    with pytest.raises(ValueError, match="finite"):
        B.bootstrap_image_auroc([0.1, np.nan], [0, 1])
    with pytest.raises(ValueError, match="0 or 1"):
        B.bootstrap_image_auroc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="ci"):
        B.bootstrap_image_auroc([0.1, 0.2], [0, 1], ci=1.5)
    p, lo, hi = B.bootstrap_image_auroc([0.1, 0.2], [1, 1])
    assert np.isnan(p) and np.isnan(lo) and np.isnan(hi)


def test_cluster_bootstrap_resamples_groups():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(5)
    y = np.tile([0, 1, 1, 1], 15)  # 15 groups of 4 correlated images
    g = np.repeat(np.arange(15), 4)
    # the anomalies of one group share how visible they are: correlated within the group
    s = y * (0.3 + np.repeat(rng.normal(0, 0.6, 15), 4)) + rng.normal(0, 0.3, 60)
    point, lo, hi = B.bootstrap_image_auroc(s, y, n_resamples=300, seed=1, groups=g)
    assert point == pytest.approx(roc_auc_score(y, s), abs=1e-12)

    def stat(idx):  # idx: resampled groups -> all their images
        rows = np.concatenate([np.flatnonzero(g == i) for i in idx])
        return roc_auc_score(y[rows], s[rows]) if len(set(y[rows])) == 2 else None

    assert (lo, hi) == pytest.approx(tuple(_naive_bootstrap(stat, 15, 300, 1)), abs=1e-12)
    _, lo_i, hi_i = B.bootstrap_image_auroc(s, y, n_resamples=300, seed=1)
    assert hi - lo > hi_i - lo_i  # correlated images: the per-image interval is too narrow
    with pytest.raises(ValueError, match="one entry per image"):
        B.bootstrap_image_auroc(s, y, groups=g[:3])


def test_bootstrap_groups_are_the_raw_image_and_the_table_shows_every_system():
    """Synthetic variants of one normal image share its raw_image_path: one bootstrap unit
    (readl.evaluation.comparison); the comparison table lists the model and each baseline per dataset."""
    import pandas as pd
    from rich.console import Console

    from readl.evaluation.comparison import comparison_table, image_groups

    df = pd.DataFrame(
        {
            "source": ["synthetic"] * 3 + ["mvtec_ad"],
            "image_path": ["a0.png", "a1.png", "b.png", "c.png"],
            "raw_image_path": ["good/000.png", "good/000.png", "good/001.png", "good/000.png"],
        }
    )
    groups = image_groups(df)
    assert groups[0] == groups[1] != groups[2] and groups[3] != groups[0]  # same raw path, other source: apart
    assert image_groups(df.drop(columns="raw_image_path")) == [f"{s}|{p}" for s, p in zip(df.source, df.image_path)]
    e = {"AUROC": 0.75, "AUROC_ci": [0.6, 0.9]}
    model = {"image": e, "pixel": e, "modes": {m: e for m in ("all", "s_i", "s_t", "both")}}
    metrics = {
        "datasets": {"synthetic": model},
        "baselines": {
            "untrained": {"datasets": {"synthetic": model}},
            "contrast": {"datasets": {"synthetic": {"image": e, "pixel": {"AUROC": None}}}},
        },
    }
    console = Console(width=200, record=True)
    console.print(comparison_table(metrics))
    text = console.export_text()
    assert all(name in text for name in ("model", "untrained", "contrast")) and "75.0 [60-90]" in text
    assert "n/a" in text  # the contrast map has no token-selection modes


def test_baseline_models_are_the_listed_ones_and_warmup_only_with_a_warm_start(tmp_path, monkeypatch, tiny_dir):
    """``warmup`` is a baseline only when the warm-started model exists (else it would be ``untrained`` again);
    ``contrast`` needs no model."""
    import shutil

    from readl.config import Params
    from readl.evaluation.comparison import baseline_models as with_params
    from readl.paths import resolve_model

    def baseline_models(params):  # as the evaluate stage calls it: with the stage's resolved model
        return with_params(params, resolve_model(params))

    monkeypatch.chdir(tmp_path)
    params = Params.model_validate({"model": {"base": "tiny"}, "warmup": {"enabled": True}})
    assert baseline_models(params) == {"untrained": "tiny"}  # no models/warmup yet
    shutil.copytree(tiny_dir, tmp_path / "models" / "warmup")
    assert baseline_models(params) == {"untrained": "tiny", "warmup": str(Path("models") / "warmup")}
    only = params.model_copy(
        update={"evaluate": params.evaluate.model_copy(update={"baselines": ["warmup", "contrast"]})}
    )
    assert baseline_models(only) == {"warmup": str(Path("models") / "warmup")}
    off = params.model_copy(update={"warmup": params.warmup.model_copy(update={"enabled": False})})
    assert baseline_models(off) == {"untrained": "tiny"}
