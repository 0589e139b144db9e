"""Cost of the ReAL attention capture vs a plain SDPA forward vs eager ``output_attentions`` (CPU).

A mid-size Qwen2.5-VL (text hidden 512, 8 layers, 8 heads, 2 KV heads; small vision tower, random
weights) runs one teacher-forced forward over 225 image tokens + ~60 prompt tokens + 256 generated
tokens:

  (a) plain SDPA forward              (what generation/training costs anyway)
  (b) SDPA forward with the capture   (rows of the 256 completion positions, image + anomaly columns)
  (c) eager with output_attentions    (the reference, materialises every layer's N x N matrix)

Time: median of --repeats forwards after a warm-up, in one subprocess per variant. Peak memory: each
variant runs once more in a fresh subprocess (glibc mmap threshold fixed at 64 KiB so freed tensors
leave the resident set); "extra peak" = ru_maxrss after the forward minus the resident set just before it (both
in MiB), i.e. what the forward itself adds on top of model + inputs. Targets (issue 2): (b) <= 1.2x
the time of (a); extra peak of (b) over (a) <= 10% of the extra peak of (c) over (a).

Run: ``python benchmarks/attention_capture.py``
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

N_IMAGE, N_PROMPT, N_GEN = 225, 60, 256


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _build(tmp: Path):
    from PIL import Image
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from readl.localization.attention import enable_capture
    from readl.model.tokens import anomaly_token_positions, image_token_positions
    from readl.model.loading import load_processor
    from readl.model.prompting import QUESTION
    from readl.model.tiny import build_tiny_model

    tiny = build_tiny_model(tmp / "tiny")
    processor = load_processor(tiny)
    base = Qwen2_5_VLConfig.from_pretrained(tiny)
    text = base.text_config.to_dict()
    text.update(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                num_key_value_heads=2, layer_types=None)  # fmt: skip
    text["rope_parameters"] = {**text["rope_parameters"], "mrope_section": [8, 12, 12]}  # head_dim 64
    vision = base.vision_config.to_dict()
    vision.update(hidden_size=256, intermediate_size=512, num_heads=4, depth=4, out_hidden_size=512,
                  fullatt_block_indexes=[3])  # fmt: skip
    cfg = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=base.image_token_id, video_token_id=base.video_token_id,
        vision_start_token_id=base.vision_start_token_id, vision_end_token_id=base.vision_end_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = enable_capture(Qwen2_5_VLForConditionalGeneration(cfg).eval())  # registers readl_capture, switches to it
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(images=[Image.new("RGB", (420, 420), (90, 120, 60))], text=[prompt], return_tensors="pt")
    n_text = inputs["input_ids"].shape[1] - N_IMAGE
    gen = torch.randint(20, cfg.text_config.vocab_size, (1, N_GEN + max(0, N_PROMPT - n_text)))  # filler + "generated" tokens
    ids = torch.cat([inputs["input_ids"], gen], 1)
    batch = dict(inputs, input_ids=ids, attention_mask=torch.ones_like(ids))
    batch["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(gen)], 1)
    key_index = torch.cat([
        image_token_positions(inputs["input_ids"], cfg.image_token_id),
        anomaly_token_positions(inputs["input_ids"], processor.tokenizer),
    ], 1)  # fmt: skip
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


def run_variant(variant: str, repeats: int, what: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        model, batch, key_index, query_start = _build(Path(tmp))
    short = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    short = {k: v[:, -64:] for k, v in short.items()}
    with torch.no_grad():
        model(**short, use_cache=False)  # warm-up on a short text-only input (lower peak than the run)
    row = {"variant": variant, "seq_len": int(batch["input_ids"].shape[1]), "threads": torch.get_num_threads()}
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
    ap.add_argument("--variant", choices=["a", "b", "c"], help=argparse.SUPPRESS)
    ap.add_argument("--what", choices=["time", "memory"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.repeats, args.what)))
        return
    # Memory runs: a fixed mmap threshold makes glibc hand every block >= 64 KiB straight back to the
    # OS, so the resident set follows live tensors instead of the allocator's cache. Time runs use the
    # default allocator (the fixed threshold costs a page fault storm on every large allocation).
    def child(v: str, what: str) -> dict:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536") if what == "memory" else None
        out = subprocess.run([sys.executable, __file__, "--variant", v, "--what", what, "--repeats", str(args.repeats)],
                             check=True, capture_output=True, text=True, env=env).stdout  # fmt: skip
        return json.loads(out.strip().splitlines()[-1])

    rows = {v: {**child(v, "time"), **child(v, "memory")} for v in "abc"}
    a, b, c = rows["a"], rows["b"], rows["c"]
    names = {"a": "(a) plain SDPA forward", "b": "(b) SDPA + ReAL capture", "c": "(c) eager output_attentions"}
    print(f"seq_len {a['seq_len']} ({N_IMAGE} image + ~{N_PROMPT} prompt + {N_GEN} generated), "
          f"hidden 512, 8 layers, 8 heads / 2 KV heads, CPU, {a['threads']} threads, median of {args.repeats}")  # fmt: skip
    print(f"{'variant':32} {'time (ms)':>10} {'x (a)':>7} {'extra peak (MiB)':>17} {'over (a) (MiB)':>15}")
    for v in "abc":
        r = rows[v]
        print(f"{names[v]:32} {r['time_s'] * 1e3:10.1f} {r['time_s'] / a['time_s']:7.2f} "
              f"{r['extra_peak_mib']:17.1f} {r['extra_peak_mib'] - a['extra_peak_mib']:15.1f}")  # fmt: skip
    over_b = b["extra_peak_mib"] - a["extra_peak_mib"]
    over_c = c["extra_peak_mib"] - a["extra_peak_mib"]
    ratio = over_b / over_c if over_c > 0 else float("nan")
    print(f"time (b)/(a) = {b['time_s'] / a['time_s']:.3f} (target <= 1.2); "
          f"memory over (a): (b)/(c) = {ratio:.1%} (target <= 10%)")  # fmt: skip


if __name__ == "__main__":
    main()
