"""Synthetic anomalies: seeded CutPaste, CutPaste-scar and DRAEM defects on a normal image.

Each generator takes a normal RGB image ``(H, W, 3) uint8`` and a ``numpy.random.Generator`` and
returns ``(image, mask)``: the anomalous image ``(H, W, 3) uint8`` and its exact defect mask
``(H, W) bool``. Pixels outside the mask are byte-identical to the input; every changed pixel is
inside the mask. Same input and same generator state -> same output, bit for bit (numpy, PIL and
scipy only; no torch).

Recipes (the published ones, with the ranges below; every range is a field of a params dataclass):

* **CutPaste** (Li et al., "CutPaste: Self-Supervised Learning for Anomaly Detection and
  Localization", CVPR 2021, Sec. 3.1): a rectangle of area ratio ``U(0.02, 0.15)`` of the image and
  aspect ratio log-uniform in ``[0.3, 1/0.3]`` is cut at a random place, colour-jittered and pasted
  at another random place.
* **CutPaste-scar** (same paper, Sec. 3.1): a thin rectangle of width ``U(2, 16)`` and length
  ``U(10, 25)`` pixels at the paper's 256-pixel input (ours: ``U(4, 16)`` x ``U(20, 60)``, scaled
  by ``min(H, W) / 256``), cut, jittered, rotated by ``U(-45, 45)`` degrees and pasted.
* **DRAEM** (Zavrtanik et al., "DRAEM - A discriminatively trained reconstruction embedding for
  surface anomaly detection", ICCV 2021, Sec. 3.3): a Perlin-noise map (periods ``2**k`` per
  axis, ``k ~ U{0..5}`` in the paper, ``U{0..3}`` here; rotated by ``U(-90, 90)`` degrees)
  thresholded at 0.5 gives the mask ``M``; an augmented texture ``A`` (3 of DRAEM's 10 augmentations, drawn without
  replacement) is
  blended in: ``I_a = (1 - M) * I + (1 - beta) * M * I + beta * M * A`` (paper Eq. 2).
  The paper's texture source is DTD, which is not bundled: here ``A`` is another image of the set
  when one is passed (``texture=``), else the image itself rolled by a random offset
  (``U(1/4, 3/4)`` of each side) and flipped -- a structurally misaligned copy of the object.

Choices of ours, to make every defect visible to a model working on a 15x15 token grid (all are
params, documented on each dataclass):

* colour jitter of brightness/contrast/saturation ``0.4`` and hue ``0.1`` (the paper's CutPaste code
  uses 0.1 for all four, which leaves a patch cut from a uniform background invisible);
* longer scars (above): the paper's are shorter than two of the 28-pixel tokens of a 420-pixel
  image;
* DRAEM opacity ``beta ~ U(0.5, 1.0)`` (paper: ``U(0.1, 1.0)``) and Perlin periods up to 8
  (paper: 32, whose speckles are finer than one of the 15x15 tokens of a 420-pixel image);
* a visibility guard: a draw whose mean absolute change inside the mask is below
  ``min_visibility`` grey levels (default 20 of 255), or whose mask covers fewer than
  ``min_area`` of the pixels (DRAEM), is redrawn, up to ``max_tries`` times; the most visible draw
  is returned if none passes. The retries consume the same generator, so outputs stay seeded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from readl.data.textures import perlin_noise, procedural_texture

__all__ = [
    "RECIPES",
    "CutPasteParams",
    "DraemParams",
    "JitterParams",
    "ScarParams",
    "cutpaste",
    "draem",
    "perlin_noise",
    "procedural_texture",
    "scar",
    "TEXTURES",
    "synthesize",
]

RECIPES = ("cutpaste", "scar", "draem")
"""Recipe names, also the ``defect_type`` of the synthetic records."""
TEXTURES = ("self", "procedural")
"""DRAEM texture sources: the image itself (rolled and flipped) or :func:`procedural_texture` (a DTD stand-in)."""


@dataclass(frozen=True)
class JitterParams:
    """Colour jitter (torchvision ``ColorJitter`` semantics, applied in this fixed order).

    brightness/contrast/saturation: factor drawn from ``U(1 - x, 1 + x)`` (PIL ``ImageEnhance``;
    contrast blends with the mean grey, saturation with the grey image). hue: shift drawn from
    ``U(-x, x)`` of the hue circle (x in [0, 0.5]). Paper code: 0.1 for all four.
    """

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1


@dataclass(frozen=True)
class CutPasteParams:
    """CutPaste rectangle (Li et al. 2021, Sec. 3.1): area ratio and aspect ratio ranges."""

    area_ratio: tuple[float, float] = (0.02, 0.15)
    aspect_ratio: float = 0.3  # log-uniform in [aspect_ratio, 1 / aspect_ratio]
    jitter: JitterParams = JitterParams()
    min_visibility: float = 20.0  # grey levels (0-255), mean |change| inside the mask
    max_tries: int = 10


@dataclass(frozen=True)
class ScarParams:
    """CutPaste-scar (Li et al. 2021): sizes in pixels at ``reference_size``, scaled to the image.

    Paper: width ``(2, 16)``, length ``(10, 25)``; ours: width ``(4, 16)``, length ``(20, 60)``
    (at 420 pixels: 7-26 x 33-98 pixels, i.e. 1-3.5 tokens long instead of 0.6-1.5).
    """

    width: tuple[float, float] = (4.0, 16.0)
    length: tuple[float, float] = (20.0, 60.0)
    rotation: tuple[float, float] = (-45.0, 45.0)  # degrees
    reference_size: int = 256  # the paper's input side
    jitter: JitterParams = JitterParams()
    min_visibility: float = 20.0
    max_tries: int = 10


@dataclass(frozen=True)
class DraemParams:
    """DRAEM (Zavrtanik et al. 2021, Sec. 3.3): Perlin mask and blend opacity.

    ``scale_exponents``: Perlin periods ``2**k`` per axis, k uniform in ``[lo, hi)`` (paper
    ``(0, 6)``, i.e. up to 32 periods: speckles finer than a 28-pixel token; ours ``(0, 4)``).
    ``threshold``: noise > threshold is the mask (paper 0.5). ``opacity``: beta range (paper
    ``(0.1, 1.0)``; ours ``(0.5, 1.0)``). ``min_area``: smallest mask, fraction of the pixels.
    """

    scale_exponents: tuple[int, int] = (0, 4)
    threshold: float = 0.5
    rotation: tuple[float, float] = (-90.0, 90.0)
    opacity: tuple[float, float] = (0.5, 1.0)
    min_area: float = 0.005
    min_visibility: float = 20.0
    max_tries: int = 10


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"expected an RGB image as a (H, W, 3) uint8 array, got "
            f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}"
        )
    if min(image.shape[:2]) < 16:
        raise ValueError(f"image too small for a synthetic defect: {image.shape[:2]} (min side 16)")
    return image


def _jitter(patch: np.ndarray, rng: np.random.Generator, p: JitterParams) -> np.ndarray:
    """Colour-jitter an (h, w, 3) uint8 patch (brightness, contrast, saturation, hue)."""
    img = Image.fromarray(patch)
    for enhancer, x in (
        (ImageEnhance.Brightness, p.brightness),
        (ImageEnhance.Contrast, p.contrast),
        (ImageEnhance.Color, p.saturation),
    ):
        img = enhancer(img).enhance(float(rng.uniform(max(0.0, 1 - x), 1 + x)))
    shift = rng.uniform(-p.hue, p.hue)
    hsv = np.asarray(img.convert("HSV")).copy()  # (h, w, 3) uint8
    hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + int(round(shift * 255))) % 256).astype(np.uint8)
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))


def _visibility(original: np.ndarray, new: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute change (grey levels) over the masked pixels and channels; 0 for an empty mask."""
    if not mask.any():
        return 0.0
    return float(np.abs(new[mask].astype(np.int16) - original[mask].astype(np.int16)).mean())


