"""GPU check at the real model's scale: Qwen2.5-VL-7B's decoder shape, random weights, bf16 on CUDA.

Builds a random-weight Qwen2.5-VL whose decoder has the 7B shape (28 layers, hidden 3584, 28 heads,
4 KV heads, intermediate 18944, vocabulary 152064; a 2-block vision tower, whose output width is the
decoder's: only the decoder's cost is checked) with the tiny kit's tokenizer/processor (offline, no
download), and prints three tables:

1. one teacher-forced forward at S = 800 and 1300 tokens: plain SDPA vs readl's attention capture (the
   last 512 query rows, 225 "image" + 2 anomaly-word key columns) vs eager ``output_attentions``: time
   (median of --repeats) and the extra peak memory over the loaded model;
2. generate tokens/s at batch 1 and 8 (greedy, --new-tokens new tokens each, prompt of --prompt-len);
3. one GRPO step with LoRA, G = 8 rollouts of 512 new tokens (sampled; a random model never writes EOS, so
   all 512), CGRO (format + accuracy + consistency reward: the capture pass on the policy) vs R1 (format +
   accuracy): time and peak memory.

Needs only torch, transformers, peft, trl and accelerate (plus readl itself); must finish within 8 minutes
on one H200. CI never runs it on a GPU; tests/integration/test_gpu_check.py runs the small CPU mode
(``--layers 2 --device cpu``: a 64-wide decoder, tiny sequences) so the script keeps working.

Run: ``python benchmarks/gpu_check.py`` (CUDA) or ``python benchmarks/gpu_check.py --layers 2 --device cpu``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHAPE_7B = {"hidden": 3584, "heads": 28, "kv_heads": 4, "intermediate": 18944, "vocab": 152064}
SHAPE_SMALL = {"hidden": 64, "heads": 4, "kv_heads": 2, "intermediate": 128, "vocab": None}  # vocab = tokenizer's
N_IMAGE, N_ANOMALY = 225, 2


def _args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--seq-lens", type=int, nargs="+", default=None, help="forward lengths (default 800 1300)")
    ap.add_argument("--rows", type=int, default=None, help="captured query rows (default 512)")
    ap.add_argument("--new-tokens", type=int, default=None, help="generate: new tokens (default 256)")
    ap.add_argument("--prompt-len", type=int, default=None, help="generate: prompt tokens (default 300)")
    ap.add_argument("--completion", type=int, default=None, help="GRPO: max new tokens (default 512)")
    ap.add_argument("--image-size", type=int, default=None, help="GRPO: image side (default 420)")
    ap.add_argument("--generations", type=int, default=8, help="GRPO: G rollouts of one image")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-grpo", action="store_true")
    a = ap.parse_args(argv)
    small = a.device == "cpu"
    defaults = {
        "seq_lens": [48, 80] if small else [800, 1300],
        "rows": 16 if small else 512,
        "new_tokens": 8 if small else 256,
        "prompt_len": 32 if small else 300,
        "completion": 8 if small else 512,
        "image_size": 112 if small else 420,
    }
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.shape = SHAPE_SMALL if small else SHAPE_7B
    return a


def _build(args):
    """Random-weight model with the requested decoder shape + the tiny kit's processor."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from readl.localization.attention import enable_capture
    from readl.model.loading import load_processor
    from readl.model.tiny import _mrope_section, ensure_tiny_model

    tiny = ensure_tiny_model()
    processor = load_processor(tiny)
    cfg = Qwen2_5_VLConfig.from_pretrained(tiny)
    s, t = args.shape, cfg.text_config
    t.hidden_size, t.num_hidden_layers, t.intermediate_size = s["hidden"], args.layers, s["intermediate"]
    t.num_attention_heads, t.num_key_value_heads = s["heads"], s["kv_heads"]
    t.head_dim = s["hidden"] // s["heads"]
    t.vocab_size = s["vocab"] or t.vocab_size
    t.max_position_embeddings = 8192
    t.rope_parameters = {**t.rope_parameters, "mrope_section": _mrope_section(t.head_dim)}
    cfg.vision_config.out_hidden_size = s["hidden"]
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    torch.manual_seed(0)
    with torch.device(args.device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, dtype=dtype).eval()
    tiny_model_gen = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny).generation_config
    model.generation_config.eos_token_id = tiny_model_gen.eos_token_id
    model.generation_config.pad_token_id = tiny_model_gen.pad_token_id
    return enable_capture(model), processor


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _measure(fn, device, repeats: int) -> tuple[float, float | None]:
    """(median seconds, extra peak MiB over what was allocated before; None on CPU) of ``fn()``."""
    cuda = torch.device(device).type == "cuda"
    fn()  # warm-up
    _sync(device)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else None
    return statistics.median(times), peak


def _text_ids(processor, n: int, b: int, device) -> torch.Tensor:
    """(b, n) random ordinary token ids (no special token: no image is fed in the text-only sections)."""
    tok = processor.tokenizer
    special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
    pool = torch.tensor([i for i in range(len(tok)) if i not in special])
    g = torch.Generator().manual_seed(n * 31 + b)
    return pool[torch.randint(len(pool), (b, n), generator=g)].to(device)


