"""`readl predict` end to end on bundled real images with the tiny model (CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from readl.cli import app
from readl.evaluation.decision import decide, image_score, read_decision
from readl.model.prompting import parse_completion


def test_predict_writes_json_and_overlay_and_reports_bad_files(tiny_dir, sample_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: built-in defaults (model.base = tiny)
    good = [sample_dir / "mvtec_ad/grid/test/broken/000.png", sample_dir / "hazelnut_toy/hazelnut/train/good/00.jpg"]
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not an image")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((sample_dir / "hazelnut_toy/hazelnut/test/good/04.jpg").read_bytes()[:3000])
    dot = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (255, 0, 0)).save(dot)  # below one merged 28x28 patch
    args = [
        "predict",
        str(good[0]),
        str(not_image),
        str(truncated),
        str(dot),
        str(good[1]),
        "--out",
        "out",
        "--max-new-tokens",
        "8",
        "--no-annotate",
    ]  # the bare overlay, at the image's size
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "notes.png" in result.output and "truncated.jpg" in result.output
    assert "dot.png" in result.output and "28x28" in result.output and not (tmp_path / "out" / "dot.json").exists()
    for path in good:
        record = json.loads((tmp_path / "out" / f"{path.stem}.json").read_text())
        assert set(record) >= {"reasoning", "answer", "format_ok", "score", "selected_tokens"}
        parsed = parse_completion(record["completion"])  # the record's fields agree with its own completion
        assert (record["format_ok"], record["answer"], record["reasoning"]) == (
            parsed.format_ok,
            parsed.answer,
            parsed.reasoning,
        )
        d = read_decision(None)  # no thresholds file: the default decision threshold
        assert record["threshold"]["value"] == d["value"]
        assert record["decision"] == decide(
            image_score(record["score"], parsed.answer is None, d["malformed"]), d["value"]
        )
        assert record["selected_tokens"], "at least one token carries the map (fallback: all tokens)"
        for tok in record["selected_tokens"]:
            assert {"token", "s_t_hat", "s_i_hat", "w"} <= set(tok) and tok["w"] > 0
        with Image.open(path) as src, Image.open(tmp_path / "out" / f"{path.stem}.png") as png:
            assert png.size == src.size and png.mode == "RGB"
    assert not (tmp_path / "out" / "notes.json").exists()
    assert not list((tmp_path / "out").glob(".*")), "no temporary files left behind"


def test_one_corrupt_file_is_one_error_line(tiny_dir, tmp_path, monkeypatch):
    """A single unreadable file: its error once, the count, no empty results table, no "the others have results"."""
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 92)  # `head -c 100 some.png`
    result = CliRunner().invoke(app, ["predict", str(bad), "--out", "out", "--max-new-tokens", "4"])
    assert result.exit_code == 1, result.output
    assert result.output.count("bad.png") == 1, result.output
    assert "1 of 1 file(s) could not be read" in result.output and "others" not in result.output
    assert "overlay" not in result.output  # the header of the results table


@pytest.fixture(scope="module")
def project(tiny_dir, tmp_path_factory):
    """A project folder after train + calibrate: models/adapter (tiny LoRA) and models/thresholds.json."""
    from peft import LoraConfig, get_peft_model

    from readl.model.loading import load_model

    work = tmp_path_factory.mktemp("predict-project")
    model, _ = load_model("tiny", device="cpu")
    get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])).save_pretrained(
        work / "models" / "adapter"
    )
    (work / "models" / "thresholds.json").write_text(
        json.dumps(
            {"tau_t": {"value": 0.4}, "tau_i": {"value": 0.5}, "decision": {"value": 0.25, "rule": "false_alarm_rate"}}
        )
    )
    return work


def test_predict_uses_the_trained_model_by_default_and_names_it(project, sample_dir, monkeypatch):
    from readl.registry.registration import file_digest

    monkeypatch.chdir(project)
    img = sample_dir / "mvtec_ad/grid/test/broken/000.png"
    result = CliRunner().invoke(app, ["predict", str(img), "--out", "out", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    record = json.loads((project / "out" / "000.json").read_text())
    assert record["model"] == {
        "base": "tiny",
        "adapter": f"sha256:{file_digest([project / 'models/adapter'])}",
        "registered": None,
    }
    assert record["thresholds"] == "models/thresholds.json" and record["tau"] == {"t": 0.4, "i": 0.5}
    assert record["threshold"] == {"value": 0.25, "rule": "false_alarm_rate", "source": "models/thresholds.json"}
    image_score = 0.5 if record["answer"] is None else record["score"]  # malformed: evaluate's fallback score
    assert record["decision"] == ("anomalous" if image_score >= 0.25 else "normal")
    assert record["overlay"] == "out/000.png"
    with Image.open(img) as src, Image.open(project / record["overlay"]) as png:
        assert png.width > src.width and png.height > src.height  # colour bar right, caption below
        caption = np.asarray(png.convert("L"))[src.height + 4 :, : src.width]
        assert (caption < 100).any(), "the caption is written under the image"
    # --adapter none: the base model, per-image rules unless thresholds are given
    result = CliRunner().invoke(
        app, ["predict", str(img), "--out", "base", "--max-new-tokens", "8", "--adapter", "none"]
    )
    assert result.exit_code == 0, result.output
    record = json.loads((project / "base" / "000.json").read_text())
    assert record["model"]["adapter"] is None and record["thresholds"].startswith("per-image rules")
    assert record["threshold"]["value"] == 0.5 and record["threshold"]["rule"] == "default"


def test_predict_errors_fit_the_command(tiny_dir, sample_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    img = str(sample_dir / "mvtec_ad/grid/test/broken/000.png")
    run = lambda *a: CliRunner().invoke(app, ["predict", *a])  # noqa: E731
    missing = run("nothere.png", "--out", "out", "--max-new-tokens", "4")
    assert missing.exit_code == 2 and "input not found: nothere.png" in missing.output  # before the model loads
    assert "manifest" not in missing.output and "curate" not in missing.output
    out = run(img, "--params", "nothere.yaml")
    assert out.exit_code == 2 and "--params nothere.yaml: file not found" in out.output
    out = run(img, "--model", "readl-test/not-a-cached-model")  # HF_HUB_OFFLINE=1 (conftest): nothing to download
    assert (
        out.exit_code == 1
        and "readl-test/not-a-cached-model" in out.output
        and "huggingface-cli download" in out.output
    )
    assert "Traceback" not in out.output and len(out.output.strip().splitlines()) <= 4, out.output
    out = run(img, "--model", "models:/readl@champion")
    assert out.exit_code == 1 and "no MLflow registry" in out.output and "MLFLOW_TRACKING_URI" in out.output
    assert not (tmp_path / "mlruns.db").exists() and not (tmp_path / "mlflow.db").exists()


def test_outputs_never_replace_an_input_or_each_other(tiny_dir, sample_dir, tmp_path, monkeypatch):
    """Issue (data lost): `--out` = the images' folder replaced the input with its overlay; a/same.png, b/same.png and
    c/same_1.png wrote b's and c's results to one name. Refused before the model loads; names unique."""
    from readl.predictor import check_outputs, output_names

    monkeypatch.chdir(tmp_path)
    src = sample_dir / "mvtec_ad/grid/test/broken/000.png"
    files = [tmp_path / "in" / d / n for d, n in (("a", "same.png"), ("b", "same.png"), ("c", "same_1.png"))]
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(src.read_bytes())
    names = output_names(files)
    assert sorted(names.values()) == ["a__same", "b__same", "c__same_1"]
    assert output_names([files[0], files[0]]) == {files[0]: "same"}  # one file given twice: one output
    img = tmp_path / "in" / "a" / "same.png"
    before = img.read_bytes()
    result = CliRunner().invoke(app, ["predict", str(img), "--out", str(img.parent), "--max-new-tokens", "4"])
    assert result.exit_code == 2 and "would replace the input image" in result.output, result.output
    assert img.read_bytes() == before and not (img.parent / "same.json").exists()
    with pytest.raises(ValueError, match="would replace"):
        check_outputs([tmp_path / "x.json"], tmp_path)  # a .json input counts too
    result = CliRunner().invoke(app, ["predict", *map(str, files), "--out", "out", "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "out").glob("*.json"))
    assert written == ["a__same.json", "b__same.json", "c__same_1.json"]
    for f, name in names.items():
        assert json.loads((tmp_path / "out" / f"{name}.json").read_text())["image"] == str(f)


def test_file_names_are_printed_as_they_are(tiny_dir, sample_dir, tmp_path, monkeypatch):
    """Issue: `[bold red]loud.png` was shown as `loud.png` and `a:x:b.png` as `a❌b.png` (rich markup / emoji)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "400")
    names = ["[bold red]loud.png", "a:x:b.png"]
    for n in names:
        (tmp_path / n).write_bytes((sample_dir / "mvtec_ad/grid/test/broken/000.png").read_bytes())
    (tmp_path / "[red]bad.png").write_text("not an image")
    result = CliRunner().invoke(app, ["predict", *names, "[red]bad.png", "--out", "out", "--max-new-tokens", "4"])
    assert result.exit_code == 1, result.output
    for n in [*names, "[red]bad.png"]:
        assert n in result.output, (n, result.output)


