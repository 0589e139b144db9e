"""Synthetic anomalies (readl.data.synthetic): seeded, exact masks, visible, published ranges."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from readl.config import CurateConfig, CurateSource
from readl.data import curate as C
from readl.data import synthetic as syn
from readl.data.sources import ADAPTERS, read_source

S = importlib.import_module("readl.data.sources.synthetic")  # the package re-exports the adapter


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
        # area <= max width x max length at 256 px
        p = syn.ScarParams()
        assert 0 < mask.sum() <= p.width[1] * p.length[1] + 1
        assert mask.mean() < 0.02  # thin: a small part of the image
    big = _image(size=(512, 512))
    areas = [syn.scar(big, np.random.default_rng(s))[1].sum() for s in range(10)]
    small = [syn.scar(img, np.random.default_rng(s))[1].sum() for s in range(10)]
    assert np.mean(areas) > 2.5 * np.mean(small)  # side x2 -> area about x4


def test_draem_opacity_blend_and_texture():
    img = _image()
    tex = np.full((50, 60, 3), 255, np.uint8)  # resized to the image; any size accepted
    p = syn.DraemParams(opacity=(1.0, 1.0))  # beta = 1: the mask shows the texture only
    rng = np.random.default_rng(3)
    out, mask = syn.draem(img, rng, texture=tex, params=p)
    assert mask.mean() >= p.min_area
    own, _ = syn.draem(img, np.random.default_rng(3), params=p)  # texture = the image itself
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
    assert np.array_equal(out0, flat) and mask0.any()  # best effort: the mask is still the paste


# ------------------------------------------------------------------ the `synthetic` source layout


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture(scope="module")
def syn_tree(tmp_path_factory) -> Path:
    """toy (mvtec): train/good g0..g3, test/good t0, test/crack c0 (+ mask);
    held (mvtec): train/good h0..h2 (read by no other split), test/good x0 (never a base)."""
    root = tmp_path_factory.mktemp("raw-syn")
    for i in range(4):
        _save(root / f"toy/widget/train/good/g{i}.png", _image(10 + i, (64, 64)))
    _save(root / "toy/widget/test/good/t0.png", _image(20, (64, 64)))
    _save(root / "toy/widget/test/crack/c0.png", _image(21, (64, 64)))
    m = np.zeros((64, 64), np.uint8)
    m[10:20, 10:20] = 255
    _save(root / "toy/widget/ground_truth/crack/c0_mask.png", m)
    for i in range(3):
        _save(root / f"held/part/train/good/h{i}.png", _image(30 + i, (64, 64)))
    _save(root / "held/part/test/good/x0.png", _image(40, (64, 64)))
    return root


def syn_config(per_image: int = 4, normals: bool = True, **kw) -> CurateConfig:
    base = dict(
        workers=1,
        image_size=56,
        train=[
            CurateSource(name="toy", layout="mvtec", root="toy", published_splits=["train"]),
            CurateSource(
                name="syn_train", layout="synthetic", root=".", options={"base": "toy", "per_image": 2, "seed": 1}
            ),
        ],
        calib=[CurateSource(name="toy", layout="mvtec", root="toy", published_splits=["test"])],
        eval=[
            CurateSource(
                name="synthetic",
                layout="synthetic",
                root="held",
                published_splits=["train"],
                options={"base_layout": "mvtec", "per_image": per_image, "normals": normals, "seed": 0},
            )
        ],
    )
    return CurateConfig(**{**base, **kw})


def test_adapter_registered_and_lists_base_normals(syn_tree):
    assert ADAPTERS["synthetic"] is S.synthetic
    recs = list(read_source("synthetic", syn_tree / "held", source="synthetic", base_layout="mvtec"))
    assert len(recs) == 4 and {r.label for r in recs} == {0}  # train/good + test/good
    assert {r.source for r in recs} == {"synthetic"}
    assert list(read_source("synthetic", syn_tree, base="toy")) == []  # made by curate


def test_spec_rejects_bad_options():
    with pytest.raises(ValueError, match="exactly one of"):
        S.spec("here")
    with pytest.raises(ValueError, match="exactly one of"):
        S.spec("here", base="a", base_layout="mvtec")
    with pytest.raises(ValueError, match=r"here: unknown synthetic recipe\(s\) \['blur'\]"):
        S.spec("here", base="a", recipes=["cutpaste", "blur"])
    with pytest.raises(ValueError, match="per_image"):
        S.spec("here", base="a", per_image=0)
    with pytest.raises(ValueError, match="normals: true. needs `base_layout`"):
        S.spec("here", base="a", normals=True)
    sp = S.spec("here", base_layout="mvtec", per_image=4)
    # recipes cycle over all variants of a source: balanced whatever per_image
    recipes = [r for i in range(3) for r, _, _ in sp.variants("s", f"b{i}", i)]
    assert {recipes.count(r) for r in syn.RECIPES} == {4}
    assert len({seed for i in range(3) for *_, seed in sp.variants("s", f"b{i}", i)}) == 12


def test_default_recipes_are_known():
    from readl.config import CurateConfig

    for split in ("train", "eval"):
        for entry in getattr(CurateConfig(), split):
            if entry.layout == "synthetic":
                assert set(entry.options["recipes"]) <= set(syn.RECIPES)
                assert entry.options["texture"] in syn.TEXTURES


def test_procedural_texture_is_seeded_and_differs_from_the_image():
    a = syn.procedural_texture((64, 48), np.random.default_rng(3))
    assert a.shape == (64, 48, 3) and a.dtype == np.uint8
    assert np.array_equal(a, syn.procedural_texture((64, 48), np.random.default_rng(3)))
    img = np.full((64, 48, 3), 128, np.uint8)
    out, mask = syn.synthesize("draem", img, 0, texture_source="procedural")
    assert mask.any() and np.array_equal(out[~mask], img[~mask]) and np.abs(out[mask] - 128.0).mean() > 20
    with pytest.raises(ValueError, match="texture"):
        syn.synthesize("draem", img, 0, texture_source="dtd")


@pytest.fixture(scope="module")
def syn_run(syn_tree, tmp_path_factory):
    return C.curate(syn_config(), syn_tree, tmp_path_factory.mktemp("cur-syn") / "curated")


def test_curate_synthetic_train_rows_carry_no_mask(syn_run):
    out = syn_run.out_dir
    tr = C.read_manifest("train", out)
    syn_rows = tr[tr["source"] == "syn_train"]
    normals = tr[(tr["source"] == "toy") & (tr["label"] == 0)]
    assert len(normals) == 4 and len(syn_rows) == 2 * 4
    assert (syn_rows["label"] == 1).all() and set(syn_rows["defect_type"]) <= set(syn.RECIPES)
    # derived from exactly the train normals (never calib / eval images)
    assert set(syn_rows["raw_image_path"]) == set(normals["raw_image_path"])
    assert syn_rows["mask_path"].isna().all() and syn_rows["raw_mask_path"].isna().all()
    assert not (out / "masks" / "train" / "syn_train").exists()
    for p in syn_rows["image_path"]:
        assert Image.open(p).size == (56, 56)


def test_training_dataset_builder_reads_no_mask(syn_run):
    """Synthetic masks never reach train: the train dataset has no mask column at all."""
    from readl.training.data import build_dataset, load_manifest

    df = load_manifest(syn_run.out_dir / "train.parquet")
    assert "mask_path" in df.columns  # curate writes the column (null for synthetic)
    ds = build_dataset(df, 56)
    assert not any("mask" in c for c in ds.column_names)
    assert not any("mask" in k for k in ds[0])


def test_curate_synthetic_eval_dataset_exact_masks(syn_run):
    ev = C.read_manifest("eval", syn_run.out_dir)
    assert set(ev["source"]) == {"synthetic"}
    normals = ev[ev["label"] == 0].set_index("raw_image_path")
    anomalies = ev[ev["label"] == 1]
    assert len(normals) == 3 and len(anomalies) == 3 * 4  # 3 bases x per_image 4
    assert "held/part/test/good/x0.png" not in set(ev["raw_image_path"])  # published_splits
    assert ev["mask_path"].notna().all()
    assert anomalies["defect_type"].value_counts().to_dict() == {r: 4 for r in syn.RECIPES}
    for row in anomalies.itertuples():
        base = np.asarray(Image.open(normals.loc[row.raw_image_path, "image_path"])).astype(int)
        img = np.asarray(Image.open(row.image_path)).astype(int)
        m = np.asarray(Image.open(row.mask_path)) > 0
        assert m.any() and (np.asarray(Image.open(row.mask_path)) % 255 == 0).all()
        assert not np.any(img != base, axis=2)[~m].any()  # changed only inside the mask
        assert np.abs(img - base)[m].mean() >= 10
    # eval is drawn first: held's bases are not used by any other split
    assert syn_run.summary["splits"]["eval"]["sources"]["synthetic"]["anomalous"] == 12


def test_curate_synthetic_is_byte_identical_and_seeded(syn_run, syn_tree, tmp_path):
    def snap(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    again = C.curate(syn_config(), syn_tree, tmp_path / "a" / "curated")
    first, second = snap(syn_run.out_dir), snap(again.out_dir)
    assert first.keys() == second.keys()
    assert all(first[k] == second[k] for k in first if not k.endswith(".parquet"))
    for split in C.SPLITS:  # manifests: equal but for the out_dir prefix of the paths
        one, two = (
            C.read_manifest(split, d).replace(str(d), "OUT", regex=True) for d in (syn_run.out_dir, again.out_dir)
        )
        pd.testing.assert_frame_equal(one, two)
    cfg = syn_config()
    other = cfg.model_copy(
        update={"eval": [cfg.eval[0].model_copy(update={"options": {**cfg.eval[0].options, "seed": 5}})]}
    )
    third = snap(C.curate(other, syn_tree, tmp_path / "b" / "curated").out_dir)
    changed = [k for k in first if k.startswith("images/eval/synthetic/") and first[k] != third[k]]
    assert len(changed) == 12  # every anomaly redrawn, normals identical


def test_curate_synthetic_without_normals_drops_bases(syn_tree, tmp_path):
    res = C.curate(syn_config(per_image=1, normals=False), syn_tree, tmp_path / "curated")
    ev = C.read_manifest("eval", res.out_dir)
    assert (ev["label"] == 1).all() and len(ev) == 3
    files = {p.name for p in (res.out_dir / "images" / "eval").rglob("*.png")}
    assert files == {Path(p).name for p in ev["image_path"]}  # base files removed
    assert res.summary["splits"]["eval"]["normal"] == 0 and res.summary["shortfall"] == 0


def test_train_copy_of_a_synthetic_eval_base_is_leakage(syn_tree, tmp_path):
    """A train image within the leakage distance of a synthetic eval image is dropped."""
    raw = tmp_path / "raw"
    import shutil

    shutil.copytree(syn_tree, raw)
    shutil.copy(raw / "held/part/train/good/h0.png", raw / "toy/widget/train/good/copy.png")
    res = C.curate(syn_config(), raw, tmp_path / "curated")
    leaked = {r["image_path"] for r in _csv(res.out_dir / "leakage.csv")}
    assert "toy/widget/train/good/copy.png" in leaked
    tr = C.read_manifest("train", res.out_dir)
    assert "toy/widget/train/good/copy.png" not in set(tr["raw_image_path"])


def test_synthetic_base_must_be_an_entry_of_the_split(syn_tree, tmp_path):
    cfg = syn_config(calib=[CurateSource(name="s", layout="synthetic", root=".", options={"base": "nope"})])
    with pytest.raises(ValueError, match=r"curate.calib\[0\] 's': base 'nope' is not"):
        C.curate(cfg, syn_tree, tmp_path / "curated")
    assert not (tmp_path / "curated").exists()


def _csv(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
