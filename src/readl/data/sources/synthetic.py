"""The ``synthetic`` source layout: seeded synthetic anomalies of another source's normal images.

The anomalies are made by :mod:`readl.data.synthetic` (CutPaste, CutPaste-scar, DRAEM) on the
CURATED (resized) pixels of normal images, so their masks are exact at the curated size. Two ways to
name the normal images (``options`` of a ``curate`` entry with ``layout: synthetic``):

* ``base: NAME`` (or a list of names): the normal images that the entries NAME of the same split
  accepted (after decoding and the leakage guard). Used by the default train split: anomalies of
  exactly the normal train images, nothing from calib or eval. ``root`` is not read (write ``.``).
* ``base_layout: LAYOUT`` (+ ``base_options: {...}``): the normal images of the entry's own
  ``root`` read with that layout's adapter (filtered by the entry's ``published_splits``), sampled
  like any source (``normal:`` = how many base images; null = all) and drawn before train/calib
  (eval) or after eval (calib/train), so no image is used twice. Used by the default eval split:
  held-out normal images that no other split reads. With ``normals: true`` the base images are also
  listed, label 0, under this source's name (a synthetic eval dataset needs normal images); with
  ``normals: false`` they are used and then dropped.

Other options: ``recipes`` (list of :data:`readl.data.synthetic.RECIPES`; variant ``k`` of the
``i``-th base image uses ``recipes[(i * per_image + k) % len(recipes)]``, so the recipes are balanced),
``per_image`` (variants per base image), ``seed`` and ``texture`` (DRAEM's texture source: ``self`` = the image
rolled and
flipped, ``procedural`` = :func:`readl.data.synthetic.procedural_texture`, a DTD stand-in).
Variant ``k`` of base image ``b`` is drawn from ``numpy.random.default_rng([seed, h])`` with ``h``
a SHA-256 of (source name, ``b``'s raw path, ``k``): the same params give byte-identical images.
Rows: label 1, ``defect_type`` = the recipe, ``category`` / ``split`` / ``raw_image_path`` of the base
image. Masks are written only in the eval split (for pixel metrics): train and calib rows of this
source have no ``mask_path`` and no mask file, so warmup and train can never read one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..synthetic import RECIPES, TEXTURES, synthesize
from .base import Record, require_root

__all__ = ["SyntheticSpec", "render", "spec", "synthetic", "variant_seed"]


@dataclass(frozen=True)
class SyntheticSpec:
    """Validated options of a ``synthetic`` entry (module docstring)."""

    base: tuple[str, ...]
    base_layout: str | None
    base_options: dict[str, Any]
    recipes: tuple[str, ...]
    per_image: int
    seed: int
    normals: bool
    texture: str = "self"

    def variants(self, source: str, base_raw_path: str, index: int = 0) -> list[tuple[str, int, int]]:
        """``(recipe, k, seed)`` of each variant of the ``index``-th base image (k = 0 ..
        per_image - 1); recipes cycle over all variants of the source, so they stay balanced
        whatever ``per_image``."""
        n = len(self.recipes)
        return [
            (self.recipes[(index * self.per_image + k) % n], k, variant_seed(self.seed, source, base_raw_path, k))
            for k in range(self.per_image)
        ]


def variant_seed(seed: int, source: str, base_raw_path: str, k: int) -> int:
    """A 63-bit seed for variant ``k`` of one base image (stable across runs and platforms)."""
    digest = hashlib.sha256(f"{seed}|{source}|{base_raw_path}|{k}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def spec(
    where: str,
    base: str | Sequence[str] | None = None,
    base_layout: str | None = None,
    base_options: dict[str, Any] | None = None,
    recipes: Sequence[str] = RECIPES,
    per_image: int = 1,
    seed: int = 0,
    normals: bool = False,
    texture: str = "self",
) -> SyntheticSpec:
    """Check a ``synthetic`` entry's options (names as in the module docstring).

    Raises:
        ValueError: neither or both of ``base`` / ``base_layout``; unknown recipe; ``per_image`` < 1;
            ``normals`` with ``base`` (those normals are already listed by the base entry).
            The message starts with ``where`` (e.g. ``curate.train[2] 'synthetic'``).
    """
    names = (base,) if isinstance(base, str) else tuple(base or ())
    if bool(names) == (base_layout is not None):
        raise ValueError(
            f"{where}: a synthetic source needs exactly one of `base: NAME` (normal "
            f"images of another entry of the same split) or `base_layout: LAYOUT` "
            f"(normal images under its own root)"
        )
    bad = [r for r in recipes if r not in RECIPES]
    if bad or not recipes:
        raise ValueError(f"{where}: unknown synthetic recipe(s) {bad or '[]'}; known: {', '.join(RECIPES)}")
    if not isinstance(per_image, int) or isinstance(per_image, bool) or per_image < 1:
        raise ValueError(f"{where}: per_image must be an integer >= 1, got {per_image!r}")
    if texture not in TEXTURES:
        raise ValueError(f"{where}: unknown DRAEM texture {texture!r}; known: {', '.join(TEXTURES)}")
    if normals and names:
        raise ValueError(
            f"{where}: `normals: true` needs `base_layout`; with `base: {names}` "
            f"the normal images are listed by those entries already"
        )
    return SyntheticSpec(
        names, base_layout, dict(base_options or {}), tuple(recipes), per_image, int(seed), bool(normals), texture
    )


def synthetic(
    root: str | os.PathLike[str],
    *,
    source: str = "synthetic",
    base: str | Sequence[str] | None = None,
    base_layout: str | None = None,
    base_options: dict[str, Any] | None = None,
    recipes: Sequence[str] = RECIPES,
    per_image: int = 1,
    seed: int = 0,
    normals: bool = False,
    texture: str = "self",
) -> Iterator[Record]:
    """The BASE normal images of a synthetic source (label 0, ``source`` = this source's name).

    The anomalies themselves are made by ``readl curate`` from the curated base images (module
    docstring); this adapter lists what it can without curate: with ``base_layout``, the normal
    records of ``root`` read by that layout; with ``base`` (other entries), nothing.

    Raises:
        FileNotFoundError: ``root`` is missing. ValueError: bad options (:func:`spec`).
        LayoutError: as the base adapter.
    """
    root = require_root(root, source)
    s = spec(
        f"synthetic source {source!r}", base, base_layout, base_options, recipes, per_image, seed, normals, texture
    )
    if s.base_layout is None:
        return iter(())
    from . import read_source

    if s.base_layout == "synthetic":
        raise ValueError(f"synthetic source {source!r}: base_layout cannot be 'synthetic'")
    records = read_source(s.base_layout, root, source=source, **s.base_options)
    return (r for r in records if r.label == 0)


def render(
    base_image: str | os.PathLike[str], size: tuple[int, int], recipe: str, seed: int, texture: str = "self"
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic anomaly of a curated base image.

    Args:
        base_image: the curated (already resized) base PNG. size: (width, height) to decode to.
        recipe: one of :data:`readl.data.synthetic.RECIPES`. seed: from :func:`variant_seed`.
        texture: DRAEM's texture source (:data:`readl.data.synthetic.TEXTURES`).

    Returns:
        (image (H, W, 3) uint8, mask (H, W) bool).

    Raises:
        readl.data.images.BadImageError: the base image cannot be read.
    """
    from ..images import load_rgb

    image = np.asarray(load_rgb(base_image, size))  # (H, W, 3) uint8
    return synthesize(recipe, image, seed, texture_source=texture)
