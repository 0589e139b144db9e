"""Robust mask decoding and binarisation (curate, evaluate): files, folders of masks, COCO / labelme JSON.

Mask binarisation (``binarise_mask``), chosen to get every published convention right:

* a mask's "strength" is its grey value; RGB/RGBA/palette masks use the maximum over the colour
  channels (a pure red (255, 0, 0) annotation is foreground, whereas its luma of 76 would not be);
  pixels with alpha 0 are background, and a mask whose colour is empty wherever it is opaque (a defect drawn in
  black on a transparent layer) is its alpha channel; 16-bit and float masks are used with their own full scale.
* clean masks: foreground is ``value > 0``. This covers {0, 1} (VisA, ReinAD), {0, 255} (MVTec
  AD, MPDD, BTAD), small per-class indices (VisA's raw masks), MVTec LOCO's per-defect values
  238-255 and MVTec 3D's 253-255.
* lossy masks: foreground is ``value > full_scale / 2`` (``>= 128`` for 8-bit). A mask is lossy
  when its file is JPEG/MPO/JPEG 2000, or it has more than ``MAX_LOSSLESS_LEVELS`` distinct values,
  or it has both non-zero values in the lower half of the scale and values in the upper half (the
  signature of a mask that went through JPEG, bilinear resizing or anti-aliasing before being
  saved losslessly: no published convention mixes small class indices with near-white values).
  JPEG ringing leaves values near 0 (up to 30-40 next to an edge) and near 255; the midpoint is the
  threshold farthest from both, so neither noise band flips. A lossy mask that encodes defects with
  small values (< 128) would be lost by this rule: no benchmark we know of does that.
"""

from __future__ import annotations

import json
import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from readl.data.images import (
    DEFAULT_SIZE,
    EXIF_SWAPS_AXES,
    EXIF_TRANSPOSE,
    REFETCH_HINT,
    BadImageError,
    check_size,
    decode_image,
    int_bit_depth,
    rgb_oriented,
)

__all__ = ["MAX_LOSSLESS_LEVELS", "binarise_mask", "load_mask", "load_pair", "mask_is_empty"]

MAX_LOSSLESS_LEVELS = 16
"""A mask with more distinct values than this is treated as lossy (midpoint threshold)."""

_LOSSY_FORMATS = frozenset({"JPEG", "MPO", "JPEG2000"})
_MASK_IMAGE_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg", ".gif", ".webp")


def binarise_mask(img: Image.Image, path: str | os.PathLike[str] = "<mask>") -> np.ndarray:
    """Binarise a decoded mask image at its own size (rule in the module docstring).

    Args:
        img: a loaded PIL image of any mode (1, L, LA, P, PA, RGB, RGBA, I;16*, I, F, ...).
        path: used only in error messages.
    Returns:
        ``np.ndarray`` of dtype bool, shape ``(height, width)``; True = defect.
    Raises:
        BadImageError: float mask with NaN/inf, or a mode with no conversion.
    Source: readl's rule (module docstring); conventions from MVTec AD, VisA, MVTec LOCO, MVTec 3D.
    """
    mode = img.mode
    fmt = img.format  # conversions below drop it
    if mode == "1":
        return np.asarray(img, dtype=bool).copy()
    alpha = None
    if mode in ("P", "PA"):
        img = img.convert("RGBA") if (mode == "PA" or "transparency" in img.info) else img.convert("RGB")
        mode = img.mode
    if mode in ("LA", "La", "RGBA", "RGBa"):
        alpha = np.asarray(img.getchannel("A"))
        img = img.getchannel(0) if mode in ("LA", "La") else img.convert("RGB")
        mode = img.mode
    if mode == "CMYK" or mode in ("YCbCr", "LAB", "HSV"):
        try:
            img = img.convert("RGB")
        except Exception as exc:  # noqa: BLE001
            raise BadImageError(path, f"unsupported mask mode {mode!r} ({exc}); save the mask as a grey PNG") from None
        mode = "RGB"
    if mode in ("RGB", "RGBX"):
        arr = np.asarray(img)[..., :3].max(axis=2)
        full = 255.0
    elif mode == "L":
        arr = np.asarray(img)
        full = 255.0
    elif mode.startswith("I"):
        arr = np.asarray(img).astype(np.int64)
        full = float(2 ** int_bit_depth(img, arr) - 1)
    elif mode == "F":
        arr = np.asarray(img).astype(np.float64)
        if not np.all(np.isfinite(arr)):
            raise BadImageError(path, "float mask contains NaN or infinity; fix the export")
        full = 1.0 if (arr.size == 0 or float(arr.max()) <= 1.0) else 255.0
    else:
        raise BadImageError(path, f"unsupported mask mode {mode!r}; save the mask as a grey PNG")

    half = full / 2.0
    if arr.dtype == np.uint8:
        hist = np.bincount(arr.ravel(), minlength=256)
        levels = int(np.count_nonzero(hist))
        mixed = bool(hist[1:128].any() and hist[128:].any())
    else:
        values = np.unique(arr)
        levels = int(values.size)
        mixed = bool(((values > 0) & (values <= half)).any() and (values > half).any())
    lossy = (fmt in _LOSSY_FORMATS) or levels > MAX_LOSSLESS_LEVELS or mixed
    fg = arr > half if lossy else arr > 0
    if alpha is not None:
        drawn = alpha > (127 if lossy else 0)  # (H, W) bool
        # a defect drawn in black (or any one colour) on a transparent layer: the alpha channel is the annotation
        fg = drawn if (not (fg & drawn).any() and drawn.any() and not drawn.all()) else fg & (alpha > 0)
    return np.ascontiguousarray(fg)


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in _MASK_IMAGE_SUFFIXES and not p.name.startswith(".")
    )


