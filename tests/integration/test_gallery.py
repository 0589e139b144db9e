"""The heat-map gallery an inspector reads: which images, what each panel says, one reasoning, a colour bar, no
horizontal scroll (checked in headless Chromium, screenshot kept), and the annotated predict overlay."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from readl.evaluation.evaluate import ImageResult
from readl.evaluation.report import annotated_overlay, gallery_picks, write_gallery

GRID = "mvtec_ad/grid"


def _result(path: str, label: int, score: float, mask: str | None = None, answer="Yes", malformed=False) -> ImageResult:
    tokens = ["The", " grid", " shows", " a", " bent", " wire", "supercalifragilisticexpialidocious" * 4, "."]
    w = np.array([0, 0.2, 0, 0, 1.0, 0.5, 0, 0], np.float64)
    amap = np.zeros((15, 15), np.float32)
    amap[4:7, 5:9] = 2.5  # a blob: the colour bar must read 0 .. 2.5
    return ImageResult(
        dataset="mvtec_ad",
        category="grid",
        label=label,
        image_path=f"{GRID}/{path}",
        mask_path=mask and f"{GRID}/{mask}",
        answer=answer,
        format_ok=not malformed,
        malformed=malformed,
        score=score,
        reasoning="".join(tokens),
        reference=None,
        tokens=tokens,
        maps={"both": amap},
        weights=w,
        real_map=amap,
    )


@pytest.fixture()
def results():
    return [
        _result("test/bent/000.png", 1, 0.91, "ground_truth/bent/000_mask.png"),
        _result("test/bent/001.png", 1, 0.55, "ground_truth/bent/001_mask.png"),
        _result("test/bent/002.png", 1, 0.12, "ground_truth/bent/002_mask.png", answer="No"),
        _result("test/good/000.png", 0, 0.80),
        _result("test/good/001.png", 0, 0.50, answer=None, malformed=True),
        _result("test/good/002.png", 0, 0.05, answer="No"),
    ]


def test_gallery_picks_the_extremes_of_each_label(results):
    picks = gallery_picks(results, per_dataset=4)
    assert [(r.image_path.split("/", 2)[2], why) for r, why in picks] == [
        ("test/bent/000.png", "highest-scored anomalous image"),
        ("test/bent/002.png", "lowest-scored anomalous image"),
        ("test/good/000.png", "highest-scored normal image"),
        ("test/good/002.png", "lowest-scored normal image"),
    ]
    assert len(gallery_picks(results, per_dataset=6)) == 6 and len(gallery_picks(results[:1], per_dataset=4)) == 1


def test_a_failed_gallery_write_keeps_the_previous_gallery_whole(results, sample_dir, tmp_path, monkeypatch):
    """Issue (faults): a disk full during evaluate left the gallery half-written next to stale files. The gallery
    folder is replaced as a whole, or not at all."""
    import readl.evaluation.report as report

    write_gallery(tmp_path, results, sample_dir, per_dataset=4)
    before = {p.name: p.read_bytes() for p in (tmp_path / "gallery").iterdir()}
    real_panel, calls = report.gallery_panel, []

    def disk_full_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_panel(*args, **kwargs)

    monkeypatch.setattr(report, "gallery_panel", disk_full_on_the_third)
    with pytest.raises(OSError, match="No space left"):
        write_gallery(tmp_path, results[::-1], sample_dir, per_dataset=4, threshold=0.9)
    assert {p.name: p.read_bytes() for p in (tmp_path / "gallery").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["gallery"], "no temporary folder left behind"


def test_gallery_page_says_score_answer_decision_once(results, sample_dir, tmp_path):
    index = write_gallery(
        tmp_path, results, sample_dir, per_dataset=4, threshold=0.6, threshold_source="f1_max, t.json"
    )
    page = index.read_text()
    figures = re.findall(r"<figure>.*?</figure>", page, flags=re.S)
    assert len(figures) == 4
    for fig, (score, answer, decision, verdict) in zip(
        figures,
        [
            ("0.910", "Yes", "anomalous", "correct"),
            ("0.120", "No", "normal", "wrong"),
            ("0.800", "Yes", "anomalous", "wrong"),
            ("0.050", "No", "normal", "correct"),
        ],
    ):
        assert f"P(Yes) <b>{score}</b>" in fig and f"answer <b>{answer}</b>" in fig
        assert f">{decision}</b> ({verdict})" in fig
        assert fig.count("supercalifragilisticexpialidocious" * 4) == 1 and fig.count(" bent</mark>") == 1, (
            "reasoning shown once"
        )
    assert "t = 0.600 (f1_max, t.json)" in page and "overflow-wrap:anywhere" in page
    with Image.open(tmp_path / "gallery" / "mvtec_ad_00.png") as panel:
        assert panel.width <= 1000, "a panel fits the page width"
        strip = np.asarray(panel.convert("RGB"))[70:270, 3 * 256 + 3 * 8 + 4 : 3 * 256 + 3 * 8 + 16]  # the colour bar
    assert strip[0].mean(0)[0] > strip[0].mean(0)[2] and strip[-1].mean(0)[2] > strip[-1].mean(0)[0], (
        "red top, blue bottom"
    )


def test_annotated_overlay_keeps_the_image_at_the_top_left(sample_dir):
    with Image.open(sample_dir / GRID / "test/bent/000.png") as im:
        image = im.convert("RGB")
    amap = np.zeros((image.height, image.width), np.float32)
    amap[100:200, 100:300] = 3.0
    out = annotated_overlay(image, amap, "000.png | answer Yes | score 0.912 | decision anomalous (P(Yes) >= 0.500)")
    assert out.width > image.width and out.height > image.height
    from readl.evaluation.report import overlay

    assert np.array_equal(np.asarray(out)[: image.height, : image.width], np.asarray(overlay(image, amap)))


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium; .ci/run does)")
def test_gallery_renders_without_horizontal_scroll_in_headless_chromium(results, sample_dir, tmp_path):
    index = write_gallery(tmp_path, results, sample_dir, per_dataset=4, threshold=0.6, threshold_source="f1_max")
    shot = tmp_path / "gallery.png"
    # the page's own width vs the window: a script writes the scroll width into the title, dumped with --dump-dom
    probe = index.with_name("probe.html")
    probe.write_text(
        index.read_text() + "<script>document.title='W='+document.documentElement.scrollWidth+"
        "'/'+window.innerWidth</script>"
    )
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,2000"]
    dom = subprocess.run([*flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r"<title>W=(\d+)/(\d+)</title>", dom.stdout)
    assert m, dom.stderr[-2000:]
    assert int(m.group(1)) <= int(m.group(2)), f"horizontal scroll: page {m.group(1)} px > window {m.group(2)} px"
    subprocess.run([*flags, f"--screenshot={shot}", index.as_uri()], capture_output=True, timeout=120, check=True)
    with Image.open(shot) as png:
        px = np.asarray(png.convert("RGB"))
    assert png.size == (1280, 2000)
    # the panels were drawn (not a blank or broken-image page): the colour bars' dark-red tops are on screen
    dark_red = (px[..., 0] > 110) & (px[..., 1] < 30) & (px[..., 2] < 30)
    assert dark_red.sum() > 200 and (px < 250).any(-1).mean() > 0.2
