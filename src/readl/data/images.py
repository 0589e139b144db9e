"""Robust image and mask decoding for the curate stage.

Everything that turns a file of a benchmark into pixels goes through this module, so that every
source gets the same colour conversion, orientation handling, mask binarisation and error reports.

Conventions (all public functions):

* ``size`` is ``(width, height)`` in pixels, PIL's order; arrays come back as ``(height, width)``
  (masks) or ``(height, width, 3)`` (images). ``size=None`` keeps the decoded size.
* Images are resized with bicubic interpolation (PIL's, antialiased when downscaling: the filter
  support is scaled with the reduction), the interpolation the Qwen2.5-VL processor uses. Masks are
  binarised at their native size and then resized nearest-neighbour (binarising is pointwise, so
  binarise-then-resize and resize-then-binarise give the same pixels).
* Every failure to read a file raises :class:`BadImageError` (a ``ValueError``) whose message names
  the file, says what is wrong and how to fix it. A truncated file is an error, never a grey-filled
  image: this module never sets ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` and refuses to decode while
  another library has set it.

Colour conversion to 8-bit RGB (``to_rgb``):

==============  ==============================================================================
mode            conversion
==============  ==============================================================================
RGB             unchanged
L, 1            grey replicated to the three channels (1-bit: 0 -> 0, 1 -> 255)
LA, La          alpha dropped, grey replicated
RGBA, RGBa,     alpha dropped: colour channels kept as stored (no compositing). Industrial
RGBX            images carry no meaningful transparency; compositing would invent a background
P, PA           palette expanded (through RGBA when the palette has a transparent entry, as PIL
                recommends), alpha dropped
CMYK            PIL's CMYK -> RGB (naive, no ICC colour management; Adobe-inverted JPEGs are
                handled by PIL's JPEG decoder)
YCbCr, LAB,     PIL's converter
HSV
I;16*, I        integer grey scaled by the image's actual bit depth: ``round(v * 255 / (2**d - 1))``
                with ``d`` from the TIFF BitsPerSample tag, else 16 for I;16* modes and 16-bit PNGs,
                else (mode I) 16 when all values lie in [0, 65535], 32 otherwise; negative values
                are min-max scaled. PIL's own ``convert("L")`` clips 16-bit values at 255, which
                turns almost every 16-bit image white.
F               float grey: [0, 1] -> x255; [0, 255] -> as is; any other range min-max scaled;
                NaN/inf -> BadImageError
==============  ==============================================================================

Mask binarisation (``binarise_mask``), chosen to get every published convention right:

* a mask's "strength" is its grey value; RGB/RGBA/palette masks use the maximum over the colour
  channels (a pure red (255, 0, 0) annotation is foreground, whereas its luma of 76 would not be);
  pixels with alpha 0 are background; 16-bit and float masks are used with their own full scale.
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
from PIL import Image, ImageDraw, ImageFile, ImageOps, UnidentifiedImageError
from scipy.fft import dctn

__all__ = [
    "BadImageError",
    "DEFAULT_SIZE",
    "MAX_LOSSLESS_LEVELS",
    "MIN_SIDE",
    "binarise_mask",
    "decode_resize_hash",
    "hamming",
    "load_mask",
    "load_pair",
    "load_rgb",
    "load_rgb_fit",
    "mask_is_empty",
    "phash",
    "to_rgb",
]

DEFAULT_SIZE: tuple[int, int] = (420, 420)
"""Model input size (width, height), paper Sec. 5.1: Qwen2.5-VL grid (1, 30, 30) -> 15x15 map."""

MIN_SIDE = 28
"""Smallest image side readl accepts, pixels: one merged Qwen2.5-VL patch (14 px patches merged
2x2). ``readl curate`` rejects smaller images (``bad_image`` in rejected.csv) and ``readl predict``
reports them: a 1x1 or 5x400 file is almost always an export or crop error, and upscaled to 420x420
it would feed the model an image with no content."""
REDUCING_GAP = 2.0
"""Before the bicubic resize, an image at least this many times the target size in both directions is
first shrunk by an integer box filter (``Image.reduce``) to no less than ``REDUCING_GAP`` x the target
(PIL's ``reducing_gap`` rule), before any colour conversion: a big PNG/TIFF then costs one decoded
copy, not the several full-size copies the conversion and resize would make. Images under 2x the
target (the bundled sample, 1024 -> 420) are resized directly, as before."""

MAX_LOSSLESS_LEVELS = 16
"""A mask with more distinct values than this is treated as lossy (midpoint threshold)."""

_LOSSY_FORMATS = frozenset({"JPEG", "MPO", "JPEG2000"})
_ORIENTATION_TAG = 0x0112
_TRANSPOSE = {  # the mapping ImageOps.exif_transpose uses (EXIF orientation -> PIL transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = frozenset({5, 6, 7, 8})
_MASK_IMAGE_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg", ".gif", ".webp")
_REFETCH = "re-download or re-extract it (readl fetch SOURCE), or delete it so curate skips it"


class BadImageError(ValueError):
    """A file that cannot be used as an image or mask.

    Attributes:
        path: the offending file (``pathlib.Path``).
        reason: what is wrong and how to fix it (str). ``str(error)`` is ``"<path>: <reason>"``.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep picklable across multiprocessing workers
        return (type(self), (self.path, self.reason))


# --------------------------------------------------------------------------------------------
# opening and decoding


def _check_truncation_guard() -> None:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (some imported library set it); with it, "
            "truncated files decode as grey-filled images. Set it back to False before curating."
        )