@lru_cache(maxsize=16)
def _coco_index(path: str, mtime_ns: int) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict) or not {"images", "annotations"} <= set(data):
        raise BadImageError(path, "not a COCO annotation file (needs 'images' and 'annotations')")
    images = {str(im["id"]): im for im in data["images"]}
    anns: dict[str, list[dict]] = {}
    for ann in data["annotations"]:
        anns.setdefault(str(ann["image_id"]), []).append(ann)
    return {"images": images, "anns": anns}


def _rasterise_coco(path: Path, image_id: str | int | None) -> np.ndarray:
    if image_id is None:
        raise BadImageError(path, "a COCO annotation file needs the image id (record.mask_ref)")
    try:
        index = _coco_index(str(path), path.stat().st_mtime_ns)
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BadImageError(
            path, f"cannot read COCO annotations ({type(exc).__name__}: {exc}); {REFETCH_HINT}"
        ) from None
    key = str(image_id)
    if key not in index["images"]:
        raise BadImageError(
            path,
            f"COCO image id {image_id!r} not in 'images'; the manifest and the annotation file disagree: re-run curate",
        )
    info = index["images"][key]
    w, h = int(info["width"]), int(info["height"])
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for ann in index["anns"].get(key, []):
        seg = ann.get("segmentation")
        if isinstance(seg, list) and seg:
            for poly in seg:
                if len(poly) >= 6:
                    draw.polygon(
                        [(float(poly[i]), float(poly[i + 1])) for i in range(0, len(poly) - 1, 2)],
                        fill=255,
                        outline=255,
                    )
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
            counts = seg["counts"]
            rh, rw = (int(v) for v in seg.get("size", (h, w)))
            flat = np.zeros(rh * rw, dtype=np.uint8)
            pos, val = 0, 0
            for c in counts:
                flat[pos : pos + int(c)] = val
                pos += int(c)
                val = 255 - val
            rle = Image.fromarray(flat.reshape((rw, rh)).T)  # COCO RLE is column-major
            canvas.paste(255, mask=rle)
        elif isinstance(seg, dict):
            raise BadImageError(
                path,
                "compressed COCO RLE is not supported; convert the "
                "annotations to polygons (or install pycocotools and decode)",
            )
        elif ann.get("bbox"):
            x, y, bw, bh = (float(v) for v in ann["bbox"])
            draw.rectangle([x, y, x + bw, y + bh], fill=255)
    return np.asarray(canvas) > 0


