"""Pictures people look at: anomaly-map overlays (and, later, the heat-map gallery)."""

from __future__ import annotations

import functools

import numpy as np
from matplotlib import colormaps
from PIL import Image

__all__ = ["overlay"]


@functools.cache
def _colormap_lut(cmap: str) -> np.ndarray:
    """``(256, 3)`` uint8: the matplotlib colormap's 256 colours (what it maps [0, 1] to, 8 bits per channel)."""
    return (colormaps[cmap].resampled(256)(np.arange(256))[:, :3] * 255).astype(np.uint8)


def overlay(image: Image.Image, anomaly_map: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> Image.Image:
    """The image with its anomaly map blended on top.

    The map is scaled and indexed into a 256-entry uint8 colour table in float32 (matplotlib's own
    binning: index ``floor(256 x)`` clipped to 255), so the cost is one float32 and one uint8 (H, W, 3)
    array, never a float64 RGBA one.

    Args:
        image: any PIL image; converted to RGB.
        anomaly_map: ``(H, W)`` float map at the image's size; min-max scaled for display only (the
            JSON and the metrics keep the raw values).
        alpha: map opacity in [0, 1].
        cmap: a matplotlib colormap name.

    Returns:
        RGB PIL image of the same size.

    Raises:
        ValueError: the map's shape is not the image's ``(height, width)``.
    """
    rgb = image.convert("RGB")
    if anomaly_map.shape != (rgb.height, rgb.width):
        raise ValueError(f"map shape {anomaly_map.shape} != image (height, width) {(rgb.height, rgb.width)}")
    m = np.asarray(anomaly_map, dtype=np.float32)  # (H, W)
    lo, hi = (float(m.min()), float(m.max())) if m.size else (0.0, 0.0)
    if hi > lo:
        scaled = (m - np.float32(lo)) / np.float32(hi - lo)  # (H, W) float32 in [0, 1]
        index = np.minimum(scaled * np.float32(256), np.float32(255)).astype(np.uint8)  # (H, W), floor
    else:
        index = np.zeros(m.shape, np.uint8)
    heat = _colormap_lut(cmap)[index]  # (H, W, 3) uint8
    return Image.blend(rgb, Image.fromarray(heat), alpha)


# ---- stage outputs: metrics.json, curves for `dvc plots`, per-category tables, heat-map gallery ----


def _clean(obj):
    """NaN/inf -> None (valid JSON for DVC and browsers), numpy scalars -> Python, 6 decimals."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return round(float(obj), 6) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_metrics(path, metrics: dict):
    """``metrics.json`` (DVC metrics): everything but the curves, NaN as null."""
    from readl.atomic import write_json

    return write_json(path, _clean({k: v for k, v in metrics.items() if not k.startswith("_")}))


def write_curves(plots_dir, results, pixel_curves: dict) -> list:
    """ROC / PR curves as JSON rows for ``dvc plots``: ``<plots_dir>/{image,pixel}_{roc,pr}/<dataset>.json``."""
    from pathlib import Path

    from sklearn.metrics import precision_recall_curve, roc_curve

    from readl.atomic import write_json

    plots_dir, written = Path(plots_dir), []
    datasets = sorted({r.dataset for r in results})
    for ds in datasets:
        rs = [r for r in results if r.dataset == ds]
        y = np.array([r.label for r in rs])
        s = np.array([r.score for r in rs])
        if 0 < y.sum() < len(y):
            fpr, tpr, _ = roc_curve(y, s)
            prec, rec, _ = precision_recall_curve(y, s)
            written.append(write_json(plots_dir / "image_roc" / f"{ds}.json",
                                      _clean([{"fpr": a, "tpr": b} for a, b in zip(fpr, tpr)])))  # fmt: skip
            written.append(write_json(plots_dir / "image_pr" / f"{ds}.json",
                                      _clean([{"recall": a, "precision": b} for a, b in zip(rec, prec)])))  # fmt: skip
        c = pixel_curves.get(ds) or {}
        if c.get("fpr"):
            written.append(write_json(plots_dir / "pixel_roc" / f"{ds}.json",
                                      [{"fpr": a, "tpr": b} for a, b in zip(c["fpr"], c["tpr"])]))  # fmt: skip
            written.append(write_json(plots_dir / "pixel_pr" / f"{ds}.json",
                                      [{"recall": a, "precision": b} for a, b in zip(c["recall"], c["precision"])]))  # fmt: skip
    return written


def write_tables(reports_dir, table) -> tuple:
    """Per-category table as ``per_category.csv`` and ``per_category.md`` (values in percent, 1 decimal)."""
    from pathlib import Path

    from readl.atomic import atomic_write, write_text

    reports_dir = Path(reports_dir)
    csv = atomic_write(reports_dir / "per_category.csv", lambda p: table.to_csv(p, index=False))
    shown = table.copy()
    for col in shown.columns:
        if col.startswith(("image_", "pixel_")):
            shown[col] = (shown[col] * 100).round(1)
    md = write_text(reports_dir / "per_category.md", shown.to_markdown(index=False) + "\n")
    return csv, md


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _reasoning_panel(tokens: list[str], weights, width: int, height: int) -> Image.Image:
    """The reasoning as wrapped text; tokens with w > 0 highlighted (stronger colour = larger w)."""
    from PIL import ImageDraw

    panel = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(panel)
    font = _font(14)
    w_max = float(max(weights)) if len(weights) and max(weights) > 0 else 1.0
    x, y, line_h = 8, 8, 18
    for tok, w in zip(tokens, weights):
        text = tok.replace("\n", " ")
        tw = draw.textlength(text, font=font)
        if x + tw > width - 8:
            x, y = 8, y + line_h
        if y > height - line_h:
            draw.text((x, y), "...", fill="black", font=font)
            break
        if w > 0:
            level = int(255 - 155 * float(w) / w_max)
            draw.rectangle([x, y, x + tw, y + line_h - 2], fill=(255, level, level))
        draw.text((x, y), text, fill="black", font=font)
        x += tw
    return panel


def gallery_panel(result, root, size: int = 256) -> Image.Image:
    """image | ground-truth mask | anomaly map overlay | reasoning with the selected tokens highlighted."""
    from pathlib import Path

    from readl.localization.anomaly_map import upsample

    with Image.open(Path(root) / result.image_path) as im:
        image = im.convert("RGB").resize((size, size))
    if result.mask_path:
        with Image.open(Path(root) / result.mask_path) as m:
            mask = m.convert("RGB").resize((size, size), Image.NEAREST)
    else:
        mask = Image.new("RGB", (size, size), "black")
    amap = upsample(result.real_map, (size, size))
    panels = [image, mask, overlay(image, amap), _reasoning_panel(result.tokens, result.weights, 2 * size, size)]
    out = Image.new("RGB", (sum(p.width for p in panels) + 8 * (len(panels) - 1), size + 24), "white")
    x = 0
    head = (f"{result.dataset}/{result.category}  label={result.label}  answer={result.answer}  "
            f"score={result.score:.3f}{'  [malformed: fallback]' if result.malformed else ''}")  # fmt: skip
    from PIL import ImageDraw

    ImageDraw.Draw(out).text((4, 4), head, fill="black", font=_font(13))
    for p in panels:
        out.paste(p, (x, 24))
        x += p.width + 8
    return out


def write_gallery(reports_dir, results, root, per_dataset: int = 4, seed: int = 0) -> object:
    """Heat-map gallery: PNG panels for a sample of images per dataset (anomalous first) and ``index.html``."""
    import html
    from pathlib import Path

    from readl.atomic import atomic_write, write_text

    gallery = Path(reports_dir) / "gallery"
    rows = []
    for ds in sorted({r.dataset for r in results}):
        rs = [r for r in results if r.dataset == ds]
        rng = np.random.default_rng(seed)
        anomalous = [rs[i] for i in rng.permutation(len(rs)) if rs[i].label == 1]
        normal = [rs[i] for i in rng.permutation(len(rs)) if rs[i].label == 0]
        for k, r in enumerate((anomalous + normal)[:per_dataset]):
            name = f"{ds}_{k:02d}.png"
            atomic_write(gallery / name, lambda p, r=r: gallery_panel(r, root).save(p, format="PNG"))
            spans = "".join(
                f'<mark style="background: rgba(255,80,80,{min(1.0, 0.25 + float(w) / max(1e-9, float(max(r.weights)))):.2f})">'
                f"{html.escape(t)}</mark>" if w > 0 else html.escape(t)
                for t, w in zip(r.tokens, r.weights)
            )  # fmt: skip
            rows.append(f"<h3>{html.escape(ds)} / {html.escape(r.category)} &mdash; label {r.label}, answer "
                        f"{html.escape(str(r.answer))}, score {r.score:.3f}</h3><img src=\"{name}\"><p>{spans}</p>")  # fmt: skip
    page = ("<!doctype html><meta charset='utf-8'><title>readl heat-map gallery</title>"
            "<style>body{font-family:sans-serif;max-width:1400px;margin:auto}img{max-width:100%}</style>"
            "<h1>readl heat-map gallery</h1><p>image | ground truth | ReAL anomaly map | reasoning "
            "(highlighted: tokens selected by ReAL, darker = larger weight w)</p>" + "\n".join(rows))  # fmt: skip
    return write_text(gallery / "index.html", page)


def metrics_table(metrics: dict, title: str | None = None):
    """A rich table of ``metrics.json``: per dataset and the macro average (percent, 1 decimal)."""
    from rich.table import Table

    table = Table("dataset", "I-AUROC", "I-ACC", "P-AUROC", "P-AUPR", "AUPRO", "P-ACC", "malformed",
                  title=title, caption="I- image level, P- pixel level, in %")  # fmt: skip
    pct = lambda v: "n/a" if v is None or v != v else f"{100 * v:.1f}"  # noqa: E731
    avg = {"image": metrics["image"], "pixel": metrics["pixel"], "n_malformed": metrics["n_malformed"]}
    for name, d in [*metrics["datasets"].items(), ("AVG", avg)]:
        i, p = d["image"], d["pixel"]
        table.add_row(name, pct(i["AUROC"]), pct(i["ACC"]), pct(p["AUROC"]), pct(p["AUPR"]), pct(p["AUPRO"]),
                      pct(p["ACC"]), str(d["n_malformed"]))  # fmt: skip
    return table