def _open(path: str | os.PathLike[str]) -> Image.Image:
    """Open (lazily, header only) with a BadImageError for every way it can fail."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise BadImageError(p, "file does not exist; check the path in the manifest or "
                               "re-fetch the data (readl fetch SOURCE)") from None
    except OSError as exc:
        raise BadImageError(p, f"cannot stat the file ({exc}); check permissions") from None
    if p.is_dir():
        raise BadImageError(p, "is a directory, not an image file; point to the file inside it")
    if st.st_size == 0:
        raise BadImageError(p, f"zero-byte file (an interrupted download or copy); {_REFETCH}")
    try:
        return Image.open(p)
    except UnidentifiedImageError:
        with open(p, "rb") as fh:
            head = fh.read(16)
        raise BadImageError(
            p, f"not an image PIL can read (file starts with {head!r}); the file is corrupt, "
               f"an HTML error page or a Git LFS pointer, or has the wrong extension; {_REFETCH}"
        ) from None
    except Image.DecompressionBombError as exc:
        raise BadImageError(p, f"image too large to decode safely ({exc}); downscale it "
                               f"offline before curating") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file
        raise BadImageError(p, f"cannot open ({type(exc).__name__}: {exc}); {_REFETCH}") from None


def _load(img: Image.Image, path: str | os.PathLike[str]) -> None:
    """Decode the pixel data; a truncated or corrupt stream raises BadImageError."""
    _check_truncation_guard()
    try:
        img.load()
    except Exception as exc:  # noqa: BLE001 - OSError, SyntaxError, zlib.error, struct.error...
        raise BadImageError(
            path, f"truncated or corrupt image data (PIL: {type(exc).__name__}: {exc}); {_REFETCH}"
        ) from None


def _orientation(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block is not worth rejecting the image
        return 1
    return value if value in _TRANSPOSE else 1


def _oriented_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    return (size[1], size[0]) if orientation in _SWAPS_AXES else size


def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int] | None:
    """``size`` scaled to fit ``max_side`` on its longest side (None: it already fits)."""
    scale = max_side / max(size)
    return None if scale >= 1 else (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))


def _decode(path: str | os.PathLike[str], draft_size: tuple[int, int] | None, min_side: int = 1,
            max_side: int | None = None) -> tuple[Image.Image, int, tuple[int, int]]:
    """Open + (JPEG draft) + load. Returns (image as stored, EXIF orientation, full stored size).
    An image with a side under ``min_side`` px is a BadImageError (checked on the header);
    ``max_side`` sets the JPEG draft target to the upright size fitted to it."""
    img = _open(path)
    full_size = img.size
    if min(full_size) < min_side:
        raise BadImageError(path, f"image is {full_size[0]}x{full_size[1]} px, smaller than the "
                                  f"{min_side}x{min_side} px minimum (one merged 2x2 patch of 14 px "
                                  f"of the model); an export or crop error: fix or delete the file")
    orientation = _orientation(img)  # JPEG EXIF is in the header: readable before load
    if max_side is not None and img.format == "JPEG":
        draft_size = _fit(_oriented_size(full_size, orientation), max_side)
    if draft_size is not None and img.format == "JPEG":
        # DCT-domain downscale by 1/2, 1/4 or 1/8 while keeping both sides >= the target; the
        # target is in displayed orientation, the draft in stored orientation.
        img.draft(None, _oriented_size(draft_size, orientation))
    _load(img, path)
    if orientation == 1:  # PNG/TIFF may carry EXIF after the pixel data
        orientation = _orientation(img)
    return img, orientation, full_size


def _int_bit_depth(img: Image.Image, arr: np.ndarray) -> int:
    tag = getattr(img, "tag_v2", None)
    if tag is not None:
        bps = tag.get(258)
        if isinstance(bps, (tuple, list)) and bps:
            bps = bps[0]
        if isinstance(bps, int) and 1 <= bps <= 32:
            return bps
    if img.mode.startswith("I;16"):
        return 16
    if img.format == "PNG":
        return 16
    top = int(arr.max()) if arr.size else 0
    return 16 if top <= 0xFFFF else 32


def _to_grey8(img: Image.Image, path: str | os.PathLike[str]) -> Image.Image:
    """Integer (I;16*, I) and float (F) single-channel images -> 8-bit L, by value range."""
    arr = np.asarray(img)
    if img.mode == "F":
        arr = arr.astype(np.float64)
        if not np.all(np.isfinite(arr)):
            raise BadImageError(path, "float image contains NaN or infinity; fix the export")
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo >= 0.0 and hi <= 1.0:
            out = arr * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            out = arr
        else:
            out = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    else:
        arr = arr.astype(np.int64)
        lo = int(arr.min()) if arr.size else 0
        if lo < 0:
            hi = int(arr.max())
            out = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros(arr.shape)
        else:
            depth = _int_bit_depth(img, arr)
            out = arr * (255.0 / float(2 ** depth - 1))
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), mode="L")


def _to_rgb_or_l(img: Image.Image, path: str | os.PathLike[str]) -> Image.Image:
    """Convert to 8-bit 'RGB' or (for grey sources, cheaper to resize) 8-bit 'L'."""
    mode = img.mode
    if mode in ("RGB", "L"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode in ("LA", "La"):
        return img.getchannel(0)
    if mode in ("RGBA", "RGBa", "RGBX"):
        return img.convert("RGB")
    if mode in ("P", "PA"):
        if mode == "PA" or "transparency" in img.info:
            return img.convert("RGBA").convert("RGB")
        return img.convert("RGB")
    if mode.startswith("I") or mode == "F":
        return _to_grey8(img, path)
    try:
        return img.convert("RGB")
    except Exception as exc:  # noqa: BLE001
        raise BadImageError(path, f"unsupported colour mode {mode!r} ({exc}); convert the file "
                                  f"to 8-bit RGB PNG offline") from None


def to_rgb(img: Image.Image, path: str | os.PathLike[str] = "<image>") -> Image.Image:
    """Convert a decoded PIL image of any mode to 8-bit RGB (rules in the module docstring).

    Args:
        img: a loaded PIL image, any mode PIL can decode.
        path: used only in error messages.
    Returns:
        PIL image, mode ``"RGB"``, same size, values 0-255.
    Raises:
        BadImageError: float image with NaN/inf, or a mode with no RGB conversion.
    Source: PIL mode list (https://pillow.readthedocs.io/en/stable/handbook/concepts.html#modes).
    """
    out = _to_rgb_or_l(img, path)
    return out.convert("RGB") if out.mode != "RGB" else out


def _resize(img: Image.Image, size: tuple[int, int] | None) -> Image.Image:
    if size is None or img.size == tuple(size):
        return img
    return img.resize(tuple(size), Image.Resampling.BICUBIC)


def _check_size(size: tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if len(size) != 2 or any(int(s) != s or s <= 0 for s in size):
        raise ValueError(f"size must be (width, height) with positive integers, got {size!r}")
    return int(size[0]), int(size[1])


def _reduce(img: Image.Image, target: tuple[int, int]) -> Image.Image:
    """Integer box reduction to >= REDUCING_GAP x ``target`` (stored orientation); unchanged when the
    image is smaller than that or its mode has no ``reduce`` (P, 1, I;16 ...)."""
    factor = int(min(img.width / (REDUCING_GAP * target[0]), img.height / (REDUCING_GAP * target[1])))
    if factor < 2:
        return img
    try:
        return img.reduce(factor)
    except ValueError:
        return img


def _rgb_oriented(path: str | os.PathLike[str], size: tuple[int, int] | None, min_side: int = 1,
                  max_side: int | None = None) -> tuple[Image.Image, int, tuple[int, int]]:
    img, orientation, full_size = _decode(path, size, min_side, max_side)
    if max_side is not None:  # orientation known only now for PNG/TIFF (EXIF after the pixels)
        size = _fit(_oriented_size(full_size, orientation), max_side)
    if size is not None:
        img = _reduce(img, _oriented_size(size, orientation))
    if orientation != 1:  # (skipped otherwise: exif_transpose copies even when there is nothing to do)
        img = ImageOps.exif_transpose(img)
    img = _to_rgb_or_l(img, path)
    img = _resize(img, size)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img, orientation, _oriented_size(full_size, orientation)


def load_rgb(path: str | os.PathLike[str], size: tuple[int, int] | None = DEFAULT_SIZE, *,
             min_side: int = 1) -> Image.Image:
    """Decode an image file as 8-bit RGB, upright (EXIF orientation applied) and resized.

    Args:
        path: image file (any format PIL reads: PNG, JPEG, BMP, TIFF, WebP, ...).
        size: output ``(width, height)`` in pixels, or ``None`` to keep the decoded size.
            JPEGs are decoded with ``Image.draft`` at the smallest 1/1, 1/2, 1/4 or 1/8 scale that
            keeps both sides >= the target before the bicubic resize.
            Other formats at >= 2x the target are box-reduced first (:data:`REDUCING_GAP`).
        min_side: smaller images (either side, pixels) are a BadImageError; readl's stages pass
            :data:`MIN_SIDE`.
    Returns:
        PIL image, mode ``"RGB"``, ``img.size == size`` (values 0-255). The aspect ratio is not
        preserved (the model takes a fixed square input).
    Raises:
        BadImageError: missing, zero-byte, not an image, truncated/corrupt, unsupported mode.
        RuntimeError: PIL.ImageFile.LOAD_TRUNCATED_IMAGES was set to True by someone.
    Source: EXIF orientation per ``PIL.ImageOps.exif_transpose``; colour rules in module docstring.
    """
    img, _, _ = _rgb_oriented(path, _check_size(size), min_side)
    return img


def load_rgb_fit(path: str | os.PathLike[str], max_side: int, *, min_side: int = 1
                 ) -> Image.Image:
    """Like :func:`load_rgb` at the image's own aspect ratio, downscaled to fit ``max_side``.

    Memory is bounded by the target, not the file: JPEGs are decoded in draft mode and other
    formats box-reduced before conversion (an 8000x8000 JPEG costs ~50 MB, not ~1 GB).

    Args:
        path: image file. max_side: longest output side, pixels (>= 1); smaller images keep
            their upright size. min_side: as :func:`load_rgb`.
    Returns:
        PIL RGB image, upright; size = the upright size scaled by ``min(1, max_side / longest
        side)`` (rounded, >= 1 px).
    Raises:
        BadImageError / RuntimeError: as :func:`load_rgb`. ValueError: ``max_side < 1``.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    img, _, _ = _rgb_oriented(path, None, min_side, max_side)
    return img


# --------------------------------------------------------------------------------------------
# masks


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
            raise BadImageError(path, f"unsupported mask mode {mode!r} ({exc}); save the mask as "
                                      f"a grey PNG") from None
        mode = "RGB"
    if mode in ("RGB", "RGBX"):
        arr = np.asarray(img)[..., :3].max(axis=2)
        full = 255.0
    elif mode == "L":
        arr = np.asarray(img)
        full = 255.0
    elif mode.startswith("I"):
        arr = np.asarray(img).astype(np.int64)
        full = float(2 ** _int_bit_depth(img, arr) - 1)
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
        fg &= alpha > 0
    return np.ascontiguousarray(fg)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in _MASK_IMAGE_SUFFIXES
                  and not p.name.startswith("."))


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
        raise BadImageError(path, f"cannot read COCO annotations ({type(exc).__name__}: {exc}); "
                                  f"{_REFETCH}") from None
    key = str(image_id)
    if key not in index["images"]:
        raise BadImageError(path, f"COCO image id {image_id!r} not in 'images'; the manifest and "
                                  f"the annotation file disagree: re-run curate")
    info = index["images"][key]
    w, h = int(info["width"]), int(info["height"])
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for ann in index["anns"].get(key, []):
        seg = ann.get("segmentation")
        if isinstance(seg, list) and seg:
            for poly in seg:
                if len(poly) >= 6:
                    draw.polygon([(float(poly[i]), float(poly[i + 1]))
                                  for i in range(0, len(poly) - 1, 2)], fill=255, outline=255)
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
            counts = seg["counts"]
            rh, rw = (int(v) for v in seg.get("size", (h, w)))
            flat = np.zeros(rh * rw, dtype=np.uint8)
            pos, val = 0, 0
            for c in counts:
                flat[pos:pos + int(c)] = val
                pos += int(c)
                val = 255 - val
            rle = Image.fromarray(flat.reshape((rw, rh)).T)  # COCO RLE is column-major
            canvas.paste(255, mask=rle)
        elif isinstance(seg, dict):
            raise BadImageError(path, "compressed COCO RLE is not supported; convert the "
                                      "annotations to polygons (or install pycocotools and decode)")
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
            raise BadImageError(path, f"labelme shape {kind!r} with {len(pts)} points cannot be "
                                      f"rasterised as an area; fix the annotation")
    return np.asarray(canvas) > 0