def _rasterise_labelme(path: Path, data: dict) -> np.ndarray:
    try:
        w, h = int(data["imageWidth"]), int(data["imageHeight"])
        shapes = data["shapes"]
    except (KeyError, TypeError, ValueError) as exc:
        raise BadImageError(path, f"labelme file lacks {exc}; re-export it from labelme") from None
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for shape in shapes:
        kind = shape.get("shape_type") or "polygon"
        pts = [(float(x), float(y)) for x, y in shape.get("points", [])]
        if kind == "polygon" and len(pts) >= 3:
            draw.polygon(pts, fill=255, outline=255)
        elif kind == "rectangle" and len(pts) == 2:
            (x0, y0), (x1, y1) = pts
            draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=255)
        elif kind == "circle" and len(pts) == 2:
            (cx, cy), (px, py) = pts
            r = math.hypot(px - cx, py - cy)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        else:
            raise BadImageError(
                path,
                f"labelme shape {kind!r} with {len(pts)} points cannot be rasterised as an area; fix the annotation",
            )
    return np.asarray(canvas) > 0


def _read_json_mask(path: Path, coco_image_id: str | int | None) -> np.ndarray:
    if coco_image_id is not None:
        return _rasterise_coco(path, coco_image_id)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadImageError(path, f"unreadable JSON annotation ({exc}); {REFETCH_HINT}") from None
    if isinstance(data, dict) and "shapes" in data:
        return _rasterise_labelme(path, data)
    if isinstance(data, dict) and "annotations" in data:
        raise BadImageError(path, "a COCO annotation file needs the image id (record.mask_ref)")
    raise BadImageError(path, "JSON mask is neither labelme ('shapes') nor COCO ('annotations')")


def _read_mask(path: str | os.PathLike[str], coco_image_id: str | int | None = None) -> tuple[np.ndarray, int]:
    """Mask at native size as stored: (bool array (H, W), the mask file's own EXIF orientation)."""
    p = Path(path)
    if p.is_dir():
        files = _image_files(p)
        if not files:
            raise BadImageError(p, "mask folder holds no mask images; re-extract the dataset")
        union: np.ndarray | None = None
        for f in files:
            part, orient = _read_mask(f)
            if orient != 1:
                part = _transpose_mask(part, orient)
            if union is not None and part.shape != union.shape:
                raise BadImageError(
                    f,
                    f"mask size {part.shape[::-1]} differs from the other masks "
                    f"in {p} ({union.shape[::-1]}); fix the annotation",
                )
            union = part if union is None else (union | part)
        return union, 1
    if p.suffix.lower() == ".json":
        if not p.exists():
            raise BadImageError(p, "annotation file does not exist; re-fetch the data")
        return _read_json_mask(p, coco_image_id), 1
    img, orientation, _ = decode_image(p, None)
    return binarise_mask(img, p), orientation


def _transpose_mask(mask: np.ndarray, orientation: int) -> np.ndarray:
    if orientation not in EXIF_TRANSPOSE:
        return mask
    im = Image.fromarray(mask.astype(np.uint8) * 255, mode="L").transpose(EXIF_TRANSPOSE[orientation])
    return np.asarray(im) > 0