def _best_of(
    draw: Callable[[], tuple[np.ndarray, np.ndarray]],
    image: np.ndarray,
    min_visibility: float,
    max_tries: int,
    min_pixels: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Call ``draw`` until a result passes the visibility guard; else return the most visible one."""
    best, best_score = None, -1.0
    for _ in range(max(1, max_tries)):
        out, mask = draw()
        score = _visibility(image, out, mask) if mask.sum() >= min_pixels else 0.0
        if score > best_score:
            best, best_score = (out, mask), score
        if score >= min_visibility:
            break
    return best


def _paste(
    image: np.ndarray, patch: np.ndarray, patch_mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Paste ``patch`` where ``patch_mask`` is True at a random place that fits; exact mask."""
    H, W = image.shape[:2]
    h, w = patch_mask.shape
    y, x = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    out, mask = image.copy(), np.zeros((H, W), dtype=bool)
    region = out[y : y + h, x : x + w]  # (h, w, 3) view
    region[patch_mask] = patch[patch_mask]
    mask[y : y + h, x : x + w] = patch_mask  # the pasted pixels (an unchanged one included)
    return out, mask


def _cut(image: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    H, W = image.shape[:2]
    y, x = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    return image[y : y + h, x : x + w]


def cutpaste(
    image: np.ndarray, rng: np.random.Generator, params: CutPasteParams = CutPasteParams()
) -> tuple[np.ndarray, np.ndarray]:
    """CutPaste (Li et al., CVPR 2021, Sec. 3.1): cut a rectangle, jitter it, paste it elsewhere.

    Args:
        image: normal image, (H, W, 3) uint8, min side 16.
        rng: the random generator (consumed).
        params: ranges, see :class:`CutPasteParams`.

    Returns:
        (image (H, W, 3) uint8, mask (H, W) bool): the mask is the pasted rectangle.

    Raises:
        ValueError: not an (H, W, 3) uint8 array, or a side < 16.
    """
    image = _check_image(image)
    H, W = image.shape[:2]
    lo, hi = np.log(params.aspect_ratio), -np.log(params.aspect_ratio)

    def draw():
        area = rng.uniform(*params.area_ratio) * H * W
        aspect = float(np.exp(rng.uniform(min(lo, hi), max(lo, hi))))
        h = int(np.clip(round(np.sqrt(area * aspect)), 1, H))
        w = int(np.clip(round(np.sqrt(area / aspect)), 1, W))
        patch = _jitter(_cut(image, h, w, rng), rng, params.jitter)
        return _paste(image, patch, np.ones((h, w), dtype=bool), rng)

    return _best_of(draw, image, params.min_visibility, params.max_tries)


def scar(
    image: np.ndarray, rng: np.random.Generator, params: ScarParams = ScarParams()
) -> tuple[np.ndarray, np.ndarray]:
    """CutPaste-scar (Li et al., CVPR 2021): a thin rotated rectangle, jittered and pasted.

    The patch and its mask are rotated together with nearest-neighbour resampling (PIL,
    ``expand=True``), so the mask is exactly the set of pasted pixels.

    Args / Returns / Raises: as :func:`cutpaste` (params: :class:`ScarParams`).
    """
    image = _check_image(image)
    H, W = image.shape[:2]
    s = min(H, W) / params.reference_size

    def draw():
        w = int(np.clip(round(rng.uniform(*params.width) * s), 1, W))
        h = int(np.clip(round(rng.uniform(*params.length) * s), 1, H))
        angle = float(rng.uniform(*params.rotation))
        patch = _jitter(_cut(image, h, w, rng), rng, params.jitter)
        patch = np.asarray(Image.fromarray(patch).rotate(angle, Image.NEAREST, expand=True))
        pmask = (
            np.asarray(Image.fromarray(np.full((h, w), 255, np.uint8)).rotate(angle, Image.NEAREST, expand=True)) > 0
        )
        ph, pw = pmask.shape
        if ph > H or pw > W:  # a long scar on a tiny image: crop to fit
            patch, pmask = patch[:H, :W], pmask[:H, :W]
        return _paste(image, patch, pmask, rng)

    return _best_of(draw, image, params.min_visibility, params.max_tries)


def _augment_texture(texture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """DRAEM's texture augmentation: 3 of these 10, drawn without replacement, in drawn order."""
    img = Image.fromarray(texture)
    ops: list[Callable[[Image.Image], Image.Image]] = [
        lambda im: Image.fromarray(
            np.clip(255.0 * (np.asarray(im) / 255.0) ** rng.uniform(0.5, 2.0), 0, 255).astype(np.uint8)
        ),
        lambda im: Image.fromarray(
            np.clip(np.asarray(im) * rng.uniform(0.8, 1.2) + rng.uniform(-30, 30), 0, 255).astype(np.uint8)
        ),
        lambda im: ImageEnhance.Sharpness(im).enhance(float(rng.uniform(0.0, 4.0))),
        lambda im: _jitter(np.asarray(im), rng, JitterParams(0.0, 0.0, 0.5, 0.15)),
        lambda im: ImageOps.solarize(im, int(rng.integers(32, 129))),
        lambda im: ImageOps.posterize(im, int(rng.integers(1, 5))),
        ImageOps.invert,
        ImageOps.autocontrast,
        ImageOps.equalize,
        lambda im: im.rotate(float(rng.uniform(-45, 45)), Image.BILINEAR),
    ]
    for i in rng.permutation(len(ops))[:3]:
        out = ops[int(i)](img)
        img = out if isinstance(out, Image.Image) else Image.fromarray(out)
    return np.asarray(img.convert("RGB"))


def draem(
    image: np.ndarray, rng: np.random.Generator, texture: np.ndarray | None = None, params: DraemParams = DraemParams()
) -> tuple[np.ndarray, np.ndarray]:
    """DRAEM defect (Zavrtanik et al., ICCV 2021, Sec. 3.3, Eq. 2): Perlin mask, texture blend.

    Args:
        image: normal image, (H, W, 3) uint8, min side 16.
        rng: the random generator (consumed).
        texture: source texture (any size RGB uint8; resized bicubic to (W, H)); None: the image
            itself, rolled by ``U(1/4, 3/4)`` of each side and flipped left-right.
        params: see :class:`DraemParams`.

    Returns:
        (image (H, W, 3) uint8, mask (H, W) bool): the thresholded, rotated Perlin map.

    Raises:
        ValueError: bad image or texture array.
    """
    from scipy import ndimage

    image = _check_image(image)
    H, W = image.shape[:2]
    if texture is None:
        base = np.roll(
            image, (int(rng.integers(H // 4, 3 * H // 4 + 1)), int(rng.integers(W // 4, 3 * W // 4 + 1))), axis=(0, 1)
        )[:, ::-1]
    else:
        base = _check_image(texture)
        if base.shape[:2] != (H, W):
            base = np.asarray(Image.fromarray(base).resize((W, H), Image.BICUBIC))
    base = np.ascontiguousarray(base)
    min_pixels = max(1, int(np.ceil(params.min_area * H * W)))

    def draw():
        k0, k1 = params.scale_exponents
        res = (2 ** int(rng.integers(k0, k1)), 2 ** int(rng.integers(k0, k1)))
        noise = perlin_noise((H, W), res, rng)
        noise = ndimage.rotate(noise, float(rng.uniform(*params.rotation)), reshape=False, order=1, mode="reflect")
        mask = noise > params.threshold  # (H, W)
        tex = _augment_texture(base, rng).astype(np.float64)
        beta = float(rng.uniform(*params.opacity))
        blend = (1 - beta) * image.astype(np.float64) + beta * tex  # (H, W, 3)
        out = image.copy()
        out[mask] = np.clip(np.rint(blend[mask]), 0, 255).astype(np.uint8)
        return out, mask

    return _best_of(draw, image, params.min_visibility, params.max_tries, min_pixels)


def synthesize(
    recipe: str,
    image: np.ndarray,
    seed: int | np.random.Generator,
    texture: np.ndarray | None = None,
    texture_source: str = "self",
) -> tuple[np.ndarray, np.ndarray]:
    """Apply one recipe of :data:`RECIPES` with default params.

    Args:
        recipe: "cutpaste", "scar" or "draem". image: (H, W, 3) uint8. seed: int or Generator.
        texture: DRAEM's source texture (ignored by the others).
        texture_source: without ``texture``, DRAEM's texture: ``"self"`` (the image rolled and flipped) or
            ``"procedural"`` (:func:`procedural_texture`, drawn from the same generator).

    Returns:
        (image (H, W, 3) uint8, mask (H, W) bool).

    Raises:
        ValueError: unknown recipe (lists the known ones), bad image.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if recipe == "cutpaste":
        return cutpaste(image, rng)
    if recipe == "scar":
        return scar(image, rng)
    if recipe == "draem":
        if texture is None and texture_source == "procedural":
            texture = procedural_texture(image.shape[:2], rng)
        elif texture_source not in TEXTURES:
            raise ValueError(f"unknown DRAEM texture source {texture_source!r}; known: {', '.join(TEXTURES)}")
        return draem(image, rng, texture)
    raise ValueError(f"unknown synthetic recipe {recipe!r}; known: {', '.join(RECIPES)}")
