"""The real models' path without their weights: published configurations at real width, random weights, on CPU.

For each configuration in :data:`CONFIGS` (the published ``config.json`` values of the checkpoints the README lists,
copied by hand: hidden size, layers, query / key-value heads, head dim, MLP width, vocabulary, RoPE, vision tower;
``transformers``' own config defaults are NOT these checkpoints, e.g. ``Qwen2_5_VLConfig()`` has a 72B-sized text
model) this prints one row:

- ``grid``: the image-token grid at 420 px from the family's processor settings (patch, merge, tile);
- ``LoRA params``: trainable parameters at FULL depth, counted on the meta device after PEFT's LoRA with readl's
  target regex (r = ``--rank``), and ``= shapes`` whether that equals the count from the layer shapes
  (r x (in + out) per adapted linear: decoder q/k/v/o/gate/up/down from the config, plus the merger's linears);
  ``vision LoRA`` counts adapted modules inside the vision blocks (must be 0);
- ``capture - eager``: max |difference| between readl's attention capture and eager ``output_attentions`` (head-
  and layer-mean rows to the image and anomaly-word keys), on the model cut to ``--layers`` decoder layer(s) and
  2 vision blocks (fp32, real width, real head grouping and head dim), 2 images at 420 px;
- ``eager / capture MiB``: the attention tensor each keeps per decoder layer for that batch: eager materialises
  (B, H, S, S) probabilities, the capture one running (B, Q, K) sum (Q captured query rows, K image + anomaly keys);
- ``CGRO step s``: one CGRO optimizer step (LoRA, G = 2 sampled rollouts of 8 tokens, the consistency reward's
  capture pass included) on that cut model, through readl's trainer; ``LoRA change``: the largest |change| of a LoRA
  weight in that step (0 when every rollout gets the same reward, as random weights' rollouts do: no advantage, no
  gradient); the row's ``cgro_stats`` holds the step's logged entry (loss, grad_norm, reward_std, ...);
- ``s``: seconds for the row (building the model included).

``--memory-plan`` prints instead the per-GPU memory of the paper recipe for each configuration (README "Memory
plan"; formula in :func:`memory_plan`). ``benchmarks/gpu_check.py`` measures the 7B shape at full depth on a GPU.

    python benchmarks/real_shapes.py                      # every configuration (~5 min, 2 cores, ~12 GB RAM)
    python benchmarks/real_shapes.py --only qwen2-vl-2b   # one (the suite runs this)
    python benchmarks/real_shapes.py --memory-plan
"""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import dataclass, field

import torch

# vision towers shared by a family's checkpoints (each entry below adds the values that differ)
QWEN2_VL_VISION = dict(
    depth=32,
    embed_dim=1280,
    mlp_ratio=4,
    num_heads=16,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
)
QWEN2_5_VL_VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    fullatt_block_indexes=[7, 15, 23, 31],
    window_size=112,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
)
QWEN3_VL_VISION = dict(
    num_heads=16,
    patch_size=16,
    spatial_merge_size=2,
    temporal_patch_size=2,
    num_position_embeddings=2304,
)
INTERNVL3_VISION = dict(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    image_size=[448, 448],
    patch_size=[14, 14],
)