def _resize_mask(mask: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or (mask.shape[1], mask.shape[0]) == tuple(size):
        return mask
    im = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    return np.asarray(im.resize(tuple(size), Image.Resampling.NEAREST)) > 0


def load_mask(
    path: str | os.PathLike[str], size: tuple[int, int] | None = DEFAULT_SIZE, *, coco_image_id: str | int | None = None
) -> np.ndarray:
    """Read a defect mask as a boolean array, binarised and nearest-neighbour resized.

    Args:
        path: one of
            * a mask image file (any mode/format; binarised by :func:`binarise_mask`),
            * a folder of mask images to OR together (MVTec LOCO: ``ground_truth/<defect>/<NNN>/``),
            * a labelme JSON (polygons, rectangles, circles; BSData),
            * a COCO JSON together with ``coco_image_id`` (polygons, uncompressed RLE, or bbox when
              an annotation has no segmentation; VISION).
        size: output ``(width, height)``, or ``None`` for the native size.
        coco_image_id: the COCO image id (Record.mask_ref) when ``path`` is a COCO file.
    Returns:
        ``np.ndarray`` bool, shape ``(height, width)`` (``(size[1], size[0])`` when resized);
        True = defect. The mask file's own EXIF orientation, if any, is applied.
    Raises:
        BadImageError: missing/zero-byte/corrupt/truncated file, empty mask folder, masks of
            different sizes in one folder, unreadable or unsupported annotation JSON.
    Source: binarisation rule in the module docstring; LOCO union per anomalib's MVTecLOCODataset.
    """
    size = check_size(size)
    mask, orientation = _read_mask(path, coco_image_id)
    if orientation != 1:
        mask = _transpose_mask(mask, orientation)
    return _resize_mask(mask, size)


def mask_is_empty(path: str | os.PathLike[str], *, coco_image_id: str | int | None = None) -> bool:
    """True when the mask has no foreground pixel after binarisation (label 0 for such images).

    Args / raises: as :func:`load_mask` (native size). Used to label layouts without defect
    folders (generic images+masks folders, KolektorSDD: anomalib's ``is_mask_anomalous``).
    """
    mask, _ = _read_mask(path, coco_image_id)
    return not bool(mask.any())


def load_pair(
    image_path: str | os.PathLike[str],
    mask_path: str | os.PathLike[str] | None,
    size: tuple[int, int] | None = DEFAULT_SIZE,
    *,
    coco_image_id: str | int | None = None,
    min_side: int = 1,
) -> tuple[Image.Image, np.ndarray]:
    """Decode an image and its mask consistently: same orientation, checked sizes, same output size.

    Orientation: the image's EXIF orientation is applied to the image (as
    ``ImageOps.exif_transpose``) and the same transpose to the mask, which normally has no EXIF of
    its own (annotation tools save masks in the image's stored pixel order). Two exceptions: a
    mask with its own EXIF orientation gets its own; and when the orientation swaps the axes and the
    stored mask already has the image's *displayed* size (it was drawn on the upright image), the
    mask is used as stored. JSON masks (COCO/labelme) are in displayed coordinates and not
    transposed.

    Args:
        image_path: image file.
        mask_path: mask file/folder/JSON (see :func:`load_mask`), or ``None`` for a normal image.
        size: output ``(width, height)``, or ``None`` for the image's upright native size.
        coco_image_id: COCO image id when ``mask_path`` is a COCO JSON.
        min_side: as :func:`load_rgb`.
    Returns:
        ``(image, mask)``: PIL RGB image of size ``size``; bool array of shape
        ``(size[1], size[0])`` (all False when ``mask_path`` is None).
    Raises:
        BadImageError: any decoding error of either file (see :func:`load_rgb`,
            :func:`load_mask`), or a mask whose (oriented) size differs from the image's upright
            size (the message gives both sizes; fix or drop the pair).
    Source: EXIF orientation semantics of ``PIL.ImageOps.exif_transpose``.
    """
    size = check_size(size)
    img, orientation, upright = rgb_oriented(image_path, size, min_side)
    out_size = size or upright
    if mask_path is None:
        return img, np.zeros((out_size[1], out_size[0]), dtype=bool)
    mask, own = _read_mask(mask_path, coco_image_id)
    is_json_or_dir = Path(mask_path).suffix.lower() == ".json" or Path(mask_path).is_dir()
    stored = (mask.shape[1], mask.shape[0])
    if own != 1:
        mask = _transpose_mask(mask, own)
    elif orientation != 1 and not is_json_or_dir:
        if not (orientation in EXIF_SWAPS_AXES and stored == upright and stored != upright[::-1]):
            mask = _transpose_mask(mask, orientation)
    got = (mask.shape[1], mask.shape[0])
    if got != upright:
        raise BadImageError(
            mask_path,
            f"mask size {got[0]}x{got[1]} does not match image {Path(image_path).name} "
            f"({upright[0]}x{upright[1]} upright); the mask belongs to another image or "
            f"was resized separately: fix the pairing or drop this sample",
        )
    return img, _resize_mask(mask, out_size)
