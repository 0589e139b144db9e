"""Source adapters: bundled real samples (data/raw) and constructed trees for the other layouts."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from readl.data import images as I
from readl.data import masks as M
from readl.data.sources import ADAPTERS, LayoutError, Record, get_adapter, read_source, records_to_frame
from readl.data.sources.real_iad import parse_real_iad_json
from readl.data.sources.visa import read_split_csv

SAMPLE = Path(__file__).parents[3] / "data/raw"


# ------------------------------------------------------------------ helpers


def png(path: Path, value: int = 0, size=(8, 6), box=None, mode="L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0]), value, dtype=np.uint8)
    if box is not None:
        x0, y0, x1, y1 = box
        arr[y0:y1, x0:x1] = 255
    img = Image.fromarray(arr)
    if mode != "L":
        img = img.convert(mode)
    img.save(path)
    return path


BOX = (0, 0, 2, 2)  # a defect region: a non-empty mask


def _tree(root: Path, files) -> Path:
    """Write ``files`` under ``root``: each a path (a blank image) or ``(path, box)`` (a mask with that box)."""
    for f in files:
        path, box = (f, None) if isinstance(f, str) else f
        png(root / path, box=box)
    return root


def manifest_rows(folder: str) -> list[dict]:
    with open(SAMPLE / "MANIFEST.csv", newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["image"].startswith(folder + "/")]


# ------------------------------------------------------------------ registry and errors


def test_registry_names():
    for name in (
        "mvtec",
        "visa",
        "mvtec_loco",
        "mvtec_3d",
        "mvtec_ad2",
        "real_iad",
        "goodsad",
        "vision",
        "pr_real",
        "bsdata",
        "sdd",
        "folder",
        "images_masks",
        "btad",
        "ksdd2",
        "mpdd",
        "wfdd",
        "dtd",
    ):
        assert callable(ADAPTERS[name])


def test_unknown_layout_lists_known_ones():
    with pytest.raises(ValueError, match="unknown source layout 'mvtecc'") as e:
        get_adapter("mvtecc")
    assert "mvtec_loco" in str(e.value) and "images_masks" in str(e.value)
    with pytest.raises(ValueError):
        ADAPTERS["nope"]


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_missing_root_says_how_to_get_data(tmp_path, name):
    missing = tmp_path / "not_here"
    with pytest.raises(FileNotFoundError) as e:
        read_source(name, missing)
    msg = str(e.value)
    assert str(missing) in msg and "readl fetch" in msg and "download" in msg


def test_record_validation():
    with pytest.raises(ValueError, match="label"):
        Record("s", "c", "test", 2, "x", Path("a.png"))
    with pytest.raises(ValueError, match="good"):
        Record("s", "c", "test", 0, "scratch", Path("a.png"))
    with pytest.raises(ValueError, match="good"):
        Record("s", "c", "test", 1, "good", Path("a.png"), Path("m.png"))
    with pytest.raises(ValueError, match="mask_ref"):
        Record("s", "c", "test", 1, "x", Path("a.png"), Path("a.json"), mask_kind="coco")
    r = Record("s", "c", "test", 1, "x", "a.png", "m.png")
    assert r.mask_kind == "file" and isinstance(r.image_path, Path)
    assert Record("s", "c", "train", 0, "good", "a.png").mask_kind == "none"


# ------------------------------------------------------------------ real samples


def test_mvtec_bottle_normals_real_sample():
    recs = list(read_source("mvtec", SAMPLE / "mvtec_ad", categories=["bottle"]))
    assert Counter((r.split, r.label) for r in recs) == {("train", 0): 40, ("test", 0): 20}
    assert {r.category for r in recs} == {"bottle"} and all(r.mask_path is None for r in recs)
    assert {r.image_path.relative_to(SAMPLE).as_posix() for r in recs} == {
        r["image"] for r in manifest_rows("mvtec_ad/bottle")
    }
    assert {r.category for r in read_source("mvtec", SAMPLE / "mvtec_ad")} == {"bottle", "grid"}


def test_mvtec_grid_real_sample():
    recs = list(read_source("mvtec", SAMPLE / "mvtec_ad", categories=["grid"]))
    assert len(recs) == 24
    anomalous = [r for r in recs if r.label == 1]
    assert len(anomalous) == 11
    assert all(
        r.mask_path is not None
        and r.mask_path.is_file()
        and r.mask_path.name == f"{r.image_path.stem}_mask.png"
        and r.mask_path.parent.name == r.defect_type
        for r in anomalous
    )
    assert Counter(r.defect_type for r in anomalous) == {
        "bent": 3,
        "broken": 2,
        "glue": 2,
        "metal_contamination": 2,
        "thread": 2,
    }
    assert Counter((r.split, r.label) for r in recs) == {("train", 0): 10, ("test", 0): 3, ("test", 1): 11}
    assert {r.category for r in recs} == {"grid"} and {r.source for r in recs} == {"mvtec_ad"}
    # the same when pointed at the category folder itself
    assert len(list(read_source("mvtec", SAMPLE / "mvtec_ad/grid"))) == 24
    # agrees with the bundled MANIFEST.csv
    truth = {r["image"]: r for r in manifest_rows("mvtec_ad/grid")}
    for r in recs:
        row = truth[r.image_path.relative_to(SAMPLE).as_posix()]
        assert (row["label"] == "anomalous") == bool(r.label)
        assert (row["mask"] or None) == (r.mask_path and r.mask_path.relative_to(SAMPLE).as_posix())


def test_hazelnut_toy_masks_without_suffix():
    recs = list(read_source("mvtec", SAMPLE / "hazelnut_toy", source="hazelnut_toy"))
    assert len(recs) == 51
    anomalous = [r for r in recs if r.label]
    assert len(anomalous) == 17 and {r.defect_type for r in anomalous} == {"colour"}
    assert all(r.mask_path.name == r.image_path.stem + ".png" for r in anomalous)
    assert Counter((r.split, r.label) for r in recs) == {("train", 0): 28, ("test", 0): 6, ("test", 1): 17}
    img, mask = M.load_pair(anomalous[0].image_path, anomalous[0].mask_path, (64, 64))
    assert mask.any()


def test_mpdd_images_masks_label_from_mask():
    recs = list(read_source("images_masks", SAMPLE / "mpdd_derived", source="mpdd_derived"))
    assert len(recs) == 134
    # the split is the folder above images/ + masks/ (the third party's re-split of MPDD)
    assert Counter((r.split, r.label) for r in recs) == {
        ("test", 1): 12,
        ("test", 0): 8,
        ("train", 1): 53,
        ("train", 0): 41,
        ("val", 1): 7,
        ("val", 0): 13,
    }
    assert {r.category for r in recs} == {"metal_plate"}
    assert all(r.mask_path is not None for r in recs)
    assert {r.defect_type for r in recs if r.label} == {"unknown"}
    truth = {r["image"]: r["label"] for r in manifest_rows("mpdd_derived")}
    assert len(truth) == len(recs)
    for r in recs:
        assert (truth[r.image_path.relative_to(SAMPLE).as_posix()] == "anomalous") == bool(r.label)


def test_visa_split_csv_real():
    recs = list(read_source("visa", SAMPLE / "visa_metadata_only"))
    assert len(recs) == 10821
    assert Counter((r.split, r.label) for r in recs) == {("train", 0): 8659, ("test", 0): 962, ("test", 1): 1200}
    assert len({r.category for r in recs}) == 12
    assert all((r.mask_path is not None) == bool(r.label) for r in recs)
    assert all(r.image_path.is_relative_to(SAMPLE / "visa_metadata_only") for r in recs)
    first_anomaly = next(r for r in recs if r.label)
    assert first_anomaly.image_path.as_posix().endswith("candle/Data/Images/Anomaly/000.JPG")
    assert first_anomaly.mask_path.as_posix().endswith("candle/Data/Masks/Anomaly/000.png")
    assert first_anomaly.defect_type == "unknown"
    pcb1 = list(read_source("visa", SAMPLE / "visa_metadata_only", categories=["pcb1"]))
    assert 0 < len(pcb1) < len(recs) and {r.category for r in pcb1} == {"pcb1"}
    frame = records_to_frame(recs)
    assert len(frame) == 10821 and frame["label"].dtype == "int64"


def test_visa_csv_is_strict(tmp_path):
    bad = tmp_path / "split_csv" / "1cls.csv"
    bad.parent.mkdir()
    bad.write_text("object,split,label,image\ncandle,train,normal,a.JPG\n")
    with pytest.raises(LayoutError, match="header"):
        read_split_csv(bad)
    bad.write_text("object,split,label,image,mask\ncandle,train,normal,a.JPG,\ncandle,test,defect,b.JPG,b.png\n")
    with pytest.raises(LayoutError, match=r"1cls.csv:3: label 'defect'"):
        list(read_source("visa", tmp_path))


def test_visa_defect_names_from_image_anno(tmp_path):
    (tmp_path / "split_csv").mkdir()
    (tmp_path / "split_csv/1cls.csv").write_text(
        "object,split,label,image,mask\n"
        "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png\n"
        "candle,test,anomaly,candle/Data/Images/Anomaly/001.JPG,candle/Data/Masks/Anomaly/001.png\n"
    )
    (tmp_path / "candle").mkdir()
    (tmp_path / "candle/image_anno.csv").write_text(
        'image,label,mask\ncandle/Data/Images/Anomaly/000.JPG,"chunk of wax missing",x\n'
    )
    recs = list(read_source("visa", tmp_path))
    assert [r.defect_type for r in recs] == ["chunk of wax missing", "unknown"]


# ------------------------------------------------------------------ constructed trees


def test_mvtec_missing_mask_and_nested_layout(tmp_path):
    root = tmp_path / "wfdd"
    png(root / "grey_cloth/train/good/000.png")
    png(root / "grey_cloth/test/hole/000.png")
    recs = list(read_source("wfdd", root))
    assert recs[0].source == "wfdd" and recs[0].label == 1 and recs[0].mask_path is None
    png(root / "grey_cloth/test/hole2/rgb/000.png")  # MVTec 3D style nesting
    with pytest.raises(LayoutError, match="holds folders but no images"):
        list(read_source("wfdd", root))
    with pytest.raises(LayoutError, match="no category folder"):
        read_source("mvtec", tmp_path / "wfdd" / "grey_cloth" / "test")


def test_mvtec_loco_mask_folders(tmp_path):
    cat = tmp_path / "loco/juice_bottle"
    _tree(
        cat,
        [
            "train/good/000.png",
            "validation/good/000.png",
            "test/good/000.png",
            "test/logical_anomalies/000.png",
            "test/structural_anomalies/003.png",
            ("ground_truth/logical_anomalies/000/000.png", BOX),
            ("ground_truth/logical_anomalies/000/001.png", (5, 3, 8, 6)),
        ],
    )
    recs = list(read_source("mvtec_loco", tmp_path / "loco"))
    assert Counter(r.split for r in recs) == {"test": 3, "train": 1, "validation": 1}
    logical = next(r for r in recs if r.defect_type == "logical_anomalies")
    assert logical.mask_kind == "dir_union" and logical.mask_path.is_dir()
    assert M.load_mask(logical.mask_path, None).sum() == 4 + 9
    structural = next(r for r in recs if r.defect_type == "structural_anomalies")
    assert structural.mask_path is None and structural.label == 1


def _real_iad_tree(root: Path, sample_extra=None, top_extra=None) -> Path:
    cat = root / "realiad_1024" / "audiojack"
    png(cat / "OK/S0001/audiojack_0001_OK_C1_20231020.jpg")
    png(cat / "NG/AK/S0049/audiojack_0049_NG_AK_C1_20231021.jpg")
    png(cat / "NG/AK/S0049/audiojack_0049_NG_AK_C1_20231021.png", box=(0, 0, 3, 3))
    png(cat / "NG/AK/S0049/audiojack_0049_NG_AK_C2_20231021.jpg")
    sample = {
        "category": "audiojack",
        "anomaly_class": "OK",
        "image_path": "OK/S0001/audiojack_0001_OK_C1_20231020.jpg",
        "mask_path": None,
    }
    data = {
        "meta": {"prefix": "audiojack", "normal_class": "OK"},
        "train": [dict(sample, **(sample_extra or {}))],
        "test": [
            {
                "category": "audiojack",
                "anomaly_class": "AK",
                "image_path": "NG/AK/S0049/audiojack_0049_NG_AK_C1_20231021.jpg",
                "mask_path": "NG/AK/S0049/audiojack_0049_NG_AK_C1_20231021.png",
            },
            {
                "category": "audiojack",
                "anomaly_class": "AK",  # defect not visible in this view
                "image_path": "NG/AK/S0049/audiojack_0049_NG_AK_C2_20231021.jpg",
                "mask_path": None,
            },
        ],
        **(top_extra or {}),
    }
    js = root / "realiad_jsons" / "realiad_jsons" / "audiojack.json"  # as the zip extracts
    js.parent.mkdir(parents=True, exist_ok=True)
    js.write_text(json.dumps(data))
    return js


def test_real_iad_json(tmp_path):
    _real_iad_tree(tmp_path)
    recs = list(read_source("real_iad", tmp_path))
    assert [(r.split, r.label, r.defect_type) for r in recs] == [
        ("train", 0, "good"),
        ("test", 1, "AK"),
        ("test", 0, "good"),
    ]
    assert all(r.image_path.is_file() for r in recs)
    assert recs[1].mask_path.is_file() and recs[2].mask_path is None
    assert recs[0].image_path.parent.parent.parent.name == "audiojack"
    assert len(list(read_source("real_iad", tmp_path, categories=["audiojack"]))) == 3
    with pytest.raises(FileNotFoundError, match="realiad_jsons_sv/audiojack.json"):
        read_source("real_iad", tmp_path, json_set="realiad_jsons_sv", categories=["audiojack"])


@pytest.mark.parametrize(
    "sample_extra,top_extra,match",
    [
        ({"view": "C1"}, None, r"train\[0\] has keys .*view"),
        (None, {"val": []}, "unexpected \\['val'\\]"),
    ],
)
def test_real_iad_strict_keys(tmp_path, sample_extra, top_extra, match):
    js = _real_iad_tree(tmp_path, sample_extra, top_extra)
    with pytest.raises(LayoutError, match=match) as e:
        parse_real_iad_json(js, tmp_path / "realiad_1024")
    assert "audiojack.json" in str(e.value)


def test_vision_coco(tmp_path):
    split = tmp_path / "VISION" / "Cable" / "train"
    png(split / "a.jpg", size=(16, 12))
    png(split / "b.jpg", size=(16, 12))
    coco = {
        "images": [
            {"id": 0, "file_name": "a.jpg", "width": 16, "height": 12},
            {"id": 1, "file_name": "b.jpg", "width": 16, "height": 12},
        ],
        "annotations": [
            {
                "id": 5,
                "image_id": 1,
                "category_id": 2,
                "bbox": [2, 2, 4, 4],
                "segmentation": [[2, 2, 6, 2, 6, 6, 2, 6]],
            },
            {
                "id": 6,
                "image_id": 1,
                "category_id": 1,
                "bbox": [8, 8, 2, 2],
                "segmentation": [[8, 8, 10, 8, 10, 10, 8, 10]],
            },
        ],
        "categories": [{"id": 0, "name": "cable"}, {"id": 1, "name": "thunderbolt"}, {"id": 2, "name": "break"}],
    }
    (split / "_annotations.coco.json").write_text(json.dumps(coco))
    png(tmp_path / "VISION" / "Cable" / "inference" / "c.jpg")  # unlabelled: skipped
    recs = list(read_source("vision", tmp_path / "VISION"))
    assert [(r.category, r.split, r.label, r.defect_type) for r in recs] == [
        ("Cable", "train", 0, "good"),
        ("Cable", "train", 1, "break+thunderbolt"),
    ]
    ng = recs[1]
    assert ng.mask_kind == "coco" and ng.mask_ref == "1"
    _, mask = M.load_pair(ng.image_path, ng.mask_path, None, coco_image_id=ng.mask_ref)
    assert mask.shape == (12, 16) and mask[3, 3] and mask[9, 9] and not mask[0, 0]
    coco["annotations"][0]["image_id"] = 99
    (split / "_annotations.coco.json").write_text(json.dumps(coco))
    with pytest.raises(LayoutError, match="unknown image id 99"):
        list(read_source("vision", tmp_path / "VISION"))


def test_bsdata_labelme(tmp_path):
    root = tmp_path / "BSData"
    png(root / "data/01_a_crop_2.jpg", size=(20, 10))
    png(root / "data/01_b_crop_2.jpg", size=(20, 10))
    lm = {
        "version": "4.5.6",
        "flags": {},
        "imagePath": "01_b_crop_2.jpg",
        "imageData": None,
        "imageHeight": 10,
        "imageWidth": 20,
        "shapes": [
            {
                "label": "Pitting",
                "shape_type": "polygon",
                "group_id": None,
                "flags": {},
                "points": [[2, 2], [8, 2], [8, 6], [2, 6]],
            }
        ],
    }
    (root / "label").mkdir()
    (root / "label/01_b_crop_2.json").write_text(json.dumps(lm))
    recs = list(read_source("bsdata", root))
    assert [(r.split, r.label, r.defect_type, r.mask_kind) for r in recs] == [
        ("all", 0, "good", "none"),
        ("all", 1, "pitting", "labelme"),
    ]
    _, mask = M.load_pair(recs[1].image_path, recs[1].mask_path, None)
    assert mask[4, 5] and not mask[9, 19]
    (root / "label/01_zzz.json").write_text(json.dumps(lm))
    with pytest.raises(LayoutError, match="without an image"):
        read_source("bsdata", root)


def test_kolektorsdd_label_from_mask(tmp_path):
    root = tmp_path / "KolektorSDD"
    for kos, defect in (("kos01", False), ("kos02", True)):
        for n in range(2):
            png(root / kos / f"Part{n}.jpg")
            png(root / kos / f"Part{n}_label.bmp", box=(1, 1, 4, 4) if defect and n == 1 else None)
    png(root / "kos10/Part10.jpg")
    png(root / "kos10/Part10_label.bmp")
    png(root / "kos10/Part2.jpg")
    png(root / "kos10/Part2_label.bmp")
    recs = list(read_source("sdd", root))
    assert [(r.image_path.parent.name, r.image_path.stem, r.label) for r in recs] == [
        ("kos01", "Part0", 0),
        ("kos01", "Part1", 0),
        ("kos02", "Part0", 0),
        ("kos02", "Part1", 1),
        ("kos10", "Part2", 0),
        ("kos10", "Part10", 0),
    ]
    assert {r.split for r in recs} == {"all"} and all(r.mask_path for r in recs)
    (root / "kos02/Part1_label.bmp").unlink()
    with pytest.raises(LayoutError, match="Part1_label.bmp"):
        read_source("sdd", root)


def test_anomalib_folder_format(tmp_path):
    root = tmp_path / "custom"
    _tree(
        root,
        [
            "good/a.png",
            "good/b.png",
            "crack/c.png",
            "crack/d.png",
            "good_test/e.png",
            ("mask/c_mask.png", BOX),
            ("mask/d.png", BOX),
        ],
    )
    recs = list(
        read_source(
            "folder", root, normal_dir="good", abnormal_dir=["crack"], normal_test_dir="good_test", mask_dir="mask"
        )
    )
    assert [(r.split, r.label, r.defect_type, r.mask_path and r.mask_path.name) for r in recs] == [
        ("train", 0, "good", None),
        ("train", 0, "good", None),
        ("test", 1, "crack", "c_mask.png"),
        ("test", 1, "crack", "d.png"),
        ("test", 0, "good", None),
    ]
    assert {r.category for r in recs} == {"custom"}
    with pytest.raises(FileNotFoundError, match="abnormal_dir"):
        read_source("folder", root, abnormal_dir="nope")


def test_images_masks_errors_and_inference(tmp_path):
    root = tmp_path / "flat"
    png(root / "images/x.png")
    png(root / "masks/x.png", box=(0, 0, 1, 1))
    recs = list(read_source("images_masks", root))
    assert [(r.category, r.split, r.label) for r in recs] == [("flat", "all", 1)]
    png(root / "images/y.png")
    with pytest.raises(LayoutError, match="y.png has no mask"):
        read_source("images_masks", root)
    with pytest.raises(LayoutError, match="no images/ folder"):
        read_source("images_masks", tmp_path / "flat" / "masks")


def test_corrupt_mask_while_labelling_is_a_bad_image_error(tmp_path):
    root = tmp_path / "flat"
    png(root / "images/x.png")
    (root / "masks").mkdir()
    (root / "masks/x.png").write_bytes(b"")
    it = read_source("images_masks", root)
    with pytest.raises(I.BadImageError, match="zero-byte"):
        next(it)


def test_unreadable_mask_is_reported_and_the_rest_still_listed(tmp_path):
    from readl.data.images import BadImageError
    from readl.data.sources.base import report_bad_masks

    root = tmp_path / "plates"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, fill in enumerate([0, 255, 0]):
        Image.new("RGB", (8, 8)).save(root / "images" / f"{i}.png")
        Image.new("L", (8, 8), fill).save(root / "masks" / f"{i}.png")
    (root / "masks" / "1.png").write_bytes(b"")  # zero-byte mask: label unknown
    with pytest.raises(BadImageError):
        list(read_source("images_masks", root))
    seen = []
    with report_bad_masks(lambda image, exc: seen.append((image.name, exc.path.name))):
        recs = list(read_source("images_masks", root))
    assert [r.image_path.name for r in recs] == ["0.png", "2.png"]
    assert seen == [("1.png", "1.png")]


def _defect_tree(root: Path, mask_layout: str) -> dict[str, int]:
    """cut/ and hole/ reuse the stems 000, 001; every mask has a distinct box width (its id)."""
    widths = {}
    for d, stems in (("cut", ("000", "001")), ("hole", ("000", "001", "002"))):
        for stem in stems:
            png(root / d / f"{stem}.png")
            w = len(widths) + 1
            mask = (
                root / f"mask_{d}" / f"{stem}_mask.png"
                if mask_layout == "parallel"
                else root / "masks" / d / f"{stem}.png"
            )
            png(mask, box=(0, 0, w, 1))
            widths[f"{d}/{stem}"] = w
    return widths


@pytest.mark.parametrize("mask_layout", ["parallel", "nested"])
def test_folder_masks_paired_within_their_own_folder(tmp_path, mask_layout):
    root = tmp_path / "custom"
    png(root / "good/a.png")
    widths = _defect_tree(root, mask_layout)
    mask_dir = ["mask_cut", "mask_hole"] if mask_layout == "parallel" else "masks"
    recs = [
        r
        for r in read_source("folder", root, normal_dir="good", abnormal_dir=["cut", "hole"], mask_dir=mask_dir)
        if r.label
    ]
    assert len(recs) == 5 and all(r.mask_path is not None for r in recs)
    for r in recs:  # the mask's box width identifies the mask file it came from
        got = int(M.load_mask(r.mask_path, None).sum())
        assert got == widths[f"{r.defect_type}/{r.image_path.stem}"], (r.image_path, r.mask_path)


def test_folder_ambiguous_mask_pairing_names_both_files(tmp_path):
    root = tmp_path / "custom"
    png(root / "good/a.png")
    _defect_tree(root, "parallel")
    with pytest.raises(LayoutError, match=r"(?s)cut/000\.png.*hole/000\.png"):
        list(read_source("folder", root, abnormal_dir=["cut", "hole"], mask_dir="mask_cut"))
    png(root / "mask_hole" / "000.png")  # a second mask for hole/000 in the other folder
    with pytest.raises(LayoutError, match=r"(?s)mask_cut/000_mask\.png.*mask_hole/000"):
        list(read_source("folder", root, abnormal_dir=["hole"], mask_dir=["mask_cut", "mask_hole"]))


def test_mvtec_3d_rgb_images_and_gt_masks(tmp_path):
    root = tmp_path / "mvtec_3d"
    cat = root / "bagel"
    for split in ("train", "validation"):
        png(cat / split / "good/rgb/000.png")
        (cat / split / "good/xyz").mkdir(parents=True)
        (cat / split / "good/xyz/000.tiff").write_bytes(b"II*\x00")  # point cloud: ignored
    png(cat / "test/good/rgb/000.png")
    png(cat / "test/good/gt/000.png")
    png(cat / "test/crack/rgb/000.png")
    png(cat / "test/crack/rgb/001.png")
    png(cat / "test/crack/gt/000.png", value=255)
    (cat / "calibration").mkdir()  # not a split
    recs = list(read_source("mvtec_3d", root))
    assert [
        (
            r.split,
            r.defect_type,
            r.image_path.relative_to(cat).as_posix(),
            r.mask_path and r.mask_path.relative_to(cat).as_posix(),
        )
        for r in recs
    ] == [
        ("train", "good", "train/good/rgb/000.png", None),
        ("validation", "good", "validation/good/rgb/000.png", None),
        ("test", "crack", "test/crack/rgb/000.png", "test/crack/gt/000.png"),
        ("test", "crack", "test/crack/rgb/001.png", None),
        ("test", "good", "test/good/rgb/000.png", None),
    ]
    assert {r.source for r in recs} == {"mvtec_3d"} and {r.category for r in recs} == {"bagel"}
    mvtec_ad = tmp_path / "ad" / "grid"
    png(mvtec_ad / "train/good/000.png")
    with pytest.raises(LayoutError, match=r"has no rgb/ folder.*'mvtec'"):
        list(read_source("mvtec_3d", mvtec_ad))


# layout -> (the tree's top folder, its files: a path, or (mask path, box); the records read, in order:
# (category, split, label, defect_type, mask file name))
TREES = {
    "btad": (
        "BTAD",
        [
            "01/train/ok/0000.bmp",
            "01/test/ok/0001.bmp",
            "01/test/ko/0002.bmp",
            ("01/ground_truth/ko/0002.png", BOX),
            "03/test/ko/0005.bmp",
            ("03/ground_truth/ko/0005.bmp", BOX),
        ],
        [
            ("01", "test", 1, "ko", "0002.png"),
            ("01", "test", 0, "good", None),
            ("01", "train", 0, "good", None),
            ("03", "test", 1, "ko", "0005.bmp"),
        ],
    ),
    "goodsad": (
        "GoodsAD",
        [
            "drink_can/train/good/001001.jpg",
            "drink_can/test/good/001002.jpg",
            "drink_can/test/damaged/001003.jpg",
            ("drink_can/ground_truth/damaged/001003.png", BOX),
        ],
        [
            ("drink_can", "test", 1, "damaged", "001003.png"),
            ("drink_can", "test", 0, "good", None),
            ("drink_can", "train", 0, "good", None),
        ],
    ),
    "sdd": (
        "KSDD2",
        [  # KolektorSDD2, auto-detected by the sdd adapter: the *_GT.png mask gives the label
            "train/10000.png",
            "train/10000_GT.png",
            "test/20000.png",
            ("test/20000_GT.png", BOX),
        ],
        [("kolektorsdd2", "train", 0, "good", "10000_GT.png"), ("kolektorsdd2", "test", 1, "unknown", "20000_GT.png")],
    ),
    "mvtec_ad2": (
        "mvtec_ad2",
        [  # test_private*: no labels, never a Record
            "can/train/good/000_regular.png",
            "can/validation/good/000_regular.png",
            "can/test_public/good/000_regular.png",
            "can/test_public/bad/001_regular.png",
            ("can/test_public/ground_truth/bad/001_regular_mask.png", BOX),
            "can/test_private/000_regular.png",
            "can/test_private_mixed/000_overexposed.png",
        ],
        [
            ("can", "train", 0, "good", None),
            ("can", "validation", 0, "good", None),
            ("can", "test_public", 1, "bad", "001_regular_mask.png"),
            ("can", "test_public", 0, "good", None),
        ],
    ),
}


@pytest.mark.parametrize("layout", sorted(TREES))
def test_constructed_tree_records(tmp_path, layout):
    top, files, expected = TREES[layout]
    recs = list(read_source(layout, _tree(tmp_path / top, files)))
    assert [(r.category, r.split, r.label, r.defect_type, r.mask_path and r.mask_path.name) for r in recs] == expected
    assert all(r.image_path.is_file() and (r.mask_path is None or r.mask_path.is_file()) for r in recs)
    assert {r.source for r in recs} == {layout}


def test_pr_real_reads_the_goodsad_layout(tmp_path):
    top, files, expected = TREES["goodsad"]
    recs = list(read_source("pr_real", _tree(tmp_path / top, files)))
    assert {r.source for r in recs} == {"pr_real"} and len(recs) == len(expected)


def test_mvtec_ad2_unlabelled_listing_and_layout_error(tmp_path):
    from readl.data.sources.mvtec_ad2 import mvtec_ad2_unlabelled

    top, files, _ = TREES["mvtec_ad2"]
    root = _tree(tmp_path / top, files)
    assert [p.relative_to(root / "can").as_posix() for p in mvtec_ad2_unlabelled(root)] == [
        "test_private/000_regular.png",
        "test_private_mixed/000_overexposed.png",
    ]
    with pytest.raises(LayoutError, match="no category folder with train/ or test_public/"):
        list(read_source("mvtec_ad2", root / "can" / "test_public"))


def test_mvtec_loco_skips_dot_folders(tmp_path):
    """A hidden folder (an editor's or a notebook's cache) is neither a split nor a defect type."""
    cat = tmp_path / "loco/juice_bottle"
    _tree(cat, ["train/good/000.png", "test/good/000.png", "test/.ipynb_checkpoints/000.png", ".cache/good/000.png"])
    recs = list(read_source("mvtec_loco", tmp_path / "loco"))
    assert [(r.split, r.defect_type) for r in recs] == [("test", "good"), ("train", "good")]