def test_a_folder_is_read_recursively_and_inputs_are_checked_before_the_model_loads(
    tiny_dir, sample_dir, tmp_path, monkeypatch
):
    """Issue (new user): same-named inputs gave ambiguous rows; a folder was not accepted; a missing input was found
    only after the model had loaded."""
    import shutil

    import readl.stages.predict as stage

    monkeypatch.chdir(tmp_path)
    for sub in ("a", "b/c"):
        (tmp_path / "imgs" / sub).mkdir(parents=True)
        shutil.copy(sample_dir / "mvtec_ad/grid/test/broken/000.png", tmp_path / "imgs" / sub / "000.png")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image file name: not an input")
    result = CliRunner().invoke(app, ["predict", "imgs", "--out", "out", "--max-new-tokens", "4", "--no-annotate"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").glob("*.json")) == ["a__000.json", "b__c__000.json"]
    assert "a/000.png" in result.output and "b/c/000.png" in result.output, result.output  # rows say which file

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(stage, "build_predictor", no_model)
    (tmp_path / "empty").mkdir()
    for args, says in ((["imgs/a/000.png", "missing.png"], "missing.png"), (["empty"], "no image files")):
        result = CliRunner().invoke(app, ["predict", *args, "--out", "out2"])
        assert result.exit_code == 2 and says in result.output, result.output