def _read_json_mask(path: Path, coco_image_id: str | int | None) -> np.ndarray:
    if coco_image_id is not None:
        return _rasterise_coco(path, coco_image_id)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadImageError(path, f"unreadable JSON annotation ({exc}); {_REFETCH}") from None
    if isinstance(data, dict) and "shapes" in data:
        return _rasterise_labelme(path, data)
    if isinstance(data, dict) and "annotations" in data:
        raise BadImageError(path, "a COCO annotation file needs the image id (record.mask_ref)")
    raise BadImageError(path, "JSON mask is neither labelme ('shapes') nor COCO ('annotations')")


def _read_mask(path: str | os.PathLike[str], coco_image_id: str | int | None = None
               ) -> tuple[np.ndarray, int]:
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
                raise BadImageError(f, f"mask size {part.shape[::-1]} differs from the other masks "
                                       f"in {p} ({union.shape[::-1]}); fix the annotation")
            union = part if union is None else (union | part)
        return union, 1
    if p.suffix.lower() == ".json":
        if not p.exists():
            raise BadImageError(p, "annotation file does not exist; re-fetch the data")
        return _read_json_mask(p, coco_image_id), 1
    img, orientation, _ = _decode(p, None)
    return binarise_mask(img, p), orientation


def _transpose_mask(mask: np.ndarray, orientation: int) -> np.ndarray:
    if orientation not in _TRANSPOSE:
        return mask
    im = Image.fromarray(mask.astype(np.uint8) * 255, mode="L").transpose(_TRANSPOSE[orientation])
    return np.asarray(im) > 0


