"""Robust image decoding: the one decoder of every stage (curate, predict, the served model).

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

Masks: :mod:`readl.data.masks`; perceptual hashes: :mod:`readl.data.phash`.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = [
    "BadImageError",
    "DEFAULT_SIZE",
    "IMAGE_EXTENSIONS",
    "MIN_SIDE",
    "load_rgb",
    "load_rgb_fit",
    "to_rgb",
]

DEFAULT_SIZE: tuple[int, int] = (420, 420)
"""Model input size (width, height), paper Sec. 5.1: Qwen2.5-VL grid (1, 30, 30) -> 15x15 map."""

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
"""File suffixes (lower-case) taken as images when listing folders (source layouts, ``readl predict FOLDER``)."""

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

_ORIENTATION_TAG = 0x0112
EXIF_TRANSPOSE = {  # the mapping ImageOps.exif_transpose uses (EXIF orientation -> PIL transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
EXIF_SWAPS_AXES = frozenset({5, 6, 7, 8})
REFETCH_HINT = "re-download or re-extract it (readl fetch SOURCE), or delete it so curate skips it"


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


def _open(path: str | os.PathLike[str], data: bytes | None = None) -> Image.Image:
    """Open (lazily, header only) with a BadImageError for every way it can fail; ``data``: the encoded
    file's bytes instead of reading ``path`` (``path`` then only names it in messages)."""
    p = Path(path)
    if data is not None:
        return _open_bytes(p, data)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise BadImageError(
            p, "file does not exist; check the path in the manifest or re-fetch the data (readl fetch SOURCE)"
        ) from None
    except OSError as exc:
        raise BadImageError(p, f"cannot stat the file ({exc}); check permissions") from None
    if p.is_dir():
        raise BadImageError(p, "is a directory, not an image file; point to the file inside it")
    if st.st_size == 0:
        raise BadImageError(p, f"zero-byte file (an interrupted download or copy); {REFETCH_HINT}")
    try:
        return Image.open(p)
    except UnidentifiedImageError:
        with open(p, "rb") as fh:
            head = fh.read(16)
        raise BadImageError(
            p,
            f"not an image PIL can read (file starts with {head!r}); the file is corrupt, "
            f"an HTML error page or a Git LFS pointer, or has the wrong extension; {REFETCH_HINT}",
        ) from None
    except Image.DecompressionBombError as exc:
        raise BadImageError(
            p, f"image too large to decode safely ({exc}); downscale it offline before curating"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file
        raise BadImageError(p, f"cannot open ({type(exc).__name__}: {exc}); {REFETCH_HINT}") from None


def _open_bytes(p: Path, data: bytes) -> Image.Image:
    """:func:`_open` for an in-memory encoded file (the served model's ``image`` column)."""
    if len(data) == 0:
        raise BadImageError(p, "empty image bytes; send the encoded image file (PNG, JPEG ...)")
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImageError(
            p,
            f"not a readable image (PIL cannot identify bytes starting {bytes(data[:16])!r}); send the "
            f"encoded image file (PNG, JPEG ...), base64 in JSON",
        ) from None
    except Image.DecompressionBombError as exc:
        raise BadImageError(p, f"image too large to decode safely ({exc}); downscale it first") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file
        raise BadImageError(p, f"cannot open ({type(exc).__name__}: {exc})") from None


def _load(img: Image.Image, path: str | os.PathLike[str]) -> None:
    """Decode the pixel data; a truncated or corrupt stream raises BadImageError."""
    _check_truncation_guard()
    try:
        img.load()
    except Exception as exc:  # noqa: BLE001 - OSError, SyntaxError, zlib.error, struct.error...
        raise BadImageError(
            path, f"truncated or corrupt image data (PIL: {type(exc).__name__}: {exc}); {REFETCH_HINT}"
        ) from None


def _orientation(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block is not worth rejecting the image
        return 1
    return value if value in EXIF_TRANSPOSE else 1


def _oriented_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    return (size[1], size[0]) if orientation in EXIF_SWAPS_AXES else size


def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int] | None:
    """``size`` scaled to fit ``max_side`` on its longest side (None: it already fits)."""
    scale = max_side / max(size)
    return None if scale >= 1 else (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))


def decode_image(
    path: str | os.PathLike[str],
    draft_size: tuple[int, int] | None,
    min_side: int = 1,
    max_side: int | None = None,
    data: bytes | None = None,
) -> tuple[Image.Image, int, tuple[int, int]]:
    """Open + (JPEG draft) + load. Returns (image as stored, EXIF orientation, full stored size).
    An image with a side under ``min_side`` px is a BadImageError (checked on the header);
    ``max_side`` sets the JPEG draft target to the upright size fitted to it; ``data``: see :func:`_open`."""
    img = _open(path, data)
    full_size = img.size
    if min(full_size) < min_side:
        raise BadImageError(
            path,
            f"image is {full_size[0]}x{full_size[1]} px, smaller than the "
            f"{min_side}x{min_side} px minimum (one merged 2x2 patch of 14 px "
            f"of the model); an export or crop error: fix or delete the file",
        )
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


def int_bit_depth(img: Image.Image, arr: np.ndarray) -> int:
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
            depth = int_bit_depth(img, arr)
            out = arr * (255.0 / float(2**depth - 1))
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
        raise BadImageError(
            path, f"unsupported colour mode {mode!r} ({exc}); convert the file to 8-bit RGB PNG offline"
        ) from None


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


def check_size(size: tuple[int, int] | None) -> tuple[int, int] | None:
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


def rgb_oriented(
    path: str | os.PathLike[str],
    size: tuple[int, int] | None,
    min_side: int = 1,
    max_side: int | None = None,
    data: bytes | None = None,
) -> tuple[Image.Image, int, tuple[int, int]]:
    img, orientation, full_size = decode_image(path, size, min_side, max_side, data)
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


def load_rgb(
    path: str | os.PathLike[str], size: tuple[int, int] | None = DEFAULT_SIZE, *, min_side: int = 1
) -> Image.Image:
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
    img, _, _ = rgb_oriented(path, check_size(size), min_side)
    return img


def load_rgb_fit(
    path: str | os.PathLike[str], max_side: int, *, min_side: int = 1, data: bytes | None = None
) -> Image.Image:
    """Like :func:`load_rgb` at the image's own aspect ratio, downscaled to fit ``max_side``.

    Memory is bounded by the target, not the file: JPEGs are decoded in draft mode and other
    formats box-reduced before conversion (an 8000x8000 JPEG costs ~50 MB, not ~1 GB).

    Args:
        path: image file. max_side: longest output side, pixels (>= 1); smaller images keep
            their upright size. min_side: as :func:`load_rgb`. data: the encoded file's bytes
            (e.g. a request body) instead of reading ``path``, which then only names it in errors.
    Returns:
        PIL RGB image, upright; size = the upright size scaled by ``min(1, max_side / longest
        side)`` (rounded, >= 1 px).
    Raises:
        BadImageError / RuntimeError: as :func:`load_rgb`. ValueError: ``max_side < 1``.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    img, _, _ = rgb_oriented(path, None, min_side, max_side, data)
    return img
