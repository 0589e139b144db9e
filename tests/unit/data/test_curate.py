"""The curate stage: bundled real sample end to end, and a constructed raw tree with bad inputs,
leaked copies of eval images and category strata."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from readl.config import CurateConfig, CurateSource, load_params
from readl.data import curate as C
from readl.data import curate_workers
from readl.data.phash import decode_resize_hash, hamming
from readl.data.schema import validate_manifest

REPO = Path(__file__).resolve().parents[3]
OUTPUT_FILES = ("train.parquet", "calib.parquet", "eval.parquet", "rejected.csv", "leakage.csv", "summary.json")


def texture(seed: int, size=(96, 80)) -> np.ndarray:
    """A smooth random colour texture (distinct images get distant pHashes)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize(size, Image.Resampling.BICUBIC))


def save(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def mask(size=(96, 80), box=(10, 10, 30, 30)) -> np.ndarray:
    m = np.zeros((size[1], size[0]), dtype=np.uint8)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 255
    return m


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ the bundled sample


@pytest.fixture(scope="module")
def sample_run(sample_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("curated-sample") / "curated"
    return C.curate(CurateConfig(workers=1), sample_dir, out)


def test_repo_params_are_the_model_defaults():
    # params.yaml's curate: section and CurateConfig() must describe the same (bundled) recipe
    assert load_params(REPO / "params.yaml").curate == CurateConfig()


def test_sample_counts_match_params(sample_run):
    cfg = CurateConfig()
    assert sample_run.rejected == 0 and sample_run.leaked == 0
    for split in C.SPLITS:
        df = C.read_manifest(split, sample_run.out_dir)
        assert len(df) == sample_run.counts[split]
        validate_manifest(df, require_masks=(split == "eval"))
        got = df.groupby(["source", "label"]).size().to_dict()
        for entry in getattr(cfg, split):
            for label, want in ((0, entry.normal), (1, entry.anomalous)):
                if want is not None:
                    assert got.get((entry.name, label), 0) == want, (split, entry.name, label)
    # eval = every MVTec grid image (3 + 10 good, 11 anomalous): null counts mean "all"
    ev = C.read_manifest("eval", sample_run.out_dir)
    real = ev[ev["source"] == "mvtec_ad"]
    assert set(real["category"]) == {"grid"} and len(real) == 24 and real["label"].sum() == 11
    # + the synthetic eval dataset: 3 DRAEM anomalies of each of 40 held-out MVTec AD bottle photos
    syn = ev[ev["source"] == "synthetic"]
    assert set(syn["category"]) == {"bottle"} and (syn["label"] == 0).sum() == 40
    assert syn.groupby("defect_type").size().to_dict() == {"good": 40, "draem": 120}
    assert syn["raw_image_path"].nunique() == 40  # the bootstrap's independent units
    train = C.read_manifest("train", sample_run.out_dir)
    assert not set(syn["raw_image_path"]) & set(train["raw_image_path"])
    # + the real-defect eval dataset: every MPDD metal_plate photo outside the re-split's test folder, which alone
    # feeds train and calib
    mpdd = ev[ev["source"] == "mpdd"]
    assert mpdd.groupby("label").size().to_dict() == {0: 54, 1: 60} and mpdd["mask_path"].notna().all()
    calib = C.read_manifest("calib", sample_run.out_dir)
    plates = pd.concat([train, calib])
    plates = plates.loc[plates["source"] == "mpdd_derived", "raw_image_path"]
    assert len(plates) == 20 and plates.str.startswith("mpdd_derived/metal_plate/test/").all()
    summary = sample_run.summary["splits"]
    # train: 66 real images (26 + 6 + 14 normal, 12 + 8 anomalous) + one synthetic anomaly per normal train image
    assert summary["train"]["images"] == 66 + 46 and summary["calib"]["images"] == 25
    assert summary["train"]["sources"]["hazelnut_toy"]["categories"]["hazelnut"] == {"normal": 26, "anomalous": 12}
    # train and calib are disjoint; all three image columns unique
    tr, ca = (C.read_manifest(s, sample_run.out_dir) for s in ("train", "calib"))
    assert not set(tr["raw_image_path"]) & set(ca["raw_image_path"])


def test_sample_images_and_masks_are_420_png(sample_run):
    out = sample_run.out_dir
    ev = C.read_manifest("eval", out)
    assert ev["mask_path"].notna().all()  # eval: a mask for every row (zeros for normal images)
    for row in ev.itertuples():
        img = Image.open(row.image_path)
        m = np.asarray(Image.open(row.mask_path))
        assert img.size == (420, 420) and img.mode == "RGB" and img.format == "PNG"
        assert m.shape == (420, 420) and set(np.unique(m)) <= {0, 255}
        assert (m.max() == 255) == bool(row.label)
        # synthetic: the held-out MVTec AD bottle photos; mpdd: the metal_plate photos train and calib never read
        where = {"mvtec_ad": "grid", "synthetic": "bottle", "mpdd": "metal_plate"}[row.source]
        assert row.image_path.startswith(f"{out}/images/eval/{row.source}/{where}/")
        assert row.raw_image_path.startswith(
            ("mvtec_ad/grid/", "mvtec_ad/bottle/", "mpdd_derived/metal_plate/train/", "mpdd_derived/metal_plate/val/")
        )
        assert (REPO / "data/raw" / row.raw_image_path).is_file()
    tr = C.read_manifest("train", out)
    hz = tr[tr["source"] == "hazelnut_toy"]
    assert hz.loc[hz["label"] == 0, "mask_path"].isna().all()  # no mask in the source: none
    assert hz.loc[hz["label"] == 1, "mask_path"].notna().all()
    # the stored hash is the pHash of the curated pixels
    row = tr.iloc[0]
    assert decode_resize_hash(row["image_path"], None)[1] == row["phash"]


@pytest.mark.slow
def test_same_params_give_byte_identical_outputs(sample_run, sample_dir, monkeypatch):
    first = snapshot(sample_run.out_dir)
    monkeypatch.setattr(curate_workers, "POOL_MIN_TASKS", 0)  # second run on a 2-process pool, same out_dir
    C.curate(CurateConfig(workers=2), sample_dir, sample_run.out_dir)
    second = snapshot(sample_run.out_dir)
    assert first.keys() == second.keys()
    assert all(first[k] == second[k] for k in first)  # manifests, csvs, summary, every PNG


def test_load_split_as_hf_dataset(sample_run):
    import datasets

    ds = C.load_split("eval", sample_run.out_dir)
    assert isinstance(ds, datasets.Dataset) and len(ds) == 24 + 114 + 160
    assert isinstance(ds.features["image"], datasets.Image)
    row = ds[0]
    assert row["image"].size == (420, 420) and row["image"].mode == "RGB"
    assert row["mask"].size == (420, 420)
    train = C.load_split("train", sample_run.out_dir)
    # hazelnut and bottle normals have no mask, nor have the 46 synthetic train anomalies
    assert sum(r is None for r in train["mask"]) == 26 + 14 + 46
    with pytest.raises(ValueError, match="unknown split"):
        C.load_split("test", sample_run.out_dir)


# ------------------------------------------------------------------ a constructed raw tree


@pytest.fixture(scope="module")
def raw_tree(tmp_path_factory) -> Path:
    """data/raw-like tree:

    evalset (mvtec): test/good 0,1; test/hole 0,1 with masks; test/hole/2 with no mask.
    toy (mvtec), category widget: train/good g0..g5 + z (zero-byte), t (truncated JPEG),
        n (not an image); test/crack c0, c1 with masks, c2 with a 50x50 mask (mismatched),
        test/good/leak_png = copy of evalset hole/0, test/good/leak_jpg = its JPEG re-encoding.
    toy, category gadget: train/good h0..h2 (a second category for stratification).
    vtoy (visa): an anomaly whose mask file is missing, one whose mask is zero-byte, one good.
    """
    root = tmp_path_factory.mktemp("raw")
    ev = root / "evalset" / "part"
    for i in range(2):
        save(ev / f"test/good/{i:03d}.png", texture(100 + i))
        save(ev / f"test/hole/{i:03d}.png", texture(110 + i))
        save(ev / f"ground_truth/hole/{i:03d}_mask.png", mask())
    save(ev / "test/hole/002.png", texture(120))

    toy = root / "toy" / "widget"
    for i in range(6):
        save(toy / f"train/good/g{i}.png", texture(200 + i))
    (toy / "train/good/z.png").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(texture(210)).save(buf, "JPEG", quality=90)
    (toy / "train/good/t.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (toy / "train/good/n.png").write_text("<html>404 not found</html>")
    for i in range(3):
        save(toy / f"test/crack/c{i}.png", texture(220 + i))
    save(toy / "ground_truth/crack/c0_mask.png", mask())
    save(toy / "ground_truth/crack/c1_mask.png", mask())
    save(toy / "ground_truth/crack/c2_mask.png", mask((50, 50), (5, 5, 20, 20)))
    leaked = np.asarray(Image.open(ev / "test/hole/000.png"))
    save(toy / "test/good/leak_png.png", leaked)
    save(toy / "test/good/leak_jpg.jpg", leaked, quality=90)
    for i in range(3):
        save(root / "toy" / "gadget" / f"train/good/h{i}.png", texture(300 + i))

    vt = root / "vtoy"
    save(vt / "cap/Data/Images/Normal/0000.JPG", texture(400), format="JPEG")
    save(vt / "cap/Data/Images/Anomaly/0001.JPG", texture(401), format="JPEG")
    save(vt / "cap/Data/Images/Anomaly/0002.JPG", texture(402), format="JPEG")
    (vt / "cap/Data/Masks/Anomaly").mkdir(parents=True)
    (vt / "cap/Data/Masks/Anomaly/0002.png").write_bytes(b"")
    (vt / "split_csv").mkdir()
    (vt / "split_csv/1cls.csv").write_text(
        "object,split,label,image,mask\n"
        "cap,train,normal,cap/Data/Images/Normal/0000.JPG,\n"
        "cap,test,anomaly,cap/Data/Images/Anomaly/0001.JPG,cap/Data/Masks/Anomaly/0001.png\n"
        "cap,test,anomaly,cap/Data/Images/Anomaly/0002.JPG,cap/Data/Masks/Anomaly/0002.png\n"
    )
    return root


def tree_config(**kw) -> CurateConfig:
    base = dict(
        workers=1,
        train=[CurateSource(name="toy", layout="mvtec", root="toy")],
        calib=[CurateSource(name="vtoy", layout="visa", root="vtoy")],
        eval=[CurateSource(name="evalset", layout="mvtec", root="evalset", published_splits=["test"])],
    )
    return CurateConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def tree_run(raw_tree, tmp_path_factory):
    return C.curate(tree_config(), raw_tree, tmp_path_factory.mktemp("cur") / "curated")


def test_bad_inputs_are_rejected_with_reasons(tree_run):
    rows = {r["image_path"]: r for r in read_csv(tree_run.out_dir / "rejected.csv")}
    expect = {
        "toy/widget/train/good/z.png": ("bad_image", "zero-byte"),
        "toy/widget/train/good/t.jpg": ("bad_image", "truncated"),
        "toy/widget/train/good/n.png": ("bad_image", "not an image"),
        "toy/widget/test/crack/c2.png": ("bad_mask", "does not match"),
        "vtoy/cap/Data/Images/Anomaly/0001.JPG": ("bad_mask", "does not exist"),
        "vtoy/cap/Data/Images/Anomaly/0002.JPG": ("bad_mask", "zero-byte"),
        "evalset/part/test/hole/002.png": ("missing_mask", "without a mask"),
    }
    assert set(rows) == set(expect)
    for path, (code, words) in expect.items():
        assert rows[path]["reason"].startswith(code + ":"), rows[path]
        assert words in rows[path]["reason"], rows[path]
    assert rows["vtoy/cap/Data/Images/Anomaly/0001.JPG"]["mask_path"] == "vtoy/cap/Data/Masks/Anomaly/0001.png"
    assert tree_run.rejected == 7 and tree_run.summary["rejected"]["by_source"] == {"evalset": 1, "toy": 4, "vtoy": 2}
    # the stage still produced everything else
    ev = C.read_manifest("eval", tree_run.out_dir)
    assert len(ev) == 4 and validate_manifest(ev, require_masks=True) is not None
    assert len(C.read_manifest("calib", tree_run.out_dir)) == 1  # vtoy's normal image


def test_leaked_copies_of_eval_images_are_removed(tree_run):
    rows = read_csv(tree_run.out_dir / "leakage.csv")
    assert {r["image_path"] for r in rows} == {"toy/widget/test/good/leak_png.png", "toy/widget/test/good/leak_jpg.jpg"}
    for r in rows:
        assert r["split"] == "train" and r["eval_image_path"] == "evalset/part/test/hole/000.png"
        assert int(r["distance"]) <= CurateConfig().leakage_max_distance
        assert hamming(r["phash"], r["eval_phash"]) == int(r["distance"])
    train = C.read_manifest("train", tree_run.out_dir)
    assert not train["raw_image_path"].str.contains("leak").any()
    assert not any("leak" in p.name for p in (tree_run.out_dir / "images").rglob("*"))
    assert tree_run.leaked == 2
    # 6 widget + 3 gadget normals, c0 + c1 anomalous
    assert len(train) == 11 and train["label"].sum() == 2


def test_stratified_sampling_replaces_rejected_and_leaked(raw_tree, tmp_path):
    # widget has 6 good + 2 leaked + 3 bad normals (11), gadget 3: 7 normals drawn in proportion
    cfg = tree_config(train=[CurateSource(name="toy", layout="mvtec", root="toy", normal=7, anomalous=0)], calib=[])
    res = C.curate(cfg, raw_tree, tmp_path / "a")
    train = C.read_manifest("train", res.out_dir)
    assert len(train) == 7 and set(train["label"]) == {0}
    cats = train["category"].value_counts().to_dict()
    assert cats["gadget"] >= 1 and cats["widget"] >= 4  # both categories, widget the larger
    other = C.curate(cfg.model_copy(update={"seed": 1}), raw_tree, tmp_path / "b")
    assert len(C.read_manifest("train", other.out_dir)) == 7
    # asking for more than there is: everything usable, and the shortfall is reported
    big = tree_config(train=[CurateSource(name="toy", layout="mvtec", root="toy", normal=50, anomalous=0)], calib=[])
    res = C.curate(big, raw_tree, tmp_path / "c")
    assert res.counts["train"] == 9 and res.summary["shortfall"] == 41


def test_proportional_order_interleaves_categories():
    from readl.data.sources import Record

    cands = [
        C.Candidate(
            Record("s", cat, "train", 0, "good", Path(f"/r/{cat}/{i}.png")), f"{cat}/{i}.png", None, f"{cat}/{i}"
        )
        for cat, n in (("a", 6), ("b", 3))
        for i in range(n)
    ]
    order = C.proportional_order(cands, np.random.default_rng(0))
    assert sorted(c.image_rel for c in order) == sorted(c.image_rel for c in cands)
    first3 = [c.record.category for c in order[:3]]
    assert first3.count("a") == 2 and first3.count("b") == 1
    again = C.proportional_order(list(reversed(cands)), np.random.default_rng(0))
    assert [c.image_rel for c in again] == [c.image_rel for c in order]  # input order irrelevant


def test_failed_run_keeps_previous_outputs(raw_tree, tmp_path, monkeypatch):
    out = tmp_path / "curated"
    C.curate(tree_config(), raw_tree, out)
    before = snapshot(out)
    calls = []

    def exploding(df, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        df.to_parquet(path)

    monkeypatch.setattr(C, "write_parquet", exploding)
    with pytest.raises(OSError, match="disk full"):
        C.curate(tree_config(seed=7), raw_tree, out)
    assert len(calls) == 2
    assert snapshot(out) == before  # old outputs intact, nothing half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curated"]  # no temp folder left


def test_missing_source_is_a_clear_error(raw_tree, tmp_path):
    cfg = tree_config(train=[CurateSource(name="visa", layout="visa", root="visa")])
    with pytest.raises(C.SourceMissingError) as err:
        C.curate(cfg, raw_tree, tmp_path / "out")
    msg = str(err.value)
    assert str(raw_tree / "visa") in msg and "readl fetch visa" in msg
    assert not (tmp_path / "out").exists()


def test_cli_curate(raw_tree, tmp_path):
    from typer.testing import CliRunner

    from readl.cli import app

    params = tmp_path / "params.yaml"
    params.write_text(
        "curate:\n  workers: 1\n"
        "  train: [{name: toy, layout: mvtec, root: toy}]\n"
        "  calib: []\n"
        "  eval: [{name: evalset, layout: mvtec, root: evalset, published_splits: [test]}]\n"
    )
    out = tmp_path / "curated"
    result = CliRunner().invoke(app, ["curate", "--params", str(params), "--raw", str(raw_tree), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "train 11, calib 0, eval 4 images; 5 rejected, 2 leaked" in result.output
    assert pd.read_parquet(out / "train.parquet").shape[0] == 11
    shutil.rmtree(out)
    params.write_text("curate:\n  train: [{name: nope, layout: mvtec, root: nope}]\n")
    result = CliRunner().invoke(app, ["curate", "--params", str(params), "--raw", str(raw_tree), "--out", str(out)])
    assert result.exit_code == 1 and "readl fetch nope" in result.output


def test_unknown_layout_or_option_fails_before_any_work(raw_tree, tmp_path):
    bad_layout = tree_config(train=[CurateSource(name="toy", layout="mvtecc", root="toy")])
    with pytest.raises(ValueError, match="unknown source layout 'mvtecc'"):
        C.curate(bad_layout, raw_tree, tmp_path / "out")
    bad_option = tree_config(
        train=[CurateSource(name="toy", layout="mvtec", root="toy", options={"categorys": ["widget"]})]
    )
    with pytest.raises(ValueError, match=r"\['categorys'\] not accepted by the 'mvtec' adapter"):
        C.curate(bad_option, raw_tree, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    only = tree_config(
        train=[CurateSource(name="toy", layout="mvtec", root="toy", options={"categories": ["gadget"]})], calib=[]
    )
    res = C.curate(only, raw_tree, tmp_path / "out")
    assert set(C.read_manifest("train", res.out_dir)["category"]) == {"gadget"}


# ------------------------------------------------------------------ reasoning references (paper Table 1)


def test_sample_manifests_carry_template_references(sample_run):
    ev = C.read_manifest("eval", sample_run.out_dir)
    assert ev["reference"].notna().all() and sample_run.summary["with_reference"]["eval"] == len(ev) > 14
    refs = dict(zip(ev["raw_image_path"], ev["reference"]))
    assert refs["mvtec_ad/grid/test/bent/000.png"] == "The grid shows a bent part."
    assert refs["mvtec_ad/grid/test/metal_contamination/000.png"] == "The grid shows metal contamination."
    assert refs["mvtec_ad/grid/test/good/000.png"] == "The grid looks normal, no defect."


def test_template_reference_sentences():
    from readl.data.references import template_reference

    assert template_reference("hazelnut", "colour", 1) == "The hazelnut shows a discoloured patch."
    assert template_reference("metal_nut", "scratch+bent", 1) == "The metal nut shows a scratch and a bent part."
    assert template_reference("bottle", "draem", 1) == "The bottle shows a patch of foreign texture."  # not "draem"
    assert template_reference("pill", "pill_type", 1) == "The pill shows a pill type defect."  # unlisted name
    assert template_reference("Woven_001", "good", 0) == "The woven looks normal, no defect."
    assert template_reference("kolektorsdd", "unknown", 1) == "The kolektorsdd shows a defect."
    assert template_reference("pill", "oil", 1) == "The pill shows an oil stain."
    with pytest.raises(ValueError, match="label"):
        template_reference("pill", "oil", 2)


def test_users_bring_their_own_references_csv(raw_tree, tmp_path):
    from readl.data.references import ReferenceFileError

    csv_path = tmp_path / "refs.csv"
    csv_path.write_text(
        "image,reference\npart/test/hole/000.png,A round hole in the part.\n"
        'part/test/good/001.png,"Clean part, nothing wrong."\n'
    )
    ev = CurateSource(
        name="evalset", layout="mvtec", root="evalset", published_splits=["test"], references=str(csv_path)
    )  # absolute: used as given
    res = C.curate(tree_config(eval=[ev], references="none"), raw_tree, tmp_path / "out")
    df = C.read_manifest("eval", res.out_dir)
    got = dict(zip(df["raw_image_path"], df["reference"]))
    assert got["evalset/part/test/hole/000.png"] == "A round hole in the part."
    assert got["evalset/part/test/good/001.png"] == "Clean part, nothing wrong."
    assert pd.isna(got["evalset/part/test/good/000.png"])  # not in the CSV: no reference, no template
    assert C.read_manifest("train", res.out_dir)["reference"].isna().all()  # references: none
    assert res.summary["with_reference"] == {"train": 0, "calib": 0, "eval": 2}
    # bad CSVs: an error naming the file, before any output is written
    for text, match in (
        ("img,text\na.png,b\n", r"lacks \['image', 'reference'\]"),
        ("image,reference\npart/test/hole/000.png,\n", "line 2: empty reference"),
        ("image,reference\na.png,x\na.png,y\n", "line 3: image 'a.png' listed twice"),
        ("image,reference\nhole/000.png,x\n", "none of its 1 image.* 'part/test/"),
        (None, "references file not found"),
    ):
        bad = tmp_path / "bad.csv"
        bad.unlink(missing_ok=True)
        if text is not None:
            bad.write_text(text)
        cfg = tree_config(eval=[ev.model_copy(update={"references": str(bad)})])
        with pytest.raises(ReferenceFileError, match=match) as err:
            C.curate(cfg, raw_tree, tmp_path / "out2")
        assert str(bad) in str(err.value)
        assert not (tmp_path / "out2").exists()


def test_source_with_no_images_is_an_error_naming_folder_and_layout(tmp_path):
    raw = tmp_path / "raw"
    for split in ("train/good", "test/good"):  # an MVTec 3D-AD tree read as MVTec LOCO
        save(raw / "loco" / "bagel" / split / "rgb" / "000.png", texture(1))
    save(raw / "evalset" / "part" / "test/good/000.png", texture(2))
    cfg = tree_config(
        train=[CurateSource(name="loco", layout="mvtec_loco", root="loco")],
        calib=[],
        eval=[CurateSource(name="evalset", layout="mvtec", root="evalset", normal=1, anomalous=0)],
    )
    with pytest.raises(C.LayoutError) as err:
        C.curate(cfg, raw, tmp_path / "out")
    msg = str(err.value)
    assert "no images" in msg and str(raw / "loco") in msg
    assert "<category>/ground_truth/<defect>/000/000.png" in msg  # the layout the adapter reads
    assert not (tmp_path / "out").exists()
    only_val = cfg.model_copy(
        update={
            "train": [CurateSource(name="evalset", layout="mvtec", root="evalset", published_splits=["validation"])]
        }
    )
    with pytest.raises(C.LayoutError, match=r"published split\(s\) \['validation'\].*test"):
        C.curate(only_val, raw, tmp_path / "out")


def test_images_masks_image_without_mask_is_rejected_and_the_rest_curated(tmp_path):
    raw = tmp_path / "raw"
    base = raw / "plates"
    for name in ("a", "b", "c"):
        save(base / "images" / f"{name}.png", texture(ord(name)))
    save(base / "masks" / "a.png", mask())
    save(base / "masks" / "c.png", np.zeros((80, 96), dtype=np.uint8))
    cfg = CurateConfig(
        workers=1, train=[CurateSource(name="plates", layout="images_masks", root="plates")], calib=[], eval=[]
    )
    res = C.curate(cfg, raw, tmp_path / "out")
    rows = read_csv(res.out_dir / "rejected.csv")
    assert [(r["image_path"], r["reason"].split(":")[0]) for r in rows] == [("plates/images/b.png", "missing_mask")]
    train = C.read_manifest("train", res.out_dir)
    assert sorted(train["raw_image_path"]) == ["plates/images/a.png", "plates/images/c.png"]
    assert sorted(train["label"]) == [0, 1]


def test_a_mask_that_contradicts_its_anomalous_label_is_rejected_and_counted(tmp_path):
    """An all-black mask on an anomalous image (its pixels would count as normal) and an all-white one (an inverted
    or placeholder mask) are rejected with their reason, in both splits, and counted in summary.json."""
    raw = tmp_path / "raw"
    for split in ("tr", "ev"):
        root = raw / split / "part"
        save(root / "test" / "good" / "000.png", texture(1))
        for name, m in (
            ("ok", mask()),
            ("black", np.zeros((80, 96), np.uint8)),
            ("white", np.full((80, 96), 255, np.uint8)),
        ):
            save(root / "test" / "crack" / f"{name}.png", texture(len(name) + (split == "ev")))
            save(root / "ground_truth" / "crack" / f"{name}_mask.png", m)
    cfg = CurateConfig(
        workers=1,
        train=[CurateSource(name="tr", layout="mvtec", root="tr")],
        calib=[],
        eval=[CurateSource(name="ev", layout="mvtec", root="ev")],
    )
    res = C.curate(cfg, raw, tmp_path / "out")
    reasons = sorted((r["image_path"], r["reason"].split(":")[0]) for r in read_csv(res.out_dir / "rejected.csv"))
    assert reasons == [
        ("ev/part/test/crack/black.png", "empty_mask"),
        ("ev/part/test/crack/white.png", "full_mask"),
        ("tr/part/test/crack/black.png", "empty_mask"),
        ("tr/part/test/crack/white.png", "full_mask"),
    ]
    assert res.summary["rejected"]["by_reason"] == {"empty_mask": 2, "full_mask": 2}
    for split in ("train", "eval"):  # the anomalous image with a real mask is kept
        assert list(C.read_manifest(split, res.out_dir).query("label == 1")["raw_image_path"].str[3:]) == [
            "part/test/crack/ok.png"
        ]


@pytest.fixture(scope="module")
def hazelnut_leak_tree(sample_dir, tmp_path_factory) -> Path:
    """eval: hazelnut_toy test/good (6 real photos); train: its 28 train/good photos (distinct
    photos of the same object) + copies of two eval photos: exact, JPEG q80, half size."""
    raw = tmp_path_factory.mktemp("leakraw")
    src = sample_dir / "hazelnut_toy" / "hazelnut"
    for split in ("train", "test"):
        dst = raw / ("photos" if split == "train" else "evalset") / "hazelnut" / split / "good"
        shutil.copytree(src / split / "good", dst)
    copies = raw / "photos" / "hazelnut" / "train" / "good"
    eval_files = sorted((raw / "evalset" / "hazelnut" / "test" / "good").iterdir())
    first, second = (Image.open(p).convert("RGB") for p in eval_files[:2])
    first.save(copies / "copy_exact.png")
    first.save(copies / "copy_q80.jpg", quality=80)
    second.resize((second.width // 2, second.height // 2), Image.Resampling.BICUBIC).save(copies / "copy_half.png")
    return raw


@pytest.mark.parametrize("max_distance", [3, 12])
def test_leakage_guard_keeps_distinct_photos_and_catches_copies(hazelnut_leak_tree, tmp_path, max_distance):
    cfg = CurateConfig(
        workers=1,
        leakage_max_distance=max_distance,
        train=[CurateSource(name="photos", layout="mvtec", root="photos")],
        calib=[],
        eval=[CurateSource(name="evalset", layout="mvtec", root="evalset")],
    )
    res = C.curate(cfg, hazelnut_leak_tree, tmp_path / "out")
    rows = read_csv(res.out_dir / "leakage.csv")
    assert sorted(Path(r["image_path"]).stem for r in rows) == ["copy_exact", "copy_half", "copy_q80"]
    for r in rows:
        assert float(r["ssim"]) >= cfg.leakage_min_ssim and int(r["distance"]) <= max_distance
    train = C.read_manifest("train", res.out_dir)
    assert len(train) == 28  # every distinct photo of the object is kept


def test_image_below_one_merged_patch_is_rejected_with_the_reason(tmp_path):
    raw = tmp_path / "raw"
    for i in range(2):
        save(raw / "toy" / "widget" / f"train/good/g{i}.png", texture(i))
    save(raw / "toy" / "widget" / "train/good/dot.png", np.zeros((1, 1, 3), dtype=np.uint8))
    cfg = CurateConfig(workers=1, train=[CurateSource(name="toy", layout="mvtec", root="toy")], calib=[], eval=[])
    res = C.curate(cfg, raw, tmp_path / "out")
    rows = read_csv(res.out_dir / "rejected.csv")
    assert [r["image_path"] for r in rows] == ["toy/widget/train/good/dot.png"]
    assert rows[0]["reason"].startswith("bad_image: image is 1x1 px, smaller than the 28x28")
    assert res.counts["train"] == 2


@pytest.mark.parametrize("out", ["data", "data/raw", "data/raw/curated"])
def test_curate_refuses_an_out_that_holds_or_lies_in_the_raw_data(out, tmp_path, monkeypatch):
    """Issue (data lost): `readl curate --out data` swapped `data/` aside and deleted it, raw data included, exit 0."""
    from typer.testing import CliRunner

    from readl.cli import app

    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "data" / "raw" / "mysource"
    raw.mkdir(parents=True)
    (raw / "fetched.png").write_bytes(b"not yet dvc-added")
    result = CliRunner().invoke(app, ["curate", "--out", out])
    assert result.exit_code == 2 and "raw data" in result.output, result.output
    assert (raw / "fetched.png").read_bytes() == b"not yet dvc-added"
