"""Bounded predict (issue 15): inputs are decoded one batch at a time, and the uint8 colour-table overlay
draws the same picture as the float64 RGBA colormap it replaced."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

import readl.predictor as predict_mod
from readl.config import LocalizationConfig
from readl.evaluation.report import overlay
from readl.model.inference import GenerationSettings, Predictor


def _old_overlay(image, anomaly_map, alpha=0.5, cmap="jet"):
    """The overlay before issue 15 (float64 RGBA colormap), for the comparison."""
    rgb = image.convert("RGB")
    lo, hi = (float(anomaly_map.min()), float(anomaly_map.max())) if anomaly_map.size else (0.0, 0.0)
    scaled = (anomaly_map - lo) / (hi - lo) if hi > lo else np.zeros_like(anomaly_map)
    heat = (colormaps[cmap](scaled)[..., :3] * 255).astype(np.uint8)
    return Image.blend(rgb, Image.fromarray(heat), alpha)


@pytest.mark.parametrize("cmap", ["jet", "viridis"])
def test_overlay_equals_the_float64_colormap(cmap):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (97, 131, 3), dtype=np.uint8))
    maps = [
        rng.random((97, 131), dtype=np.float32),
        np.full((97, 131), 0.3, np.float32),
        (np.arange(97 * 131, dtype=np.float32).reshape(97, 131) % 257) / 256,
    ]  # bin edges
    for m in maps:
        assert np.array_equal(np.asarray(overlay(image, m, cmap=cmap)), np.asarray(_old_overlay(image, m, cmap=cmap)))


def test_inputs_are_decoded_one_batch_at_a_time(tiny, sample_dir, tmp_path, monkeypatch):
    model, processor = tiny
    pred = Predictor(model, processor, image_size=112, generation=GenerationSettings(max_new_tokens=4))
    paths = sorted((sample_dir / "mvtec_ad/grid/test").rglob("*.png"))[:5]
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    paths.insert(2, bad)
    decoded, at_call = [], []
    real_open, real_predict = predict_mod.open_image, pred.predict
    monkeypatch.setattr(predict_mod, "open_image", lambda p: decoded.append(p) or real_open(p))
    monkeypatch.setattr(pred, "predict", lambda ims: at_call.append((len(decoded), len(ims))) or real_predict(ims))
    done = []
    outcomes = predict_mod.predict_files(
        paths, pred, LocalizationConfig(), tmp_path / "out", batch_size=2, progress=done.append
    )
    assert [n for _, n in at_call] == [2, 2, 1]
    assert [d for d, _ in at_call] == [2, 5, 6]  # decoded so far: up to this batch (+ the bad file), never all up front
    assert sum(done) == len(paths)
    assert [o.error is not None for o in outcomes] == [p == bad for p in paths]
    names = predict_mod.output_names(paths)  # the grid's 000.png of several defect folders: bent__000, ...
    assert len(set(names.values())) == len(paths)
    assert all((tmp_path / "out" / f"{names[p]}.png").is_file() for p in paths if p != bad)


def test_a_failed_overlay_write_leaves_no_record_pointing_at_it(tiny, sample_dir, tmp_path, monkeypatch):
    """Issue (faults): with `ulimit -f` a JSON record named an overlay PNG that was never written. A record is
    written only after its overlay, and the error names the file."""
    import errno

    model, processor = tiny
    pred = Predictor(model, processor, image_size=112, generation=GenerationSettings(max_new_tokens=4))
    paths = sorted((sample_dir / "mvtec_ad/grid/test").rglob("*.png"))[:3]
    real_write, calls = predict_mod._write_overlay, []

    def disk_full_on_the_second(*args):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(*args)

    monkeypatch.setattr(predict_mod, "_write_overlay", disk_full_on_the_second)
    out = tmp_path / "out"
    with pytest.raises(OSError, match=r"No space left on device.*\.png"):
        predict_mod.predict_files(paths, pred, LocalizationConfig(), out, batch_size=3)
    for record in out.glob("*.json"):
        assert (out / f"{record.stem}.png").is_file(), f"{record.name} names an overlay that does not exist"
    assert len(list(out.glob("*.png"))) == 2 and not list(out.glob(".*"))  # no temporary file left behind