# name -> (family kit, text config, vision config): the published checkpoints' config.json values
CONFIGS: dict[str, tuple[str, dict, dict]] = {
    "qwen2-vl-2b": (
        "tiny-qwen2-vl",
        dict(
            hidden_size=1536,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            intermediate_size=8960,
            vocab_size=151936,
            tie_word_embeddings=True,
            rope_theta=1e6,
            mrope_section=[16, 24, 24],
        ),
        dict(QWEN2_VL_VISION, hidden_size=1536),
    ),
    "qwen2-vl-7b": (
        "tiny-qwen2-vl",
        dict(
            hidden_size=3584,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            intermediate_size=18944,
            vocab_size=152064,
            tie_word_embeddings=False,
            rope_theta=1e6,
            mrope_section=[16, 24, 24],
        ),
        dict(QWEN2_VL_VISION, hidden_size=3584),
    ),
    "qwen2.5-vl-3b": (
        "tiny",
        dict(
            hidden_size=2048,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
            intermediate_size=11008,
            vocab_size=151936,
            tie_word_embeddings=True,
            rope_theta=1e6,
            mrope_section=[16, 24, 24],
        ),
        dict(QWEN2_5_VL_VISION, out_hidden_size=2048),
    ),
    "qwen2.5-vl-7b": (
        "tiny",
        dict(
            hidden_size=3584,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            intermediate_size=18944,
            vocab_size=152064,
            tie_word_embeddings=False,
            rope_theta=1e6,
            mrope_section=[16, 24, 24],
        ),
        dict(QWEN2_5_VL_VISION, out_hidden_size=3584),
    ),
    "qwen3-vl-4b": (
        "tiny-qwen3-vl",
        dict(
            hidden_size=2560,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            intermediate_size=9728,
            vocab_size=151936,
            tie_word_embeddings=True,
            rope_theta=5e6,
            mrope_section=[24, 20, 20],
            mrope_interleaved=True,
        ),
        dict(
            QWEN3_VL_VISION,
            depth=24,
            hidden_size=1024,
            intermediate_size=4096,
            out_hidden_size=2560,
            deepstack_visual_indexes=[5, 11, 17],
        ),
    ),
    "qwen3-vl-8b": (
        "tiny-qwen3-vl",
        dict(
            hidden_size=4096,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            intermediate_size=12288,
            vocab_size=151936,
            tie_word_embeddings=False,
            rope_theta=5e6,
            mrope_section=[24, 20, 20],
            mrope_interleaved=True,
        ),
        dict(
            QWEN3_VL_VISION,
            depth=27,
            hidden_size=1152,
            intermediate_size=4304,
            out_hidden_size=4096,
            deepstack_visual_indexes=[8, 16, 24],
        ),
    ),
    "internvl3-2b-hf": (
        "tiny-internvl",
        dict(
            hidden_size=1536,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            intermediate_size=8960,
            vocab_size=151674,
            tie_word_embeddings=False,
            rope_theta=1e6,
        ),
        INTERNVL3_VISION,
    ),
    "internvl3-8b-hf": (
        "tiny-internvl",
        dict(
            hidden_size=3584,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            intermediate_size=18944,
            vocab_size=151674,
            tie_word_embeddings=False,
            rope_theta=1e6,
        ),
        INTERNVL3_VISION,
    ),
}


def build_config(name: str, tokenizer, layers: int | None = None, vision_depth: int | None = None):
    """The ``transformers`` config of :data:`CONFIGS` ``[name]`` with the kit tokenizer's special-token ids (the
    vocabulary size stays the checkpoint's); ``layers`` / ``vision_depth`` cut the decoder / vision tower (None =
    full depth). A cut Qwen2.5 tower keeps its last block full-attention; a cut Qwen3 tower its first deepstack."""
    from transformers import InternVLConfig, Qwen2_5_VLConfig, Qwen2VLConfig, Qwen3VLConfig

    kit, text, vision = CONFIGS[name]
    text, vision = dict(text), dict(vision)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>", "<|image_pad|>")}
    rope = {"rope_type": "default", "rope_theta": text.pop("rope_theta")}
    if "mrope_section" in text:
        rope["mrope_section"] = text.pop("mrope_section")
    if text.pop("mrope_interleaved", False):
        rope["mrope_interleaved"] = True
    text.update(rope_parameters=rope, pad_token_id=ids["<|endoftext|>"], max_position_embeddings=32768)
    if layers:
        text["num_hidden_layers"] = layers
    depth_key = "num_hidden_layers" if kit == "tiny-internvl" else "depth"
    if vision_depth:
        vision[depth_key] = vision_depth
        if "fullatt_block_indexes" in vision:
            vision["fullatt_block_indexes"] = [vision_depth - 1]
        if "deepstack_visual_indexes" in vision:
            vision["deepstack_visual_indexes"] = [0]
    if kit == "tiny-internvl":
        text["model_type"] = "qwen2"
        return InternVLConfig(
            text_config=text,
            vision_config=vision,
            image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
            image_seq_length=256,
            downsample_ratio=0.5,
        )
    tokens = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        "vision_start_token_id": tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        "vision_end_token_id": tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    }
    cls = {"tiny": Qwen2_5_VLConfig, "tiny-qwen2-vl": Qwen2VLConfig, "tiny-qwen3-vl": Qwen3VLConfig}[kit]
    return cls(text_config=text, vision_config=vision, **tokens)


