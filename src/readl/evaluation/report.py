"""Pictures and tables people look at: anomaly-map overlays with a colour bar and caption, the heat-map
gallery, metrics.json, curves for ``dvc plots``, per-category tables."""

from __future__ import annotations

import functools

import numpy as np
from matplotlib import colormaps
from PIL import Image

__all__ = ["overlay", "colorbar", "annotated_overlay", "gallery_panel", "gallery_picks", "write_gallery"]


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


def clean_json(obj):
    """NaN/inf -> None (valid JSON for DVC and browsers), numpy scalars -> Python, 6 decimals."""
    if isinstance(obj, dict):
        return {k: clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return round(float(obj), 6) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_metrics(path, metrics: dict):
    """``metrics.json``, the full record (datasets, modes, intervals, baselines, runtime): everything but the
    curves, NaN as null. DVC's metrics file is the short :func:`headline_metrics`."""
    from readl.atomic import write_json

    return write_json(path, clean_json({k: v for k, v in metrics.items() if not k.startswith("_")}))


HEADLINE = {"image": ("AUROC", "AUPR", "F1_max"), "pixel": ("AUROC", "AUPRO")}
"""The averages :func:`headline_metrics` keeps (paper Tables 1-2), and per dataset image / pixel AUROC."""


def headline_metrics(metrics: dict) -> dict[str, float | int | None]:
    """The flat, short view of ``metrics`` that ``dvc metrics show`` / ``diff`` print (``reports/headline.json``):
    ``{"image.AUROC": ..., "pixel.AUPRO": ..., "format_rate": ..., "reasoning.ROUGE_L": ..., "<dataset>.image.AUROC":
    ..., "n_images": ...}``; values in [0, 1] (counts as int), ``None`` when undefined. One row of a few dozen
    columns at most, never lists (the record with intervals is ``metrics.json``)."""
    flat: dict[str, float | int | None] = {k: metrics.get(k) for k in ("n_images", "format_rate")}
    for level, names in HEADLINE.items():
        flat.update({f"{level}.{n}": (metrics.get(level) or {}).get(n) for n in names})
    flat.update({f"reasoning.{n}": (metrics.get("reasoning") or {}).get(n) for n in ("ROUGE_L", "SBERT")})
    for ds, m in sorted((metrics.get("datasets") or {}).items()):
        flat.update({f"{ds}.{level}.AUROC": (m.get(level) or {}).get("AUROC") for level in ("image", "pixel")})
    return clean_json(flat)


def write_headline(path, metrics: dict):
    """:func:`headline_metrics` of ``metrics`` to ``path`` (atomic JSON)."""
    from readl.atomic import write_json

    return write_json(path, headline_metrics(metrics))


def write_curves(plots_dir, results, pixel_curves: dict) -> list:
    """ROC / PR curves as JSON rows for ``dvc plots``: ``<plots_dir>/{image,pixel}_{roc,pr}/<dataset>.json``.

    Args:
        plots_dir: the plots folder (``plots/``); sub-folders are created.
        results: the :class:`~readl.evaluation.evaluate.ImageResult` list (image scores in [0, 1] and labels).
        pixel_curves: ``dataset -> {"fpr", "tpr", "recall", "precision"}`` point lists (``metrics["_curves"]``
            of :func:`readl.evaluation.evaluate.evaluate`), each value in [0, 1].

    Returns:
        The paths written (atomic JSON files, rows ``{"fpr", "tpr"}`` or ``{"recall", "precision"}``, 6
        decimals). A dataset with a single class has no image curves (ROC is undefined).
    """
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
            written.append(
                write_json(
                    plots_dir / "image_roc" / f"{ds}.json", clean_json([{"fpr": a, "tpr": b} for a, b in zip(fpr, tpr)])
                )
            )
            written.append(
                write_json(
                    plots_dir / "image_pr" / f"{ds}.json",
                    clean_json([{"recall": a, "precision": b} for a, b in zip(rec, prec)]),
                )
            )
        c = pixel_curves.get(ds) or {}
        if c.get("fpr"):
            written.append(
                write_json(
                    plots_dir / "pixel_roc" / f"{ds}.json", [{"fpr": a, "tpr": b} for a, b in zip(c["fpr"], c["tpr"])]
                )
            )
            written.append(
                write_json(
                    plots_dir / "pixel_pr" / f"{ds}.json",
                    [{"recall": a, "precision": b} for a, b in zip(c["recall"], c["precision"])],
                )
            )
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


def _tick(v: float, span: float) -> str:
    """A colour-bar label with enough decimals to tell the bar's ends apart (3 significant digits of ``span``)."""
    import math

    if span <= 0 or not math.isfinite(span) or abs(v) >= 1e4:
        return f"{v:.3g}"
    return f"{v:.{min(8, max(0, 2 - math.floor(math.log10(span))))}f}"


def colorbar(height: int, lo: float, hi: float, cmap: str = "jet", font_size: int = 12) -> Image.Image:
    """A vertical colour bar (``hi`` at the top) with the map values at the top, middle and bottom.

    Args:
        height: pixels; lo, hi: the raw map values the colours stand for (the overlay's min-max range);
        cmap: matplotlib colormap name (the overlay's); font_size: label size in pixels.

    Returns:
        RGB image of ``height`` rows, about ``font_size * 6`` pixels wide.
    """
    from PIL import ImageDraw

    bar_w, pad = max(12, font_size), 4
    width = bar_w + 2 * pad + int(font_size * 5.5)
    out = Image.new("RGB", (width, height), "white")
    top = int(1.8 * font_size)  # the title above, half a label of room below
    ramp = np.linspace(1.0, 0.0, max(height - top - font_size, 2))[:, None].repeat(bar_w, 1)  # (h, bar_w), top = 1
    out.paste(Image.fromarray((colormaps[cmap](ramp)[..., :3] * 255).astype(np.uint8)), (pad, top))
    draw, font = ImageDraw.Draw(out), _font(font_size)
    bottom = top + ramp.shape[0] - 1
    for y, v in ((top, hi), ((top + bottom) // 2, (lo + hi) / 2), (bottom, lo)):
        draw.text((pad + bar_w + 3, y - font_size // 2), _tick(v, hi - lo), fill="black", font=font)
    draw.text((pad, 0), "map", fill="black", font=font)
    return out


def annotated_overlay(image: Image.Image, anomaly_map: np.ndarray, caption: str, cmap: str = "jet") -> Image.Image:
    """:func:`overlay` with a colour bar on its right and ``caption`` under it (``readl predict``'s PNG).

    The overlay keeps the image's pixels at the top-left (pixel (x, y) = image pixel (x, y)); the canvas is
    wider (the bar) and taller (the caption, wrapped to the width). Font size scales with the image width.
    """
    import textwrap

    from PIL import ImageDraw

    ov = overlay(image, anomaly_map, cmap=cmap)
    fs = max(12, ov.width // 48)
    lo, hi = (float(anomaly_map.min()), float(anomaly_map.max())) if anomaly_map.size else (0.0, 0.0)
    bar = colorbar(ov.height, lo, hi, cmap, font_size=fs)
    lines = textwrap.wrap(caption, width=max(20, int((ov.width + bar.width) / (0.55 * fs))))
    out = Image.new("RGB", (ov.width + bar.width, ov.height + len(lines) * (fs + 4) + 8), "white")
    out.paste(ov, (0, 0))
    out.paste(bar, (ov.width, 0))
    draw = ImageDraw.Draw(out)
    for k, line in enumerate(lines):
        draw.text((4, ov.height + 4 + k * (fs + 4)), line, fill="black", font=_font(fs))
    return out


def _caption(result, threshold: float) -> str:
    from readl.evaluation.decision import decide

    decision = decide(result.score, threshold)
    right = (decision == "anomalous") == bool(result.label)
    return (
        f"label {'anomalous' if result.label else 'normal'} | score {result.score:.3f} | answer "
        f"{_answer(result)} | decision {decision} at t={threshold:.3f} ({'correct' if right else 'WRONG'})"
    )


def _answer(result) -> str:
    return "none (malformed)" if result.malformed else str(result.answer)


def _shown_path(result) -> str:
    """The image path from its dataset folder on (``grid/test/bent/000.png``)."""
    path = str(result.image_path).replace("\\", "/")
    marker = f"/{result.dataset}/"
    return path.split(marker, 1)[1] if marker in path else path


def gallery_panel(result, root, size: int = 256, threshold: float = 0.5) -> Image.Image:
    """One gallery panel: a caption line, then image | ground-truth mask | ReAL map overlay | colour bar."""
    from pathlib import Path

    from PIL import ImageDraw

    from readl.localization.anomaly_map import upsample

    with Image.open(Path(root) / result.image_path) as im:
        image = im.convert("RGB").resize((size, size))
    if result.mask_path:
        with Image.open(Path(root) / result.mask_path) as m:
            mask = m.convert("RGB").resize((size, size), Image.NEAREST)
    else:
        mask = Image.new("RGB", (size, size), "black")
    amap = upsample(result.real_map, (size, size))
    lo, hi = (float(amap.min()), float(amap.max())) if amap.size else (0.0, 0.0)
    panels = [image, mask, overlay(image, amap), colorbar(size, lo, hi)]
    titles = ["image", "ground truth", "ReAL anomaly map", ""]
    head_h, title_h = 22, 18
    out = Image.new("RGB", (sum(p.width for p in panels) + 8 * (len(panels) - 1), size + head_h + title_h), "white")
    draw = ImageDraw.Draw(out)
    draw.text(
        (4, 3), f"{result.dataset}/{_shown_path(result)}  {_caption(result, threshold)}", fill="black", font=_font(13)
    )
    x = 0
    for p, title in zip(panels, titles):
        draw.text((x + 2, head_h), title, fill="dimgray", font=_font(12))
        out.paste(p, (x, head_h + title_h))
        x += p.width + 8
    return out


def gallery_picks(results, per_dataset: int = 4) -> list[tuple[object, str]]:
    """Per dataset, the highest- and lowest-scored images of each label: ``[(result, why), ...]``.

    ``per_dataset`` images per dataset: half anomalous (the extra one when odd), half normal; within a label,
    alternately the highest and the lowest remaining score (ties: manifest order). A label with fewer
    images gives what it has. Order: dataset, anomalous first, then by pick.
    """
    picks = []
    for ds in sorted({r.dataset for r in results}):
        rs = [r for r in results if r.dataset == ds]
        quota = {1: (per_dataset + 1) // 2, 0: per_dataset // 2}
        for label in (1, 0):
            ranked = sorted((r for r in rs if r.label == label), key=lambda r: -r.score)  # stable: ties in order
            order = [i for k in range((len(ranked) + 1) // 2) for i in (k, len(ranked) - 1 - k)]
            chosen = list(dict.fromkeys(order))[: quota[label]]
            name = "anomalous" if label else "normal"
            for i in chosen:
                why = "highest-scored" if i < (len(ranked) + 1) // 2 else "lowest-scored"
                picks.append((ranked[i], f"{why} {name} image"))
    return picks


_GALLERY_CSS = (
    "body{font-family:sans-serif;max-width:1000px;margin:0 auto;padding:0 12px;line-height:1.4}"
    "img{max-width:100%;height:auto;display:block}figure{margin:0 0 28px;padding-top:8px;"
    "border-top:1px solid #ccc}figcaption{margin-bottom:6px}.reasoning{overflow-wrap:anywhere;"
    "word-break:break-word;white-space:pre-wrap;background:#fafafa;padding:6px;margin:6px 0}"
    ".ok{color:#060}.wrong{color:#b00;font-weight:bold}code{overflow-wrap:anywhere}"
)


def write_gallery(
    reports_dir, results, root, per_dataset: int = 4, threshold: float = 0.5, threshold_source: str = "default"
) -> object:
    """Heat-map gallery ``reports/gallery/index.html`` + one PNG panel per pick (:func:`gallery_picks`).

    Each figure: a caption (file, label, score P(Yes), answer, decision at ``threshold``, right or wrong), the
    panel (image | ground truth | ReAL map | colour bar of the map's values), and the reasoning once, its
    ReAL-selected tokens highlighted (darker = larger w). The page fits 1000 px: no horizontal scroll.
    The folder is replaced as a whole (:func:`readl.atomic.atomic_dir`): a failed write (disk full) leaves the
    previous gallery as it was, never a mix of old and new panels.

    Raises:
        OSError: a panel or the page cannot be written (the previous gallery is kept).
    """
    from pathlib import Path

    from readl.atomic import atomic_dir

    gallery = Path(reports_dir) / "gallery"
    with atomic_dir(gallery) as tmp:
        _write_gallery_into(tmp, results, root, per_dataset, threshold, threshold_source)
    return gallery / "index.html"


def _write_gallery_into(gallery, results, root, per_dataset: int, threshold: float, threshold_source: str) -> None:
    """The panels and ``index.html`` of :func:`write_gallery`, written into the (new, empty) folder ``gallery``."""
    import html

    from readl.evaluation.decision import decide

    rows, current = [], None
    for k, (r, why) in enumerate(gallery_picks(results, per_dataset)):
        if r.dataset != current:
            current = r.dataset
            rows.append(f"<h2>{html.escape(r.dataset)}</h2>")
        name = f"{r.dataset}_{k:02d}.png"
        gallery_panel(r, root, threshold=threshold).save(gallery / name, format="PNG")
        w_max = max(1e-9, float(max(r.weights))) if len(r.weights) else 1.0
        spans = "".join(
            f'<mark style="background: rgba(255,80,80,{min(1.0, 0.25 + float(w) / w_max):.2f})">{html.escape(t)}</mark>'
            if w > 0
            else html.escape(t)
            for t, w in zip(r.tokens, r.weights)
        )
        decision = decide(r.score, threshold)
        right = (decision == "anomalous") == bool(r.label)
        rows.append(
            f"<figure><figcaption><b>{html.escape(why)}</b> &middot; <code>{html.escape(_shown_path(r))}</code> "
            f"&middot; label <b>{'anomalous' if r.label else 'normal'}</b> &middot; score P(Yes) <b>{r.score:.3f}</b> "
            f"&middot; answer <b>{html.escape(_answer(r))}</b> &middot; "
            f'decision <b class="{"ok" if right else "wrong"}">{decision}</b> ({"correct" if right else "wrong"})'
            f'</figcaption><img src="{name}" alt="{html.escape(why)}">'
            f'<div class="reasoning">{spans or "<i>(no reasoning tokens)</i>"}</div></figure>'
        )
    page = (
        "<!doctype html><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
        f"<title>readl heat-map gallery</title><style>{_GALLERY_CSS}</style><h1>readl heat-map gallery</h1>"
        "<p>Per dataset: the highest- and lowest-scored anomalous and normal images. Each panel: image | ground "
        "truth | ReAL anomaly map (colours min-max scaled per image; the bar gives the map's values). Decision: "
        f"<i>anomalous</i> when P(Yes) &ge; t = {threshold:.3f} ({html.escape(threshold_source)}). Reasoning: the "
        "tokens ReAL selected are highlighted, darker = larger weight w.</p>" + "\n".join(rows)
    )
    (gallery / "index.html").write_text(page, encoding="utf-8")


def metrics_table(metrics: dict, title: str | None = None):
    """A rich table of ``metrics.json``: per dataset and the macro average (percent, 1 decimal)."""
    from rich.table import Table

    table = Table(
        "dataset",
        "I-AUROC",
        "I-ACC",
        "I-ACC@t",
        "P-AUROC",
        "P-AUPR",
        "AUPRO",
        "P-ACC",
        "malformed",
        title=title,
        caption="I- image level, P- pixel level, in %; I-ACC answer, I-ACC@t decision",
    )
    pct = lambda v: "n/a" if v is None or v != v else f"{100 * v:.1f}"  # noqa: E731
    avg = {"image": metrics["image"], "pixel": metrics["pixel"], "n_malformed": metrics["n_malformed"]}
    for name, d in [*metrics["datasets"].items(), ("AVG", avg)]:
        i, p = d["image"], d["pixel"]
        table.add_row(
            name,
            pct(i["AUROC"]),
            pct(i["ACC"]),
            pct(i.get("ACC_at_threshold")),
            pct(p["AUROC"]),
            pct(p["AUPR"]),
            pct(p["AUPRO"]),
            pct(p["ACC"]),
            str(d["n_malformed"]),
        )
    return table