def _resize_mask(mask: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or (mask.shape[1], mask.shape[0]) == tuple(size):
        return mask
    im = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    return np.asarray(im.resize(tuple(size), Image.Resampling.NEAREST)) > 0


def load_mask(path: str | os.PathLike[str], size: tuple[int, int] | None = DEFAULT_SIZE, *,
              coco_image_id: str | int | None = None) -> np.ndarray:
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
    size = _check_size(size)
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


def load_pair(image_path: str | os.PathLike[str], mask_path: str | os.PathLike[str] | None,
              size: tuple[int, int] | None = DEFAULT_SIZE, *,
              coco_image_id: str | int | None = None, min_side: int = 1
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
    size = _check_size(size)
    img, orientation, upright = _rgb_oriented(image_path, size, min_side)
    out_size = size or upright
    if mask_path is None:
        return img, np.zeros((out_size[1], out_size[0]), dtype=bool)
    mask, own = _read_mask(mask_path, coco_image_id)
    is_json_or_dir = Path(mask_path).suffix.lower() == ".json" or Path(mask_path).is_dir()
    stored = (mask.shape[1], mask.shape[0])
    if own != 1:
        mask = _transpose_mask(mask, own)
    elif orientation != 1 and not is_json_or_dir:
        if not (orientation in _SWAPS_AXES and stored == upright and stored != upright[::-1]):
            mask = _transpose_mask(mask, orientation)
    got = (mask.shape[1], mask.shape[0])
    if got != upright:
        raise BadImageError(
            mask_path, f"mask size {got[0]}x{got[1]} does not match image {Path(image_path).name} "
                       f"({upright[0]}x{upright[1]} upright); the mask belongs to another image or "
                       f"was resized separately: fix the pairing or drop this sample")
    return img, _resize_mask(mask, out_size)


# --------------------------------------------------------------------------------------------
# perceptual hash


def phash(img: Image.Image | np.ndarray) -> str:
    """Standard DCT perceptual hash (pHash), as ``imagehash.phash`` with hash_size 8.

    Grey (PIL ``convert("L")``), LANCZOS resize to 32x32, 2-D DCT-II (``scipy.fft.dctn``, unnormalised),
    keep the top-left 8x8 coefficients (DC included), threshold at their median, pack the 64 bits
    row-major, most significant bit first.

    Args:
        img: PIL image (any mode) or ``np.ndarray`` uint8 of shape (H, W) or (H, W, 3).
    Returns:
        16 lowercase hex characters (64 bits).
    Source: Zauner, "Implementation and Benchmarking of Perceptual Image Hash Functions" (2010);
        the ``imagehash`` package's ``phash``.
    """
    if isinstance(img, np.ndarray):
        img = Image.fromarray(np.asarray(img, dtype=np.uint8))
    if img.mode not in ("L", "RGB"):
        img = to_rgb(img)
    grey = img.convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    coeffs = dctn(np.asarray(grey, dtype=np.float64), type=2)[:8, :8]
    bits = (coeffs > np.median(coeffs)).ravel()
    value = 0
    for b in bits:
        value = (value << 1) | int(b)
    return f"{value:016x}"


def hamming(a: str, b: str) -> int:
    """Number of differing bits between two 16-hex-char hashes from :func:`phash` (0-64).

    Raises:
        ValueError: a hash is not 16 hex characters.
    """
    for h in (a, b):
        if not isinstance(h, str) or len(h) != 16:
            raise ValueError(f"expected a 16-hex-character phash, got {h!r}")
    try:
        return (int(a, 16) ^ int(b, 16)).bit_count()
    except ValueError:
        raise ValueError(f"expected hex phashes, got {a!r} and {b!r}") from None


def decode_resize_hash(path: str | os.PathLike[str], size: tuple[int, int] | None = DEFAULT_SIZE,
                       *, min_side: int = 1) -> tuple[np.ndarray, str]:
    """Fast path for curate: decode (JPEG draft), orient, convert, resize, and pHash in one call.

    Args:
        path: image file.
        size: output ``(width, height)``, or ``None`` for the upright native size.
        min_side: as :func:`load_rgb`.
    Returns:
        ``(pixels, hash)``: ``np.ndarray`` uint8 of shape ``(height, width, 3)`` (RGB, 0-255) and
        the :func:`phash` of those resized pixels (16 hex chars). The hash of one picture at two
        different ``size`` values may differ by a few bits: compare hashes made at one size.
    Raises:
        BadImageError / RuntimeError: as :func:`load_rgb`.
    """
    img = load_rgb(path, size, min_side=min_side)
    return np.asarray(img, dtype=np.uint8), phash(img)