def forward_table(model, processor, args) -> None:
    from readl.localization.attention import CAPTURE_IMPLEMENTATION, capture_attention

    print(
        f"\n1. teacher-forced forward, batch 1 ({args.layers} layers): capture = last {args.rows} rows x "
        f"{N_IMAGE} image + {N_ANOMALY} anomaly-word columns (fewer in the small CPU mode)"
    )
    print(f"{'S':>6} {'variant':>8} {'ms':>9} {'x plain':>8} {'extra peak MiB':>15}")
    for s in args.seq_lens:
        ids = _text_ids(processor, s, 1, args.device)
        k = min(N_IMAGE + N_ANOMALY, s // 2)  # the small CPU mode has fewer tokens than 227
        cols = torch.arange(s // 4, s // 4 + k, device=args.device)[None]  # (1, K) key columns, before the rows
        rows = min(args.rows, s // 4)

        def plain():
            with torch.no_grad():
                model(input_ids=ids, use_cache=False, logits_to_keep=1)

        def capture():
            with torch.no_grad(), capture_attention(cols, query_start=s - rows) as cap:
                model(input_ids=ids, use_cache=False, logits_to_keep=1)
            cap.result()

        def eager():
            with torch.no_grad():
                model(input_ids=ids, use_cache=False, logits_to_keep=1, output_attentions=True)

        results = {
            "plain": _measure(plain, args.device, args.repeats),
            "capture": _measure(capture, args.device, args.repeats),
        }
        model.set_attn_implementation("eager")
        try:
            results["eager"] = _measure(eager, args.device, args.repeats)
        finally:
            model.set_attn_implementation(CAPTURE_IMPLEMENTATION)
        for name, (sec, peak) in results.items():
            mem = f"{peak:.0f}" if peak is not None else "-"
            print(f"{s:>6} {name:>8} {sec * 1e3:>9.1f} {sec / results['plain'][0]:>7.3f}x {mem:>15}")


def generate_table(model, processor, args) -> None:
    print(f"\n2. generate (greedy, {args.new_tokens} new tokens, prompt {args.prompt_len} tokens)")
    print(f"{'batch':>6} {'s':>8} {'tokens/s':>10} {'extra peak MiB':>15}")
    for b in (1, 8):
        ids = _text_ids(processor, args.prompt_len, b, args.device)

        def gen():
            with torch.no_grad():
                model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                )

        sec, peak = _measure(gen, args.device, 1)
        mem = f"{peak:.0f}" if peak is not None else "-"
        print(f"{b:>6} {sec:>8.2f} {b * args.new_tokens / sec:>10.1f} {mem:>15}")


def grpo_table(model, processor, args) -> None:
    import pandas as pd

    from readl.config import Params
    from readl.training.data import load_manifest
    from readl.training.train import build_trainer

    g = args.generations
    print(f"\n3. one GRPO step with LoRA: G = {g} rollouts x {args.completion} new tokens (1 image, sampled)")
    print(f"{'objective':>10} {'s':>8} {'peak MiB':>9}")
    images = [("data/raw/mvtec_ad/grid/test/bent/000.png", 1), ("data/raw/mvtec_ad/grid/test/good/000.png", 0)]
    cuda = torch.device(args.device).type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "train.parquet"
        pd.DataFrame(images, columns=["image_path", "label"]).assign(source="gpu_check", category="grid").to_parquet(
            manifest
        )
        frame = load_manifest(manifest, root=REPO).iloc[:1]
        for name, rewards in (("CGRO", ["format", "accuracy", "consistency"]), ("R1", ["format", "accuracy"])):
            params = Params.model_validate(
                {
                    "model": {"base": "tiny", "image_size": args.image_size},
                    "train": {
                        "rewards": rewards,
                        "num_generations": g,
                        "per_device_train_batch_size": g,
                        "max_completion_length": args.completion,
                        "max_steps": 1,
                        "save_steps": 1000,
                        "gradient_checkpointing": cuda,
                        "logging_steps": 1,
                    },
                }
            )
            trainer = build_trainer(params, frame, Path(tmp) / name, model_and_processor=(model, processor))
            trainer.remove_callback(__import__("transformers").trainer_callback.PrinterCallback)
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            trainer.train()
            _sync(args.device)
            sec = time.perf_counter() - t0
            peak = f"{torch.cuda.max_memory_allocated() / 2**20:.0f}" if cuda else "-"
            print(f"{name:>10} {sec:>8.2f} {peak:>9}")
            model = trainer.model.unload() if hasattr(trainer.model, "unload") else model  # the LoRA off again
            model.eval()
            del trainer


def main(argv=None) -> None:
    args = _args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; the small CPU mode is `--layers 2 --device cpu`")
    t0 = time.perf_counter()
    name = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else "cpu"
    s = args.shape
    print(
        f"gpu_check on {name}: decoder {args.layers} layers, hidden {s['hidden']}, {s['heads']} heads, "
        f"{s['kv_heads']} KV heads, intermediate {s['intermediate']}; torch {torch.__version__}"
    )
    model, processor = _build(args)
    print(
        f"model built in {time.perf_counter() - t0:.1f} s "
        f"({sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params)"
    )
    forward_table(model, processor, args)
    generate_table(model, processor, args)
    if not args.skip_grpo:
        grpo_table(model, processor, args)
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
