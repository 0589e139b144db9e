"""Every backbone family through the one seam (readl.model.families): the tiny kits of Qwen2-VL, Qwen2.5-VL,
Qwen3-VL and InternVL build offline, the attention capture equals eager attention, the token grid keeps raster order on
non-square grids, ``readl predict`` runs end to end, and two CGRO steps train LoRA with the consistency reward."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from readl.localization.attention import CAPTURE_IMPLEMENTATION, capture_attention, enable_capture
from readl.model.families import family_for_path, family_of, family_of_processor, fit_image_processor
from readl.model.inference import Predictor, anomaly_token_positions, image_token_positions
from readl.model.loading import load_model
from readl.model.prompting import QUESTION, build_messages
from readl.model.tiny import KITS, TinySpec, kit_config, kit_tokenizer

REPO = Path(__file__).resolve().parents[3]
QWEN = ["tiny", "tiny-qwen2-vl", "tiny-qwen3-vl"]
ALL = [*QWEN, "tiny-internvl"]
# 420 px; Qwen3-VL: 416 px; InternVL: one 448 px tile
GRID_420 = {"tiny": (15, 15), "tiny-qwen2-vl": (15, 15), "tiny-qwen3-vl": (13, 13), "tiny-internvl": (16, 16)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def kits(tiny_dir, tmp_path_factory):
    """Every kit name resolvable offline: ``tiny`` from the session kit, the others built into a temp root."""
    mp = pytest.MonkeyPatch()
    mp.setenv("READL_KITS_DIR", str(tmp_path_factory.mktemp("kits")))
    from readl.model.loading import resolve_base

    yield {kit: Path(resolve_base(kit)) for kit in ALL}
    mp.undo()


@pytest.fixture(scope="module")
def loaded(kits):
    return {kit: load_model(kit, device="cpu") for kit in ALL}


def _prompt(processor) -> str:
    return processor.apply_chat_template(build_messages(), tokenize=False, add_generation_prompt=True)


# --- the kits -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kit", ALL)
def test_kit_is_the_familys_real_architecture_with_its_tokens_and_template(kits, loaded, kit):
    model, processor = loaded[kit]
    family = family_of(model)
    assert family.kit == kit and family_for_path(str(kits[kit])) is family
    assert type(model).__name__ == family.model_class and model.config.model_type == KITS[kit].model_type
    assert family_of_processor(processor) is family and not hasattr(processor, "video_processor")
    assert json.loads((kits[kit] / "readl_tiny.json").read_text())["kit"] == kit
    tok = processor.tokenizer
    for t in ("<|im_start|>", "<|im_end|>", family.image_token, "<|endoftext|>"):
        assert len(tok.tokenize(t)) == 1, t
    prompt = _prompt(processor)
    image_item = {"<|image_pad|>": "<|vision_start|><|image_pad|><|vision_end|>", "<IMG_CONTEXT>": "<IMG_CONTEXT>\n"}
    assert prompt.endswith(image_item[family.image_token] + QUESTION + "<|im_end|>\n<|im_start|>assistant\n")
    assert prompt.startswith("<|im_start|>system\nYou are an industrial visual inspection assistant.")
    # Qwen3-VL writes <think> / </think> as single, non-special tokens (decoded as text)
    think = tok.encode("<think>", add_special_tokens=False)
    assert (len(think) == 1) == (kit == "tiny-qwen3-vl")
    assert (
        tok.decode(tok.encode("<think>a</think>", add_special_tokens=False), skip_special_tokens=True)
        == "<think>a</think>"
    )
    with pytest.raises(ValueError, match="videos"):
        processor(text=[prompt], videos=[np.zeros((2, 28, 28, 3), np.uint8)])


def test_unknown_family_is_a_clear_error(kits):
    from transformers import LlamaConfig

    with pytest.raises(ValueError, match=r"model_type is 'llama'; readl supports Qwen2-VL \(qwen2_vl\)"):
        family_of(LlamaConfig())
    with pytest.raises(ValueError, match="unknown tiny kit"):
        kit_config("tiny-llama", None)


# --- capture == eager output_attentions ------------------------------------------------------------------------------
@pytest.mark.parametrize("kit", ALL)
def test_capture_equals_eager_with_left_padding_and_gqa(loaded, sample_images, kit):
    """3 layers, 8 query heads over 2 KV heads (GQA), layers 0 and 2 averaged; batch of 2, row 0 left-padded."""
    _, processor = loaded[kit]
    spec = type("GQA", (TinySpec,), {"text_layers": 3, "text_heads": 8, "text_kv_heads": 2})
    torch.manual_seed(1)
    model = family_of(loaded[kit][0]).load_class()(kit_config(kit, kit_tokenizer(kit), spec)).eval()
    model = enable_capture(model)
    completions = ["<think>a crack", "<think>the surface is uniform and clean</think>"]
    images = [im.resize((420, 420)) for im in sample_images[:2]]
    batch = processor(
        images=images, text=[_prompt(processor) + c for c in completions], return_tensors="pt", padding=True
    )
    assert (batch["attention_mask"][0] == 0).any(), "row 0 must be left-padded for this test"
    img = image_token_positions(batch["input_ids"], model.config.image_token_id)
    anom = anomaly_token_positions(batch["input_ids"], processor.tokenizer)
    key_index = torch.cat([img, anom], dim=1)  # (2, n_img + E)
    start, chosen = batch["input_ids"].shape[1] - 12, [0, 2]
    with torch.no_grad(), capture_attention(key_index, start, layers=chosen) as cap:
        model(**batch)
    got = cap.result()  # (2, 12, n_img + E)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        att = model(**batch, output_attentions=True).attentions  # L x (B, H, N, N)
    model.set_attn_implementation(CAPTURE_IMPLEMENTATION)
    rows = torch.stack([att[i] for i in chosen]).mean(dim=(0, 2))[:, start:, :]  # (B, 12, N)
    ref = torch.take_along_dim(rows, key_index[:, None, :], dim=-1)  # (B, 12, K)
    h, w = GRID_420[kit]
    assert got.shape == ref.shape == (2, 12, h * w + anom.shape[1])
    assert (got - ref).abs().max().item() <= 1e-5
    assert got[..., : h * w].sum(-1).min() > 0  # real attention mass on the image
    assert cap.layer_calls == [len(chosen)]  # every chosen decoder layer was captured, no other


# --- token grid: (h, w) from the processor, raster order -----------------------------------------------------------
def _free_size(processor):
    """``processor`` with an image processor that keeps any image's size (no pinned pixel bounds)."""
    import copy

    out = copy.copy(processor)
    ip = copy.deepcopy(processor.image_processor)
    ip.size = {"shortest_edge": 1, "longest_edge": 4096 * 4096}
    out.image_processor = ip
    return out


