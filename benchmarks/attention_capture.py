"""Cost of the ReAL attention capture vs a plain SDPA forward vs eager ``output_attentions`` (CPU), per family.

A mid-size model of the chosen backbone family (``--family``: qwen2_5_vl (default), qwen2_vl, qwen3_vl, internvl; text
hidden 512, 8 layers, 8 heads, 2 KV heads; small vision tower, random weights; the tiny kit's architecture at
these sizes) runs one teacher-forced forward over the image tokens of a 420x420 image (225; 169 for Qwen3-VL,
256 for InternVL's 448 px tile)
+ ~60 prompt tokens + 256 generated tokens:

  (a) plain SDPA forward              (what generation/training costs anyway)
  (b) SDPA forward with the capture   (rows of the 256 completion positions, image + anomaly columns)
  (c) eager with output_attentions    (the reference, materialises every layer's N x N matrix)

Time: median of --repeats forwards after a warm-up, in one subprocess per variant. Peak memory: each
variant runs once more in a fresh subprocess (glibc mmap threshold fixed at 64 KiB so freed tensors
leave the resident set); "extra peak" = ru_maxrss after the forward minus the resident set just before it (both
in MiB), i.e. what the forward itself adds on top of model + inputs. Targets (issue 2): (b) <= 1.2x
the time of (a); extra peak of (b) over (a) <= 10% of the extra peak of (c) over (a).

Also printed: the capture-vs-eager max abs difference of the captured rows (fp32; the tests bound it by 1e-5).

Run: ``python benchmarks/attention_capture.py [--family qwen3_vl]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

N_PROMPT, N_GEN = 60, 256


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _build(tmp: Path, family: str):
    from PIL import Image

    from readl.localization.attention import enable_capture
    from readl.model.families import FAMILIES
    from readl.model.loading import load_processor
    from readl.model.prompting import QUESTION
    from readl.model.tiny import TinySpec, build_tiny_model, kit_config
    from readl.model.tokens import anomaly_token_positions, image_token_positions

    fam = FAMILIES[family]
    kit = build_tiny_model(tmp / "kit", kit=fam.kit)
    processor = load_processor(kit)
    spec = type(
        "Mid",
        (TinySpec,),
        dict(
            text_hidden=512,
            text_intermediate=1376,
            text_layers=8,
            text_heads=8,
            text_kv_heads=2,
            vision_hidden=256,
            vision_intermediate=512,
            vision_heads=4,
            vision_depth=4,
        ),
    )
    cfg = kit_config(fam.kit, processor.tokenizer, spec)
    torch.manual_seed(0)
    model = enable_capture(fam.load_class()(cfg).eval())  # registers readl_capture, switches to it
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(images=[Image.new("RGB", (420, 420), (90, 120, 60))], text=[prompt], return_tensors="pt")
    img_pos = image_token_positions(inputs["input_ids"], fam.image_token_id(cfg))
    n_text = inputs["input_ids"].shape[1] - img_pos.shape[1]
    gen = torch.randint(
        20, cfg.text_config.vocab_size, (1, N_GEN + max(0, N_PROMPT - n_text))
    )  # filler + "generated" tokens
    ids = torch.cat([inputs["input_ids"], gen], 1)
    batch = dict(inputs, input_ids=ids, attention_mask=torch.ones_like(ids))
    if "mm_token_type_ids" in inputs:  # Qwen's M-RoPE token types (InternVL has none)
        batch["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(gen)], 1)
    key_index = torch.cat([img_pos, anomaly_token_positions(inputs["input_ids"], processor.tokenizer)], 1)
    return model, batch, key_index, ids.shape[1] - N_GEN - 1


def _forward(variant: str, model, batch, key_index, query_start):
    from readl.localization.attention import CAPTURE_IMPLEMENTATION, capture_attention

    with torch.no_grad():
        if variant == "a":
            return model(**batch, use_cache=False).logits
        if variant == "b":
            with capture_attention(key_index, query_start) as cap:
                model(**batch, use_cache=False)
            return cap.result()
        model.set_attn_implementation("eager")
        try:
            return model(**batch, use_cache=False, output_attentions=True).attentions
        finally:
            model.set_attn_implementation(CAPTURE_IMPLEMENTATION)


def run_variant(variant: str, repeats: int, what: str, family: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        model, batch, key_index, query_start = _build(Path(tmp), family)
    short = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    short = {k: v[:, -64:] for k, v in short.items()}
    with torch.no_grad():
        model(**short, use_cache=False)  # warm-up on a short text-only input (lower peak than the run)
    row = {
        "variant": variant,
        "seq_len": int(batch["input_ids"].shape[1]),
        "threads": torch.get_num_threads(),
        "n_image": int(key_index.shape[1]),
    }
    if what == "diff":  # capture vs eager on the same forward: max |difference| over the captured rows
        got = _forward("b", model, batch, key_index, query_start)  # (1, Q, K)
        att = _forward("c", model, batch, key_index, query_start)  # L x (1, H, N, N)
        ref = torch.stack(att).mean(dim=(0, 2))[:, query_start:, :]  # (1, Q, N)
        ref = torch.take_along_dim(ref, key_index[:, None, :], dim=-1)  # (1, Q, K)
        row["max_abs_diff"] = float((got - ref).abs().max())
        return row
    if what == "memory":
        before = _rss_mib()
        _forward(variant, model, batch, key_index, query_start)
        row["extra_peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
        return row
    _forward(variant, model, batch, key_index, query_start)  # warm-up at full size
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _forward(variant, model, batch, key_index, query_start)
        times.append(time.perf_counter() - t0)
    row["time_s"] = statistics.median(times)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--family", default="qwen2_5_vl", help="backbone family (model_type): qwen2_vl, qwen2_5_vl, qwen3_vl, internvl"
    )
    ap.add_argument("--variant", choices=["a", "b", "c"], help=argparse.SUPPRESS)
    ap.add_argument("--what", choices=["time", "memory", "diff"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    from readl.model.families import FAMILIES

    if args.family not in FAMILIES:
        ap.error(f"--family must be one of {sorted(FAMILIES)}, got {args.family!r}")
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.repeats, args.what, args.family)))
        return

    # Memory runs: a fixed mmap threshold makes glibc hand every block >= 64 KiB straight back to the
    # OS, so the resident set follows live tensors instead of the allocator's cache. Time runs use the
    # default allocator (the fixed threshold costs a page fault storm on every large allocation).
    def child(v: str, what: str) -> dict:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536") if what == "memory" else None
        cmd = [
            sys.executable,
            __file__,
            "--variant",
            v,
            "--what",
            what,
            "--repeats",
            str(args.repeats),
            "--family",
            args.family,
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        return json.loads(out.strip().splitlines()[-1])

    rows = {v: {**child(v, "time"), **child(v, "memory")} for v in "abc"}
    diff = child("b", "diff")["max_abs_diff"]
    a, b, c = rows["a"], rows["b"], rows["c"]
    names = {"a": "(a) plain SDPA forward", "b": "(b) SDPA + ReAL capture", "c": "(c) eager output_attentions"}
    print(
        f"{FAMILIES[args.family].label}: seq_len {a['seq_len']} ({a['n_image']} image + anomaly-word columns, "
        f"~{N_PROMPT} prompt + {N_GEN} generated tokens), "
        f"hidden 512, 8 layers, 8 heads / 2 KV heads, CPU, {a['threads']} threads, median of {args.repeats}"
    )
    print(f"{'variant':32} {'time (ms)':>10} {'x (a)':>7} {'extra peak (MiB)':>17} {'over (a) (MiB)':>15}")
    for v in "abc":
        r = rows[v]
        print(
            f"{names[v]:32} {r['time_s'] * 1e3:10.1f} {r['time_s'] / a['time_s']:7.2f} "
            f"{r['extra_peak_mib']:17.1f} {r['extra_peak_mib'] - a['extra_peak_mib']:15.1f}"
        )
    over_b = b["extra_peak_mib"] - a["extra_peak_mib"]
    over_c = c["extra_peak_mib"] - a["extra_peak_mib"]
    ratio = over_b / over_c if over_c > 0 else float("nan")
    print(
        f"time (b)/(a) = {b['time_s'] / a['time_s']:.3f} (target <= 1.2); "
        f"memory over (a): (b)/(c) = {ratio:.1%} (target <= 10%); "
        f"capture vs eager max |diff| = {diff:.2e} (fp32)"
    )


if __name__ == "__main__":
    main()
