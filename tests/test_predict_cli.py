"""`readl predict` end to end on bundled real images with the tiny model (CPU)."""

from __future__ import annotations

import json

from PIL import Image
from typer.testing import CliRunner

from readl.cli import app


def test_predict_writes_json_and_overlay_and_reports_bad_files(tiny_dir, sample_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: built-in defaults (model.base = tiny)
    good = [sample_dir / "mvtec_ad/grid/test/broken/000.png", sample_dir / "hazelnut_toy/hazelnut/train/good/00.jpg"]
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not an image")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((sample_dir / "hazelnut_toy/hazelnut/test/good/04.jpg").read_bytes()[:3000])
    dot = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (255, 0, 0)).save(dot)  # below one merged 28x28 patch
    args = ["predict", str(good[0]), str(not_image), str(truncated), str(dot), str(good[1]), "--out", "out", "--max-new-tokens", "8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "notes.png" in result.output and "truncated.jpg" in result.output
    assert "dot.png" in result.output and "28x28" in result.output and not (tmp_path / "out" / "dot.json").exists()
    for path in good:
        record = json.loads((tmp_path / "out" / f"{path.stem}.json").read_text())
        assert set(record) >= {"reasoning", "answer", "format_ok", "score", "selected_tokens"}
        assert 0.0 <= record["score"] <= 1.0 and record["format_ok"] in (True, False)
        assert record["selected_tokens"], "at least one token carries the map (fallback: all tokens)"
        for tok in record["selected_tokens"]:
            assert {"token", "s_t_hat", "s_i_hat", "w"} <= set(tok) and tok["w"] > 0
        with Image.open(path) as src, Image.open(tmp_path / "out" / f"{path.stem}.png") as png:
            assert png.size == src.size and png.mode == "RGB"
    assert not (tmp_path / "out" / "notes.json").exists()
    assert not list((tmp_path / "out").glob(".*")), "no temporary files left behind"
