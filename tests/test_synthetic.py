"""Synthetic anomalies (readl.data.synthetic): seeded, exact masks, visible, published ranges."""

from __future__ import annotations

import numpy as np
import pytest

from readl.data import synthetic as syn


def _image(seed: int = 0, size: tuple[int, int] = (96, 128)) -> np.ndarray:
    """A textured test image: smooth gradient plus noise, (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([yy * 200 / h, xx * 200 / w, (yy + xx) * 100 / (h + w)], axis=-1)
    return np.clip(base + rng.normal(0, 10, (h, w, 3)) + 20, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("recipe", syn.RECIPES)
def test_recipe_contract_exact_mask_and_seeded(recipe):
    img = _image()
    out, mask = syn.synthesize(recipe, img, 7)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert mask.shape == img.shape[:2] and mask.dtype == bool
    assert mask.any() and not mask.all()
    changed = np.any(out != img, axis=2)
    assert not changed[~mask].any(), "pixels outside the mask must be untouched"
    # exact: the masked region visibly changed (mean |diff| over the mask >= the guard)
    assert np.abs(out.astype(int) - img)[mask].mean() >= 20
    assert changed[mask].mean() > 0.5
    again, mask2 = syn.synthesize(recipe, img, 7)
    assert np.array_equal(again, out) and np.array_equal(mask2, mask)
    other, mask3 = syn.synthesize(recipe, img, 8)
    assert not (np.array_equal(other, out) and np.array_equal(mask3, mask))
    assert np.array_equal(img, _image()), "the input must not be modified"


def test_cutpaste_rectangle_area_and_aspect_in_published_range():
    img = _image(size=(200, 200))
    p = syn.CutPasteParams()
    for seed in range(20):
        _, mask = syn.cutpaste(img, np.random.default_rng(seed))
        ys, xs = np.nonzero(mask)
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert mask.sum() == h * w, "CutPaste pastes one full rectangle"
        assert p.area_ratio[0] * 0.9 <= mask.mean() <= p.area_ratio[1] * 1.1
        assert p.aspect_ratio * 0.9 <= h / w <= 1.1 / p.aspect_ratio


def test_scar_is_thin_and_scaled_with_image():
    img = _image(size=(256, 256))
    for seed in range(10):
        _, mask = syn.scar(img, np.random.default_rng(seed))
        # area <= max width x max length of the paper at 256 px
        assert 0 < mask.sum() <= 16 * 25 + 1
    big = _image(size=(512, 512))
    areas = [syn.scar(big, np.random.default_rng(s))[1].sum() for s in range(10)]
    small = [syn.scar(img, np.random.default_rng(s))[1].sum() for s in range(10)]
    assert np.mean(areas) > 2.5 * np.mean(small)    # side x2 -> area about x4


def test_draem_opacity_blend_and_texture():
    img = _image()
    tex = np.full((50, 60, 3), 255, np.uint8)       # resized to the image; any size accepted
    p = syn.DraemParams(opacity=(1.0, 1.0))         # beta = 1: the mask shows the texture only
    rng = np.random.default_rng(3)
    out, mask = syn.draem(img, rng, texture=tex, params=p)
    assert mask.mean() >= p.min_area
    own, _ = syn.draem(img, np.random.default_rng(3), params=p)   # texture = the image itself
    assert not np.array_equal(own, out), "the texture argument must be used"
    half = syn.DraemParams(opacity=(0.5, 0.5), min_visibility=0)
    out2, mask2 = syn.draem(img, np.random.default_rng(3), texture=img[::-1].copy(), params=half)
    assert not np.any(out2 != img, axis=2)[~mask2].any()


def test_draem_blend_equation():
    """Paper Eq. 2 with a constant texture and no augmentation change: (1-beta) I + beta A."""
    img = _image()
    rng = np.random.default_rng(0)
    out, mask = syn.draem(img, rng, params=syn.DraemParams(opacity=(0.6, 0.6), min_visibility=0))
    # whatever the texture, out = round(0.4 I + 0.6 A) with A in [0, 255]: bounded around 0.4 I
    lo = np.rint(0.4 * img[mask].astype(float))
    hi = np.rint(0.4 * img[mask].astype(float) + 0.6 * 255)
    assert np.all(out[mask] >= lo - 1) and np.all(out[mask] <= hi + 1)


def test_perlin_noise_shape_range_and_any_size():
    rng = np.random.default_rng(0)
    for shape, res in (((420, 420), (8, 4)), ((37, 53), (2, 1)), ((64, 64), (1, 1))):
        n = syn.perlin_noise(shape, res, rng)
        assert n.shape == shape and np.isfinite(n).all()
        assert np.abs(n).max() <= 1.0
    smooth = syn.perlin_noise((128, 128), (1, 1), np.random.default_rng(1))
    rough = syn.perlin_noise((128, 128), (16, 16), np.random.default_rng(1))
    assert np.abs(np.diff(smooth, axis=1)).mean() < np.abs(np.diff(rough, axis=1)).mean()
    with pytest.raises(ValueError, match="periods"):
        syn.perlin_noise((10, 10), (0, 1), rng)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown synthetic recipe 'blur'.*cutpaste"):
        syn.synthesize("blur", _image(), 0)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        syn.cutpaste(_image().astype(np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        syn.scar(_image()[..., 0], np.random.default_rng(0))
    with pytest.raises(ValueError, match="too small"):
        syn.draem(np.zeros((8, 8, 3), np.uint8), np.random.default_rng(0))


def test_uniform_background_patch_still_visible():
    """A patch cut from a flat grey image is invisible without jitter: the guard redraws."""
    flat = np.full((64, 64, 3), 128, np.uint8)
    out, mask = syn.cutpaste(flat, np.random.default_rng(0))
    assert np.abs(out.astype(int) - flat)[mask].mean() >= 20
    none = syn.CutPasteParams(jitter=syn.JitterParams(0, 0, 0, 0))
    out0, mask0 = syn.cutpaste(flat, np.random.default_rng(0), none)
    assert np.array_equal(out0, flat) and mask0.any()   # best effort: the mask is still the paste