@pytest.mark.parametrize("kit", QWEN)
def test_token_grid_of_a_non_square_image_keeps_raster_order(loaded, kit):
    """A 16 x 12 token image (W x H, in pixels 16f x 12f with f = patch x merge): the grid is (12, 16), and the
    token k that a white cell (i, j) changes is i * 16 + j (rows first)."""
    model, processor = loaded[kit]
    processor = _free_size(processor)
    family = family_of(model)
    ip = processor.image_processor
    f = ip.patch_size * ip.merge_size
    prompt = _prompt(processor)
    base = processor(images=[Image.new("RGB", (16 * f, 12 * f))], text=[prompt], return_tensors="pt")
    assert family.token_grids(base, ip) == [(12, 16)]
    assert int((base["input_ids"] == family.image_token_id(model.config)).sum()) == 12 * 16
    per_token = ip.merge_size**2  # patches per image token, consecutive in pixel_values
    for i, j in [(0, 0), (2, 11), (11, 3), (5, 15)]:
        arr = np.zeros((12 * f, 16 * f, 3), np.uint8)
        arr[f * i : f * (i + 1), f * j : f * (j + 1)] = 255
        px = processor(images=[Image.fromarray(arr)], text=[prompt], return_tensors="pt")["pixel_values"]
        changed = (px - base["pixel_values"]).abs().sum(dim=1).nonzero()[:, 0]  # changed patches
        assert sorted(set((changed // per_token).tolist())) == [i * 16 + j]


@pytest.mark.parametrize("kit", ALL)
def test_a_token_attending_one_cell_lights_that_block(loaded, kit, monkeypatch):
    """Predictor.capture reshapes the image columns with the family's grid: a completion token whose attention is all
    on image token k gets a map peaked at cell (k // w, k % w) (Qwen: of a non-square (12, 16) grid; InternVL: its
    16x16 tile grid), and the upsampled map lights that block of the image."""
    from readl.localization import attention as attention_mod
    from readl.localization.anomaly_map import upsample

    model, processor = loaded[kit]
    family = family_of(model)
    if kit in QWEN:  # any size: a 16 x 12 token image
        processor = _free_size(processor)
        f = processor.image_processor.patch_size * processor.image_processor.merge_size
        size = (16 * f, 12 * f)
    else:  # InternVL: its one 448 px tile
        size = (448, 448)
    predictor = Predictor(model, processor)
    inputs = processor(images=[Image.new("RGB", size)], text=[predictor.prompt], return_tensors="pt")
    ((h, w),) = family.token_grids(inputs, processor.image_processor)
    assert (h, w) == ((12, 16) if kit in QWEN else (16, 16))
    f = size[0] // w  # pixels per token side
    completion = processor.tokenizer.encode("<think>a crack</think><answer>Yes</answer>", add_special_tokens=False)
    cells = [(3, 14), (10, 1)]  # (row, column) on the (12, 16) grid; rows alternate between the two
    real_result = attention_mod.AttentionCapture.result

    def one_hot(self):
        got = real_result(self)  # (1, T + 1, K): the real capture ran; its image columns are replaced
        out = torch.zeros_like(got)
        for r in range(out.shape[1]):
            i, j = cells[r % 2]
            out[:, r, i * w + j] = 1.0
        return out

    monkeypatch.setattr(attention_mod.AttentionCapture, "result", one_hot)
    (tok,) = predictor.capture(inputs, [completion])
    assert tok.image_attn.shape == (len(completion), h, w)
    for r, m in enumerate(tok.image_attn):
        assert np.unravel_index(m.argmax(), m.shape) == cells[r % 2] and m.sum() == 1.0
    big = upsample(tok.image_attn[0], (h * f, w * f))
    i, j = cells[0]
    block = big[f * i : f * (i + 1), f * j : f * (j + 1)]
    assert block.mean() > 0.5 and big.sum() - block.sum() < block.sum()


@pytest.mark.parametrize(("kit", "size"), [("tiny-qwen2-vl", 420), ("tiny-qwen3-vl", 420), ("tiny-qwen3-vl", 112)])
def test_pinned_image_size_follows_the_patch_grid(loaded, kit, size):
    """fit_image_processor: the nearest side the grid allows (Qwen3-VL 32 px tokens: 420 -> 416, 112 -> 128)."""
    _, processor = loaded[kit]
    ip = fit_image_processor(processor.image_processor, size)
    f = ip.patch_size * ip.merge_size
    side = round(size / f) * f
    out = ip(images=[Image.new("RGB", (size, size))], return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, side // ip.patch_size, side // ip.patch_size]]
    with pytest.raises(ValueError, match="at least"):
        fit_image_processor(processor.image_processor, f - 1)


# --- end to end: readl predict, two CGRO steps ---------------------------------------------------------------------
@pytest.mark.parametrize("kit", ALL)
def test_predict_cli_writes_json_and_overlay(kits, sample_dir, tmp_path, monkeypatch, kit):
    from typer.testing import CliRunner

    from readl.cli import app

    monkeypatch.chdir(tmp_path)  # no params.yaml: built-in defaults
    image = sample_dir / "hazelnut_toy/hazelnut/test/colour/00.jpg"
    result = CliRunner().invoke(app, ["predict", str(image), "--model", kit, "--out", "out", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "00.json").read_text())
    assert set(record) >= {"reasoning", "answer", "format_ok", "score", "selected_tokens"}
    assert 0.0 <= record["score"] <= 1.0 and record["selected_tokens"]
    with Image.open(tmp_path / "out" / "00.png") as png:
        assert png.mode == "RGB" and min(png.size) > 0


@pytest.mark.parametrize("kit", ALL)
def test_two_cgro_steps_train_lora_with_the_consistency_reward(loaded, sample_dir, tmp_path, kit):
    from readl.config import Params
    from readl.training.data import load_manifest
    from readl.training.train import build_trainer

    rows = [
        ("data/raw/hazelnut_toy/hazelnut/test/colour/00.jpg", 1),
        ("data/raw/hazelnut_toy/hazelnut/test/good/04.jpg", 0),
        ("data/raw/mvtec_ad/grid/test/bent/000.png", 1),
        ("data/raw/mvtec_ad/grid/test/good/000.png", 0),
    ]
    manifest = tmp_path / "train.parquet"
    pd.DataFrame(rows, columns=["image_path", "label"]).assign(source="bundled", category="x").to_parquet(manifest)
    params = Params.model_validate(
        {
            "model": {"base": kit, "image_size": 112},
            "train": {
                "max_steps": 2,
                "num_generations": 4,
                "per_device_train_batch_size": 8,
                "max_completion_length": 12,
                "learning_rate": 1e-3,
                "save_steps": 100,
                "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
                "consistency": {"quantile": 0.5, "delta1": 0.15, "delta2": 0.15, "require_format": False},
            },
        }
    )
    model = load_model(kit, device="cpu")  # a fresh copy: LoRA wraps it
    trainer = build_trainer(params, load_manifest(manifest, root=REPO), tmp_path / "ckpt", model_and_processor=model)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 2
    logged = [h for h in trainer.state.log_history if "rewards/consistency/mean" in h]
    assert len(logged) == 2 and all(np.isfinite(h["consistency/J_mean"]) for h in logged)
    # 112 px: 4 tokens of 28 px; Qwen3-VL 32 px tokens: round(112 / 32) = 4 (128 px); InternVL: its 448 px tile
    side = 16 if kit == "tiny-internvl" else 4
    maps = trainer.last_consistency["maps"]
    assert len(maps) == 8 and all(m.shape[1:] == (side, side) for m in maps)
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert changed and all("lora_" in n for n in changed)
    prefix = family_of(model[0]).vision_prefix
    assert any("merger" in n or "multi_modal_projector" in n for n in changed) and not [
        n for n in changed if prefix in n
    ]


@pytest.mark.parametrize("kit", ALL)
def test_training_grid_equals_the_prediction_grid(loaded, kit):
    """train/warmup pin the image processor (readl.training.data.fit_processor); at model.image_size = 420 the
    token grid must be the one predict/evaluate see. Pinning both pixel bounds at 420^2 (as before the families
    seam) gives Qwen3-VL a 448 px, 14x14 grid instead of the 416 px, 13x13 one of prediction."""
    from readl.training.data import fit_processor

    model, processor = loaded[kit]
    family = family_of(model)
    image = [Image.new("RGB", (420, 420))]
    fitted = fit_processor(processor, 420).image_processor
    assert family.token_grids(fitted(images=image, return_tensors="pt"), fitted) == [GRID_420[kit]]
    assert family.token_grids(processor.image_processor(images=image, return_tensors="pt"), fitted) == [GRID_420[kit]]
    if kit not in QWEN:
        return
    old = type(processor.image_processor)(
        **{**processor.image_processor.to_dict(), "size": {"shortest_edge": 420 * 420, "longest_edge": 420 * 420}}
    )
    old_grid = family.token_grids(old(images=image, return_tensors="pt"), old)
    assert (old_grid == [GRID_420[kit]]) == (kit != "tiny-qwen3-vl")


def test_a_kit_folder_of_another_kit_or_size_is_rebuilt(kits, tmp_path):
    from readl.model.tiny import ensure_tiny_model

    path = tmp_path / "kit"
    ensure_tiny_model(path, kit="tiny-qwen2-vl")
    assert family_for_path(str(path)).model_type == "qwen2_vl"
    ensure_tiny_model(path, kit="tiny-qwen3-vl")  # same folder, another kit: rebuilt, not reused
    assert family_for_path(str(path)).model_type == "qwen3_vl"
    record = json.loads((path / "readl_tiny.json").read_text())
    (path / "readl_tiny.json").write_text(json.dumps({**record, "text_layers": 5}))
    ensure_tiny_model(path, kit="tiny-qwen3-vl")
    assert json.loads((path / "readl_tiny.json").read_text()) == record


def test_internvl_image_tokens_keep_raster_order_through_pixel_shuffle(loaded):
    """InternVL's pixel values are whole tiles, so the order is checked in the model: with no ViT layers (patch
    embedding + position embedding only, per patch), a white 28x28 cell (i, j) of the 448 px tile changes exactly
    image feature i * 16 + j after pixel shuffle and the projector (the token that cell's map value lands on)."""
    model, processor = loaded["tiny-internvl"]
    cfg = kit_config("tiny-internvl", processor.tokenizer, type("NoViT", (TinySpec,), {"vision_depth": 0}))
    torch.manual_seed(0)
    local = family_of(model).load_class()(cfg).eval()
    ip = processor.image_processor

    def features(arr):
        px = ip(images=[Image.fromarray(arr)], return_tensors="pt")["pixel_values"]  # (1, 3, 448, 448)
        with torch.no_grad():
            out = local.model.get_image_features(px, vision_feature_layer=-1, vision_feature_select_strategy="default")
        return out.pooler_output[0]  # (256, hidden)

    base = features(np.zeros((448, 448, 3), np.uint8))
    assert base.shape[0] == 256 and family_of(model).token_grids({"pixel_values": torch.zeros(1, 3, 448, 448)}, ip) == [
        (16, 16)
    ]
    for i, j in [(0, 0), (2, 11), (15, 3)]:
        arr = np.zeros((448, 448, 3), np.uint8)
        arr[28 * i : 28 * (i + 1), 28 * j : 28 * (j + 1)] = 255
        changed = (features(arr) - base).abs().sum(-1).nonzero()[:, 0]
        assert changed.tolist() == [i * 16 + j]


def test_internvl_keeps_one_tile_per_image_even_if_the_checkpoint_tiles(loaded):
    """A checkpoint whose image processor has dynamic tiling on (crop_to_patches) still gives one 448 px tile, one
    16x16 grid of 256 image tokens, per image: in the processor and in the image processor alone (training)."""
    import copy

    model, processor = loaded["tiny-internvl"]
    family = family_of(model)
    ip = copy.deepcopy(processor.image_processor)
    ip.crop_to_patches = True
    proc = family.processor(processor.tokenizer, ip, config=model.config)
    wide = [Image.new("RGB", (900, 300), (30, 90, 200))]
    out = proc(images=wide, text=[_prompt(proc)], return_tensors="pt")
    assert out["pixel_values"].shape[0] == 1
    assert int((out["input_ids"] == family.image_token_id(model.config)).sum()) == 256
    assert family.token_grids(out, proc.image_processor) == [(16, 16)]
    assert proc.image_processor(images=wide, return_tensors="pt")["pixel_values"].shape[0] == 1