def lora_counts(config, rank: int) -> tuple[int, int, int]:
    """``(trainable, from_shapes, vision_adapted)`` for LoRA of rank ``rank`` with readl's family regex on the
    FULL-depth model built on the meta device (no memory): PEFT's trainable count, the count from the layer shapes
    (decoder from the config, merger from its linears), and adapted modules inside the vision blocks."""
    from peft import get_peft_model

    from readl.model.families import family_of
    from readl.training.lora import lora_config

    family = family_of(config)
    with torch.device("meta"):
        model = family.load_class()._from_config(config)
    regex = family.lora_target_regex
    decoder = decoder_lora(config.text_config.to_dict(), rank)
    merger = sum(
        rank * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and re.fullmatch(regex, name) and not _is_decoder(name)
    )
    peft = get_peft_model(model, lora_config(rank, 2 * rank, 0.0, regex))
    trainable = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    vision = sum(1 for name, _ in peft.named_modules() if name.endswith("lora_A") and _is_vision_block(name))
    return trainable, decoder + merger, vision


def decoder_lora(text: dict, rank: int) -> int:
    """LoRA parameters of the decoder from its shape: r x (in + out) of q, k, v, o, gate, up, down in every layer."""
    h, heads, kv, inter = (
        text[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size")
    )
    d = text.get("head_dim") or h // heads
    per_layer = (h + heads * d) + 2 * (h + kv * d) + (heads * d + h) + 2 * (h + inter) + (inter + h)
    return text["num_hidden_layers"] * rank * per_layer


def _is_decoder(name: str) -> bool:
    return bool(re.search(r"language_model\.layers\.\d+\.", name))


def _is_vision_block(name: str) -> bool:
    return bool(re.search(r"(visual\.blocks|vision_tower\.encoder\.layer)\.\d+\.", name))


@dataclass
class Row:
    name: str
    shape: str
    grid: str
    lora: int
    lora_shapes: int
    vision_lora: int
    diff: float
    eager_mib: float
    capture_mib: float
    cgro_step_s: float
    lora_change: float
    cgro_stats: dict
    seconds: float
    notes: list[str] = field(default_factory=list)


def measure(name: str, layers: int, rank: int, images) -> Row:
    """One row of the table (module docstring)."""
    from readl.localization.attention import capture_attention, enable_capture
    from readl.model.families import family_of
    from readl.model.loading import load_processor, register_capture
    from readl.model.prompting import build_messages
    from readl.model.tiny import ensure_tiny_model
    from readl.model.tokens import anomaly_token_positions, image_token_positions

    t0 = time.perf_counter()
    kit = CONFIGS[name][0]
    processor = load_processor(ensure_tiny_model(kit=kit))
    full = build_config(name, processor.tokenizer)
    trainable, from_shapes, vision = lora_counts(full, rank)
    cfg = build_config(name, processor.tokenizer, layers=layers, vision_depth=2)
    register_capture()
    torch.manual_seed(0)
    model = enable_capture(family_of(cfg).load_class()._from_config(cfg).eval())
    prompt = processor.apply_chat_template(build_messages(), tokenize=False, add_generation_prompt=True)
    texts = [prompt + "<think>a crack near the edge", prompt + "<think>the surface is clean</think>"]
    batch = processor(images=[im.resize((420, 420)) for im in images], text=texts, return_tensors="pt", padding=True)
    img = image_token_positions(batch["input_ids"], cfg.image_token_id)
    keys = torch.cat([img, anomaly_token_positions(batch["input_ids"], processor.tokenizer)], dim=1)  # (B, K)
    q = 8
    start = batch["input_ids"].shape[1] - q
    with torch.no_grad(), capture_attention(keys, start) as cap:
        model(**batch)
    got = cap.result()  # (B, Q, K)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        att = model(**batch, output_attentions=True).attentions  # L x (B, H, S, S)
    ref = torch.stack(list(att)).mean(dim=(0, 2))[:, start:, :]  # (B, Q, S)
    ref = torch.take_along_dim(ref, keys[:, None, :], dim=-1)  # (B, Q, K)
    b, s = batch["input_ids"].shape
    heads = cfg.text_config.num_attention_heads
    side = int(img.shape[1] ** 0.5)
    t = cfg.text_config
    d = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    return Row(
        name,
        f"{t.hidden_size}/{heads}q/{t.num_key_value_heads}kv/d{d}",
        f"{side}x{side}" if side * side == img.shape[1] else str(img.shape[1]),
        trainable,
        from_shapes,
        vision,
        float((got - ref).abs().max()),
        b * heads * s * s * 4 / 2**20,
        got.numel() * 4 / 2**20,
        *cgro_step(model, processor),
        time.perf_counter() - t0,
    )


def cgro_step(model, processor, generations: int = 2, completion: int = 8) -> tuple[float, float, dict]:
    """Seconds of one CGRO optimizer step (format + accuracy + consistency rewards, LoRA r 16, G = ``generations``
    sampled rollouts of ``completion`` tokens of one bundled 420 px image) on ``model`` (the cut, real-width one),
    the largest absolute change of a trainable (LoRA) weight in that step, and the step's logged entry (TRL's
    ``loss``, ``grad_norm``, ``reward_std``, ``completions/*``, readl's ``consistency/*`` ...)."""
    import tempfile
    from pathlib import Path

    import pandas as pd
    from transformers.trainer_callback import PrinterCallback

    from readl.config import Params
    from readl.training.data import load_manifest
    from readl.training.train import build_trainer

    repo = Path(__file__).resolve().parents[1]
    params = Params.model_validate(
        {
            "model": {"base": "tiny", "image_size": 420},
            "train": {
                "num_generations": generations,
                "per_device_train_batch_size": generations,
                "max_steps": 1,
                "max_completion_length": completion,
                "save_steps": 1000,
                "logging_steps": 1,
            },
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "train.parquet"
        rows = [("data/raw/mvtec_ad/grid/test/bent/000.png", 1)]
        pd.DataFrame(rows, columns=["image_path", "label"]).assign(source="s", category="grid").to_parquet(manifest)
        trainer = build_trainer(
            params, load_manifest(manifest, root=repo), Path(tmp) / "ckpt", model_and_processor=(model, processor)
        )
        trainer.remove_callback(PrinterCallback)
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        after = dict(trainer.accelerator.unwrap_model(trainer.model).named_parameters())
        change = max(float((after[n].detach() - p).abs().max()) for n, p in before.items())
        return seconds, change, trainer.state.log_history[0]


def memory_plan(name: str, completion: int = 512, prompt: int = 300, rank: int = 16) -> tuple[float, float, float]:
    """Per-GPU memory (GiB) of the paper recipe's CGRO training under DDP (accelerate multi-GPU: every GPU holds
    the whole model): ``(fixed, per_rollout_checkpointed, per_rollout_plain)``.

    Formula (bf16 weights and activations, fp32 LoRA with AdamW; S = ``prompt`` + ``completion`` tokens, the
    prompt = 225 image tokens + ~75 text; h hidden, n layers, H / kv heads of dim d, I MLP width, V vocabulary):

    - fixed = weights 2 bytes x all parameters + LoRA state 16 bytes x LoRA parameters (fp32 value, gradient, two
      AdamW moments);
    - per rollout = logits 4 V bytes x completion tokens (fp32 log-softmax of the policy loss) + activations kept
      for backward x S: with gradient checkpointing the layer inputs, 2 h n bytes per token, plus one layer's full
      set recomputed; without, n full sets, 2 (8 h + 2 kv d + 4 I) bytes per token and layer (inputs of q/k/v/o,
      norms, residuals and SwiGLU's gate / up / product; SDPA keeps no S x S probabilities);
    - the capture pass of CGRO's reward runs without gradients; its (B, Q, K) sums are negligible.

    A micro-batch of m rollouts per GPU fits a G GiB card when fixed + m x per_rollout <= 0.9 G (10% for the CUDA
    context, allocator fragmentation and the vision tower's activations, which this formula leaves out).
    """
    kit, text, vision = CONFIGS[name]
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size")
    h, n, heads, kv, inter = (text[k] for k in keys)
    vocab = text["vocab_size"]
    d = text.get("head_dim") or h // heads
    per_layer = (h + heads * d) * h + 2 * h * kv * d + 3 * h * inter  # q/k/v/o + SwiGLU
    embed = vocab * h * (1 if text.get("tie_word_embeddings") else 2)
    params = n * per_layer + embed + _vision_params(kit, vision)
    lora = decoder_lora(text, rank)
    full_layer = 2 * (8 * h + 2 * kv * d + 4 * inter)  # bytes per token
    seq = prompt + completion
    gib = 2**30
    fixed = (2 * params + 16 * lora) / gib
    checkpointed = (4 * completion * vocab + seq * (n * 2 * h + full_layer)) / gib
    plain = (4 * completion * vocab + seq * n * full_layer) / gib
    return fixed, checkpointed, plain


def fits(fixed: float, per_rollout: float, gpu_gib: float) -> int:
    """The largest micro-batch (rollouts per GPU) :func:`memory_plan`'s rule allows on a ``gpu_gib`` card."""
    return max(0, int((0.9 * gpu_gib - fixed) // per_rollout))


def _vision_params(kit: str, v: dict) -> int:
    """Vision tower parameters from its shape (blocks: attention 4 w^2 + MLP; the merger / projector ignored)."""
    if kit == "tiny-internvl":
        w, depth, mlp = v["hidden_size"], v["num_hidden_layers"], 2 * v["hidden_size"] * v["intermediate_size"]
    elif kit == "tiny-qwen2-vl":
        w, depth, mlp = v["embed_dim"], v["depth"], 2 * v["embed_dim"] * v["embed_dim"] * v["mlp_ratio"]
    else:
        w, depth = v["hidden_size"], v["depth"]
        mlp = (3 if kit == "tiny" else 2) * w * v["intermediate_size"]
    return depth * (4 * w * w + mlp)


def main(argv=None) -> None:
    from tabulate import tabulate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=sorted(CONFIGS), default=None)
    ap.add_argument("--layers", type=int, default=1, help="decoder layers of the CPU model (default 1)")
    ap.add_argument("--rank", type=int, default=16, help="LoRA rank (params train.lora.r)")
    ap.add_argument("--memory-plan", action="store_true", help="print the per-GPU memory plan instead")
    args = ap.parse_args(argv)
    names = args.only or list(CONFIGS)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.memory_plan:  # the paper: 16 images x G 8 = 128 rollouts per optimizer step
        setups = ((1, 80), (2, 48), (8, 80))
        rows = []
        for name in names:
            fixed, ckpt, plain = memory_plan(name, rank=args.rank)
            cells = []
            for gpus, gib in setups:
                m = fits(fixed, ckpt, gib)
                cells.append(f"{m} / {fits(fixed, plain, gib)} / {-(-128 // (gpus * m)) if m else '-'}")
            rows.append([name, f"{fixed:.1f}", f"{ckpt:.2f} / {plain:.2f}", *cells])
        headers = ["model", "weights + LoRA GiB", "GiB per rollout ckpt / plain"]
        headers += [f"{g}x{gib} GB: rollouts/GPU ckpt / plain / accum" for g, gib in setups]
        print(tabulate(rows, headers=headers))
        return
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    images = [
        Image.fromarray(torch.randint(0, 256, (420, 420, 3), generator=rng, dtype=torch.uint8).numpy())
        for _ in range(2)
    ]
    rows = []
    for name in names:
        r = measure(name, args.layers, args.rank, images)
        rows.append(
            [
                r.name,
                r.shape,
                r.grid,
                f"{r.lora:,}",
                "yes" if r.lora == r.lora_shapes else f"no ({r.lora_shapes:,})",
                r.vision_lora,
                f"{r.diff:.1e}",
                f"{r.eager_mib:.1f} / {r.capture_mib:.3f}",
                f"{r.cgro_step_s:.1f}",
                f"{r.lora_change:.1e}",
                f"{r.seconds:.0f}",
            ]
        )
        print(rows[-1], flush=True)
    print(
        tabulate(
            rows,
            headers=[
                "config",
                "hidden/heads",
                "grid 420px",
                "LoRA params (full depth)",
                "= shapes",
                "vision LoRA",
                "capture - eager",
                "eager / capture MiB",
                "CGRO step s",
                "LoRA change",
                "s",
            ],
        )
    )


if __name__ == "__main__":
    main()
