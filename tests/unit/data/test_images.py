"""readl.data.images: decoding, colour modes, orientation, mask conventions, bad files, pHash."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from readl.data import images as I
from readl.data import masks as M
from readl.data import phash as H
from readl.data.images import BadImageError

SAMPLE = Path(__file__).parents[3] / "data/raw"
GRID_PNG = SAMPLE / "mvtec_ad/grid/test/bent/000.png"
GRID_MASK = SAMPLE / "mvtec_ad/grid/ground_truth/bent/000_mask.png"
HAZEL_JPG = SAMPLE / "hazelnut_toy/hazelnut/test/colour/00.jpg"
HAZEL_MASK = SAMPLE / "hazelnut_toy/hazelnut/ground_truth/colour/00.png"
PLATE_PNG = SAMPLE / "mpdd_derived/metal_plate/test/images/test_00026.png"


def save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def square_mask(w=64, h=48, box=(10, 8, 30, 24), fg=255, bg=0, mode="L") -> Image.Image:
    arr = np.full((h, w), bg, dtype=np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = fg
    return Image.fromarray(arr, mode="L").convert(mode) if mode != "L" else Image.fromarray(arr)


def expected_box(w=64, h=48, box=(10, 8, 30, 24)) -> np.ndarray:
    out = np.zeros((h, w), dtype=bool)
    out[box[1] : box[3], box[0] : box[2]] = True
    return out


# ------------------------------------------------------------------ real images


def test_load_rgb_real_grayscale_png_is_rgb_420():
    img = I.load_rgb(GRID_PNG)
    assert img.mode == "RGB" and img.size == (420, 420)
    arr = np.asarray(img)
    assert np.array_equal(arr[..., 0], arr[..., 1])  # grey source -> equal channels


def test_load_pair_real_hazelnut_jpeg_and_mask():
    img, mask = M.load_pair(HAZEL_JPG, HAZEL_MASK, (112, 96))
    assert img.size == (112, 96) and mask.shape == (96, 112) and mask.dtype == bool
    assert 0.005 < mask.mean() < 0.1  # MANIFEST.csv: fg fraction 0.02184


def test_load_mask_real_mvtec_fraction_matches_manifest():
    mask = M.load_mask(GRID_MASK, None)
    assert mask.shape == (1024, 1024)
    assert mask.mean() == pytest.approx(0.00521, abs=1e-4)  # MANIFEST.csv mask_fg_frac


def test_jpeg_draft_decode_close_to_full_decode():
    fast = np.asarray(I.load_rgb(HAZEL_JPG, (112, 112)), dtype=float)
    full = np.asarray(Image.open(HAZEL_JPG).convert("RGB").resize((112, 112), Image.BICUBIC), dtype=float)
    assert np.abs(fast - full).mean() < 4.0


# ------------------------------------------------------------------ bad files


def test_missing_file(tmp_path):
    with pytest.raises(BadImageError, match="does not exist") as e:
        I.load_rgb(tmp_path / "nope.png")
    assert "nope.png" in str(e.value) and e.value.path.name == "nope.png"


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(BadImageError, match="zero-byte") as e:
        I.load_rgb(p)
    assert "empty.jpg" in str(e.value) and "re-download" in str(e.value)


def test_not_an_image(tmp_path):
    p = tmp_path / "page.png"
    p.write_text("<html>404 Not Found</html>")
    with pytest.raises(BadImageError, match="not an image") as e:
        I.load_rgb(p)
    assert "page.png" in str(e.value)


def test_lfs_pointer_is_not_an_image(tmp_path):
    p = tmp_path / "000.png"
    p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n")
    with pytest.raises(BadImageError, match="LFS"):
        M.load_mask(p)


@pytest.mark.parametrize("src", [HAZEL_JPG, GRID_PNG], ids=["jpeg", "png"])
def test_truncated_file_is_an_error_not_grey(tmp_path, src):
    data = src.read_bytes()
    p = tmp_path / f"cut{src.suffix}"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError, match="truncated") as e:
        I.load_rgb(p)
    assert p.name in str(e.value)
    with pytest.raises(BadImageError, match="truncated"):
        H.decode_resize_hash(p)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_mask_is_an_error(tmp_path):
    data = GRID_MASK.read_bytes()
    p = tmp_path / "000_mask.png"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError, match="truncated"):
        M.load_mask(p)


def test_refuses_when_someone_sets_load_truncated_images(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        I.load_rgb(GRID_PNG)


def test_missing_mask_in_pair(tmp_path):
    with pytest.raises(BadImageError, match="does not exist") as e:
        M.load_pair(GRID_PNG, tmp_path / "000_mask.png")
    assert "000_mask.png" in str(e.value)


def test_mismatched_mask_size(tmp_path):
    img = save(Image.new("RGB", (64, 48)), tmp_path / "img.png")
    mask = save(square_mask(60, 48, box=(1, 1, 5, 5)), tmp_path / "mask.png")
    with pytest.raises(BadImageError, match="does not match") as e:
        M.load_pair(img, mask)
    msg = str(e.value)
    assert "mask.png" in msg and "60x48" in msg and "64x48" in msg and "img.png" in msg


def test_bad_size_argument():
    with pytest.raises(ValueError, match="width, height"):
        I.load_rgb(GRID_PNG, (0, 10))


# ------------------------------------------------------------------ colour modes


def test_16bit_grey_scaled_by_bit_depth_not_saturated(tmp_path):
    arr = np.linspace(0, 65535, 64 * 16).astype(np.uint16).reshape(16, 64)
    p = save(Image.fromarray(arr), tmp_path / "g16.png")
    assert Image.open(p).mode == "I;16"
    out = np.asarray(I.load_rgb(p, None))[..., 0].astype(int)
    want = np.rint(arr / 257.0).astype(int)
    assert np.abs(out - want).max() <= 1
    assert out.min() == 0 and out.max() == 255 and 100 < out.mean() < 155


def test_16bit_tiff_uses_bits_per_sample(tmp_path):
    arr = (np.arange(32 * 32).reshape(32, 32) * 4).astype(np.uint16)  # 12-bit data, max 4092
    p = save(Image.fromarray(arr), tmp_path / "g12.tif")
    img = Image.open(p)
    img.load()
    img.tag_v2[258] = (12,)  # Pillow cannot write 12-bit TIFFs; a camera's file says this
    out = np.asarray(I.to_rgb(img))[..., 0].astype(int)
    assert np.abs(out - arr.astype(float) * 255 / 4095).max() <= 0.51 and out.max() == 255


def test_mode_I_and_F():
    i32 = Image.fromarray(np.array([[0, 65535], [32768, 1000]], dtype=np.int32), mode="I")
    out = np.asarray(I.to_rgb(i32))[..., 0]
    assert out.tolist() == [[0, 255], [128, 4]]
    f = Image.fromarray(np.array([[0.0, 1.0], [0.5, 0.25]], dtype=np.float32), mode="F")
    assert np.asarray(I.to_rgb(f))[..., 0].tolist() == [[0, 255], [128, 64]]
    bad = Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32), mode="F")
    with pytest.raises(BadImageError, match="NaN"):
        I.to_rgb(bad)


def test_cmyk_jpeg(tmp_path):
    p = save(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), tmp_path / "red.jpg", quality=95)
    assert Image.open(p).mode == "CMYK"
    r, g, b = np.asarray(I.load_rgb(p, (16, 16))).reshape(-1, 3).mean(axis=0)
    assert r > 230 and g < 30 and b < 30


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (4, 2), 0)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.putpixel((3, 1), 1)
    p = save(img, tmp_path / "pal.png", transparency=0)
    assert Image.open(p).mode == "P" and "transparency" in Image.open(p).info
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL warns when P+transparency goes straight to RGB
        arr = np.asarray(I.load_rgb(p, None))
    assert arr[0, 0].tolist() == [255, 0, 0] and arr[1, 3].tolist() == [0, 255, 0]


def test_rgba_la_and_1bit_drop_alpha_keep_colour(tmp_path):
    rgba = Image.new("RGBA", (2, 2), (10, 20, 30, 0))
    assert np.asarray(I.to_rgb(rgba))[0, 0].tolist() == [10, 20, 30]
    la = Image.new("LA", (2, 2), (77, 0))
    assert np.asarray(I.to_rgb(la))[0, 0].tolist() == [77, 77, 77]
    one = Image.new("1", (2, 1), 0)
    one.putpixel((1, 0), 1)
    assert np.asarray(I.to_rgb(one))[..., 0].tolist() == [[0, 255]]
    p = save(Image.new("RGBA", (8, 8), (200, 100, 50, 128)), tmp_path / "a.png")
    assert np.asarray(I.load_rgb(p, None))[0, 0].tolist() == [200, 100, 50]


# ------------------------------------------------------------------ EXIF orientation


def _exif(orientation: int) -> bytes:
    ex = Image.Exif()
    ex[0x0112] = orientation
    return ex.tobytes()


@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_rotated_image_and_mask_stay_aligned(tmp_path, orientation):
    w, h, box = 64, 48, (4, 4, 20, 16)  # bright block near the stored top-left
    stored = np.full((h, w, 3), 20, dtype=np.uint8)
    stored[box[1] : box[3], box[0] : box[2]] = 235
    img_p = save(Image.fromarray(stored), tmp_path / "img.jpg", quality=95, exif=_exif(orientation))
    mask_p = save(square_mask(w, h, box), tmp_path / "mask.png")
    img, mask = M.load_pair(img_p, mask_p, None)
    upright = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    assert img.size == upright and mask.shape == (upright[1], upright[0])
    bright = np.asarray(img)[..., 0] > 128
    assert (bright == mask).mean() > 0.99 and mask.sum() == 16 * 12
    # the model-size path too
    img2, mask2 = M.load_pair(img_p, mask_p, (32, 32))
    assert ((np.asarray(img2)[..., 0] > 128) == mask2).mean() > 0.97
    # load_rgb alone applies the same orientation
    assert I.load_rgb(img_p, None).size == upright


def test_mask_already_upright_is_used_as_stored(tmp_path):
    w, h = 64, 48
    stored = np.full((h, w, 3), 20, dtype=np.uint8)
    stored[4:16, 4:20] = 235
    img_p = save(Image.fromarray(stored), tmp_path / "img.jpg", quality=95, exif=_exif(6))
    upright = np.asarray(I.load_rgb(img_p, None))[..., 0] > 128  # (64, 48) array
    mask_p = save(Image.fromarray(upright.astype(np.uint8) * 255), tmp_path / "mask.png")
    _, mask = M.load_pair(img_p, mask_p, None)
    assert np.array_equal(mask, upright)


# ------------------------------------------------------------------ mask conventions


@pytest.mark.parametrize(
    "fg,bg",
    [(1, 0), (255, 0), (238, 0), (253, 0), (2, 0)],
    ids=["0-1", "0-255", "loco-238", "mvtec3d-253", "visa-index-2"],
)
def test_mask_value_conventions(tmp_path, fg, bg):
    p = save(square_mask(fg=fg, bg=bg), tmp_path / "m.png")
    assert np.array_equal(M.load_mask(p, None), expected_box())


@pytest.mark.parametrize("values", [(238, 250, 255), (1, 2, 3)], ids=["loco", "visa"])
def test_mask_with_several_defect_values(tmp_path, values):
    arr = np.zeros((48, 64), dtype=np.uint8)
    arr[0:5, 0:5] = values[0]
    arr[10:20, 10:20] = values[1]
    arr[30:40, 30:40] = values[2]
    p = save(Image.fromarray(arr), tmp_path / "m.png")
    assert M.load_mask(p, None).sum() == 25 + 100 + 100


def test_rgb_and_palette_masks(tmp_path):
    red = np.zeros((48, 64, 3), dtype=np.uint8)
    red[8:24, 10:30] = (255, 0, 0)
    p = save(Image.fromarray(red), tmp_path / "rgb.png")
    assert np.array_equal(M.load_mask(p, None), expected_box())
    pal = square_mask(fg=1).convert("P")  # index image
    pal.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)  # VOC-like colours
    p2 = save(pal, tmp_path / "pal.png")
    assert Image.open(p2).mode == "P"
    assert np.array_equal(M.load_mask(p2, None), expected_box())
    rgba = Image.fromarray(np.dstack([red, np.full((48, 64), 255, np.uint8)]), mode="RGBA")
    assert np.array_equal(M.binarise_mask(rgba), expected_box())
    # issue: a defect drawn in black on a transparent layer read as an empty mask
    alpha = expected_box().astype(np.uint8) * 255
    black_on_clear = Image.fromarray(np.dstack([np.zeros((48, 64, 3), np.uint8), alpha]), mode="RGBA")
    assert np.array_equal(M.load_mask(save(black_on_clear, tmp_path / "clear.png"), None), expected_box())
    opaque_black = Image.fromarray(
        np.dstack([np.zeros((48, 64, 3), np.uint8), np.full((48, 64), 255, np.uint8)]), mode="RGBA"
    )
    assert not M.binarise_mask(opaque_black).any()  # all opaque and black: still an empty (normal) mask


def test_16bit_and_1bit_masks(tmp_path):
    arr = expected_box().astype(np.uint16)
    for scale in (1, 65535):
        p = save(Image.fromarray(arr * scale), tmp_path / f"m{scale}.png")
        assert np.array_equal(M.load_mask(p, None), expected_box())
    p = save(square_mask().convert("1"), tmp_path / "m1.png")
    assert np.array_equal(M.load_mask(p, None), expected_box())


def _disk(w=128, h=96, cx=50.3, cy=41.7, r=21.4) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


@pytest.mark.parametrize("shape", ["box", "disk"])
@pytest.mark.parametrize("quality", [40, 75, 95])
def test_jpeg_compressed_mask(tmp_path, shape, quality):
    truth = expected_box(128, 96, (21, 13, 61, 51)) if shape == "box" else _disk()
    p = save(Image.fromarray(truth.astype(np.uint8) * 255), tmp_path / "m.jpg", quality=quality)
    raw = np.asarray(Image.open(p))
    assert ((raw > 0) & (raw < 128) & ~truth).any()  # JPEG noise near 0 is really there
    assert ((raw > 128) & (raw < 255) & truth).any()  # and near 255
    got = M.load_mask(p, None)
    if shape == "disk":  # a curved edge: allow a JPEG-blurred one-pixel rim, nothing else
        assert (got != truth).sum() <= 0.02 * truth.sum()
        assert not (got & ~_disk(r=23)).any() and (got | ~_disk(r=20)).all()
    else:
        assert np.array_equal(got, truth)
    # the same noisy pixels saved losslessly (PNG of a JPEG-decoded mask) give the same answer
    p2 = save(Image.fromarray(raw), tmp_path / "m_from_jpeg.png")
    assert np.array_equal(M.load_mask(p2, None), got)


def test_mask_folder_union_loco(tmp_path):
    d = tmp_path / "000"
    d.mkdir()
    a = np.zeros((48, 64), np.uint8)
    a[0:4, 0:4] = 238
    b = np.zeros((48, 64), np.uint8)
    b[40:48, 60:64] = 255
    save(Image.fromarray(a), d / "000.png")
    save(Image.fromarray(b), d / "001.png")
    m = M.load_mask(d, None)
    assert m.sum() == 16 + 32 and m[0, 0] and m[47, 63]
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadImageError, match="no mask images"):
        M.load_mask(tmp_path / "empty")


def test_labelme_and_coco_masks(tmp_path):
    import json

    lm = {
        "shapes": [{"label": "Pitting", "shape_type": "polygon", "points": [[10, 8], [29, 8], [29, 23], [10, 23]]}],
        "imageWidth": 64,
        "imageHeight": 48,
    }
    p = tmp_path / "a.json"
    p.write_text(json.dumps(lm))
    assert np.array_equal(M.load_mask(p, None), expected_box())
    coco = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 64, "height": 48}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "segmentation": [[10, 8, 29, 8, 29, 23, 10, 23]]}],
        "categories": [{"id": 1, "name": "scratch"}],
    }
    c = tmp_path / "_annotations.coco.json"
    c.write_text(json.dumps(coco))
    assert np.array_equal(M.load_mask(c, None, coco_image_id="7"), expected_box())
    with pytest.raises(BadImageError, match="image id"):
        M.load_mask(c, None)


def test_labelme_circle_mask_is_the_disc(tmp_path):
    import json

    lm = {
        "shapes": [{"label": "dent", "shape_type": "circle", "points": [[32, 24], [32, 34]]}],  # radius 10 px
        "imageWidth": 64,
        "imageHeight": 48,
    }
    p = tmp_path / "c.json"
    p.write_text(json.dumps(lm))
    m = M.load_mask(p, None)
    assert m.shape == (48, 64) and m[24, 32] and m[24, 41] and not m[24, 44] and not m[0, 0]
    assert abs(int(m.sum()) - round(np.pi * 10**2)) < 40  # the disc's area, give or take its rim


def test_mask_resize_is_nearest_and_shape_is_h_w(tmp_path):
    p = save(square_mask(), tmp_path / "m.png")
    m = M.load_mask(p, (32, 24))
    assert m.shape == (24, 32) and m.dtype == bool
    assert m.sum() == 10 * 8  # exactly half in both directions
    assert M.mask_is_empty(save(square_mask(fg=0), tmp_path / "e.png"))
    assert not M.mask_is_empty(p)


# ------------------------------------------------------------------ pHash


def test_phash_known_answer_and_format():
    assert H.phash(Image.new("L", (50, 50), 128)) == "8000000000000000"  # only DC > median
    h = H.phash(I.load_rgb(GRID_PNG))
    assert len(h) == 16 and int(h, 16) >= 0 and h == h.lower()


@pytest.mark.parametrize("src", [HAZEL_JPG, GRID_PNG, PLATE_PNG], ids=["hazelnut", "grid", "plate"])
def test_phash_stable_under_resize_and_jpeg(src):
    img = I.load_rgb(src, None)
    h = H.phash(img)
    smaller = img.resize((img.width * 2 // 3, img.height * 2 // 3), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=60)
    buf.seek(0)
    jpeg = Image.open(buf).convert("RGB")
    assert H.hamming(h, H.phash(smaller)) <= 6
    assert H.hamming(h, H.phash(jpeg)) <= 6
    _, h420 = H.decode_resize_hash(src)
    assert H.hamming(h, h420) <= 6


def test_phash_differs_for_different_images():
    hashes = [H.decode_resize_hash(p)[1] for p in (HAZEL_JPG, GRID_PNG, PLATE_PNG)]
    for i in range(3):
        for j in range(i + 1, 3):
            assert H.hamming(hashes[i], hashes[j]) > 12


def test_hamming():
    assert H.hamming("0" * 16, "f" * 16) == 64
    assert H.hamming("8000000000000000", "0000000000000001") == 2
    with pytest.raises(ValueError):
        H.hamming("abc", "0" * 16)
    with pytest.raises(ValueError):
        H.hamming("g" * 16, "0" * 16)


def test_decode_resize_hash_shapes():
    arr, h = H.decode_resize_hash(HAZEL_JPG, (112, 80))
    assert arr.shape == (80, 112, 3) and arr.dtype == np.uint8 and len(h) == 16
    assert H.phash(arr) == h


# ------------------------------------------------------------------ degenerate and huge images


@pytest.mark.parametrize("size", [(1, 1), (5, 400), (27, 64)])
def test_image_below_one_merged_patch_is_rejected(tmp_path, size):
    p = save(Image.new("RGB", size, (200, 10, 10)), tmp_path / "tiny.png")
    for decode in (
        lambda: I.load_rgb(p, min_side=I.MIN_SIDE),
        lambda: H.decode_resize_hash(p, min_side=I.MIN_SIDE),
        lambda: M.load_pair(p, None, min_side=I.MIN_SIDE),
        lambda: I.load_rgb_fit(p, 2048, min_side=I.MIN_SIDE),
    ):
        with pytest.raises(
            BadImageError,
            match=rf"tiny.png: image is {size[0]}x{size[1]} px, "
            rf"smaller than the 28x28",
        ):
            decode()
    ok = save(Image.new("RGB", (28, 28)), tmp_path / "ok.png")
    assert I.load_rgb(ok, min_side=I.MIN_SIDE).size == (420, 420)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_load_rgb_fit_downscales_big_images_keeping_aspect(tmp_path, fmt):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (12, 36, 3), dtype=np.uint8)
    big = Image.fromarray(small).resize((3600, 1200), Image.Resampling.BILINEAR)
    p = save(big, tmp_path / f"big.{fmt.lower()}", format=fmt)
    img = I.load_rgb_fit(p, 2048)
    assert img.size == (2048, 683) and img.mode == "RGB"
    want = np.asarray(big.resize((2048, 683), Image.Resampling.BICUBIC), dtype=float)
    assert np.abs(np.asarray(img, dtype=float) - want).mean() < 3  # draft / reduce: same picture
    assert I.load_rgb_fit(p, 4000).size == (3600, 1200)  # already fits: own size
    # 8x the target: box-reduced before the resize, same picture as a direct resize
    arr = np.asarray(I.load_rgb(p, (450, 150)), dtype=float)
    direct = np.asarray(big.resize((450, 150), Image.Resampling.BICUBIC), dtype=float)
    assert np.abs(arr - direct).mean() < 3
