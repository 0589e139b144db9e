"""GPU check at the real model's scale: Qwen2.5-VL-7B's decoder shape, random weights, bf16 on CUDA.

Builds a random-weight Qwen2.5-VL whose decoder has the 7B shape (28 layers, hidden 3584, 28 heads,
4 KV heads, intermediate 18944, vocabulary 152064; a 2-block vision tower, whose output width is the
decoder's: only the decoder's cost is checked) with the tiny kit's tokenizer/processor (offline, no
download), and prints four tables:

1. one teacher-forced forward at S = 800 and 1300 tokens: plain SDPA vs readl's attention capture (the
   last 512 query rows, 225 "image" + 2 anomaly-word key columns) vs eager ``output_attentions``: time
   (median of --repeats) and the extra peak memory over the loaded model;
2. generate tokens/s at batch 1 and 8 (greedy, --new-tokens new tokens each, prompt of --prompt-len);
3. one GRPO step with LoRA, G = 8 rollouts of 512 new tokens (sampled; a random model never writes EOS, so
   all 512), CGRO (format + accuracy + consistency reward: the capture pass on the policy) vs R1 (format +
   accuracy): time and peak memory;
4. the pipeline on --images (16) bundled real images (MVTec AD grid under data/raw: half calibration, half
   evaluation, both labels in each): generate WITH the image + the capture pass on the calibration half
   (readl's Predictor on this model, through the stages' prediction path), calibrate (tau_t, tau_i, the
   decision threshold, t_pixel), generate + capture on the evaluation half, evaluate; per phase seconds,
   images/s and peak memory (CUDA), then the image and pixel AUROC (any value: random weights) and the
   malformed answers. With vLLM installed (CUDA) the generate phase runs again on the project's vLLM backend
   (``model.generation_backend: vllm``, untested here); else one line says it was skipped.

Needs only torch, transformers, peft, trl and accelerate (plus readl itself, and data/raw for section 4);
must finish within 8 minutes on one H200 (``--skip-grpo`` / ``--skip-pipeline`` leave sections 3 / 4 out). CI
never runs it on a GPU; tests/integration/test_gpu_check.py runs the small CPU mode (``--layers 2 --device cpu``:
a 64-wide decoder, tiny sequences, 112 px images, 8 new tokens) so the script keeps working.

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
MVTEC_GRID = Path("data/raw/mvtec_ad/grid")  # bundled real images (section 4), relative to the repository


def _args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--seq-lens", type=int, nargs="+", default=None, help="forward lengths (default 800 1300)")
    ap.add_argument("--rows", type=int, default=None, help="captured query rows (default 512)")
    ap.add_argument("--new-tokens", type=int, default=None, help="generate, pipeline: new tokens (default 256)")
    ap.add_argument("--prompt-len", type=int, default=None, help="generate: prompt tokens (default 300)")
    ap.add_argument("--completion", type=int, default=None, help="GRPO: max new tokens (default 512)")
    ap.add_argument("--image-size", type=int, default=None, help="GRPO, pipeline: image side (default 420)")
    ap.add_argument("--generations", type=int, default=8, help="GRPO: G rollouts of one image")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-grpo", action="store_true")
    ap.add_argument("--images", type=int, default=16, help="pipeline: bundled images, half calibration, half eval")
    ap.add_argument("--skip-pipeline", action="store_true")
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


def _pipeline_images(n: int):
    """``n`` bundled MVTec AD grid images as two manifests (calibration, evaluation), each half with both labels:
    half anomalous (round-robin over the defect types, with their masks), half normal (test/good, train/good)."""
    import pandas as pd

    root = REPO / MVTEC_GRID
    if not (root / "test").is_dir():
        raise SystemExit(f"gpu_check: no {MVTEC_GRID}/test (the bundled images: `dvc pull`); or pass --skip-pipeline")
    defects = sorted(d.name for d in (root / "test").iterdir() if d.is_dir() and d.name != "good")
    by_defect = [sorted((root / "test" / d).glob("*.png")) for d in defects]
    anomalous = [files[i] for i in range(max(map(len, by_defect))) for files in by_defect if i < len(files)]
    normal = sorted((root / "test/good").glob("*.png")) + sorted((root / "train/good").glob("*.png"))
    n_anom = min(n // 2, len(anomalous))
    if n < 4 or n - n_anom > len(normal):
        raise SystemExit(f"gpu_check: --images must be 4 to {len(anomalous) + len(normal)} (bundled grid images)")

    def row(path: Path, label: int) -> dict:
        mask = root / "ground_truth" / path.parent.name / f"{path.stem}_mask.png" if label else None
        return {
            "image_path": str(path),
            "mask_path": str(mask) if mask is not None else None,
            "label": label,
            "source": "mvtec_ad",
            "category": "grid",
        }

    rows = [row(p, 1) for p in anomalous[:n_anom]], [row(p, 0) for p in normal[: n - n_anom]]
    calib = pd.DataFrame(rows[0][0::2] + rows[1][0::2])
    evals = pd.DataFrame(rows[0][1::2] + rows[1][1::2])
    return calib, evals


def _phase(name: str, n: int, fn, device):
    """Run ``fn()`` once, print its row (phase, s, images/s, peak MiB: CUDA's peak allocated during it) and
    return its result."""
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    sec = time.perf_counter() - t0
    peak = f"{torch.cuda.max_memory_allocated() / 2**20:.0f}" if cuda else "-"
    print(f"{name:>28} {sec:>8.2f} {n / sec:>9.2f} {peak:>9}")
    return out


def _vllm_generator(model, processor, folder: Path):
    """The project's vLLM backend (``model.generation_backend: vllm``) on this random model, saved to ``folder``
    with the tiny kit's tokenizer / processor files (vLLM loads a model folder). CUDA only; never tested here."""
    import shutil

    from readl.model.generation import make_generator
    from readl.model.tiny import ensure_tiny_model

    tiny = ensure_tiny_model()
    model.save_pretrained(folder)
    for f in tiny.iterdir():
        if f.is_file() and f.name not in ("config.json", "generation_config.json") and f.suffix != ".safetensors":
            shutil.copy(f, folder / f.name)
    for name in ("processor_config.json", "tokenizer_config.json"):  # vLLM's process has no readl processor class
        f = folder / name
        if f.is_file():
            f.write_text(f.read_text().replace('"ReadlQwenProcessor"', '"Qwen2_5_VLProcessor"'))
    return make_generator("vllm", base=folder)


def pipeline_table(model, processor, args, calib, evals) -> None:
    """Section 4: the calibrate and evaluate stages' library path on the manifests ``calib`` and ``evals``
    (:func:`_pipeline_images`)."""
    import importlib.util

    from readl.atomic import write_json
    from readl.config import Params
    from readl.evaluation.calibration import calibrate_thresholds, pixel_thresholds
    from readl.evaluation.decision import fit_decision_threshold, image_score, read_decision
    from readl.evaluation.evaluate import evaluate, score_images
    from readl.evaluation.predictions import predict_manifest
    from readl.evaluation.report import clean_json
    from readl.localization.thresholds import ThresholdPair, ThresholdSpec, read_thresholds_file, resolve_taus
    from readl.model.generation import make_generator
    from readl.predictor import open_image, wrap_predictor

    params = Params.model_validate(
        {"model": {"base": "tiny", "image_size": args.image_size, "max_new_tokens": args.new_tokens}}
    )
    mcfg, loc, policy = params.model, params.localization, params.evaluate.malformed

    hf = wrap_predictor(model, processor, params, generator=make_generator("hf"))  # as build_predictor does
    base = f"gpu_check random weights, {args.layers} layers"  # not a folder: the prediction cache keys on the name
    print(
        f"\n4. the pipeline on {args.images} bundled images ({len(calib)} calibration + {len(evals)} evaluation, "
        f"MVTec AD grid, both labels in each): image {args.image_size} px, greedy, {args.new_tokens} new tokens, "
        f"batch {mcfg.batch_size} (the calibrate / evaluate stages' library path; after a 1-image warm-up)"
    )
    print(f"{'phase':>28} {'s':>8} {'images/s':>9} {'peak MiB':>9}")
    hf.predict([open_image(calib["image_path"].iloc[0])])  # warm-up (the first image pass), not timed
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def predict(frame, p, cache: str):
            return predict_manifest(frame, p, base, None, tmp / cache, mcfg.batch_size)

        items = _phase("generate+capture (calib)", len(calib), lambda: predict(calib, hf, "calib"), args.device)

        def calibrate() -> Path:  # readl.stages.calibrate.run from its predictions on
            record, _, _ = calibrate_thresholds([p for _, p in items], loc)
            scores = [image_score(p.score, p.parsed.answer is None, policy) for _, p in items]
            labels = [int(r["label"]) for r, _ in items]
            ccfg = params.calibrate
            decision = fit_decision_threshold(scores, labels, ccfg.decision, ccfg.false_alarm_rate)
            record["decision"] = {**decision, "score": "P(Yes)", "malformed": policy}
            taus = ThresholdPair(*(ThresholdSpec("fixed", record[k]["value"]) for k in ("tau_t", "tau_i")))
            results = score_images(items, loc, taus, malformed=policy)
            record["pixel"] = pixel_thresholds(results, ccfg.pixel_false_alarm_rate)
            return write_json(tmp / "thresholds.json", clean_json(record))

        thresholds = _phase("calibrate", len(calib), calibrate, args.device)
        calib_malformed = sum(p.parsed.answer is None for _, p in items)
        items = _phase("generate+capture (eval)", len(evals), lambda: predict(evals, hf, "eval"), args.device)

        def run_evaluate() -> dict:  # readl.stages.evaluate.run from its predictions on (no baselines, no files)
            results = score_images(items, loc, resolve_taus(loc, thresholds), malformed=policy)
            pixel = read_thresholds_file(thresholds).get("pixel") or {}
            metrics, _ = evaluate(
                results,
                loc.mode,
                decision_threshold=read_decision(thresholds)["value"],
                pixel_thresholds=pixel.get("value"),
                reasoning_datasets=params.evaluate.reasoning_datasets,
            )
            return metrics

        metrics = _phase("evaluate", len(evals), run_evaluate, args.device)
        fmt = lambda v: "nan" if v is None or v != v else f"{v:.3f}"  # noqa: E731
        taus = read_thresholds_file(thresholds)
        print(
            f"evaluation: image AUROC {fmt(metrics['image']['AUROC'])}, pixel AUROC {fmt(metrics['pixel']['AUROC'])}; "
            f"malformed answers {metrics['n_malformed']}/{metrics['n_images']} (calibration {calib_malformed}/"
            f"{len(calib)}); tau_t {taus['tau_t']['value']:.4f}, tau_i {taus['tau_i']['value']:.4f}, "
            f"decision P(Yes) >= {taus['decision']['value']:.4f} (random weights: any value)"
        )
        if importlib.util.find_spec("vllm") is None:
            print("vLLM: not installed, skipped")
        elif torch.device(args.device).type != "cuda":
            print("vLLM: installed, skipped (CUDA only)")
        else:
            print(
                "vLLM: installed; the calibration half again with model.generation_backend: vllm (the time "
                "includes the engine's start; peak MiB: this process only, the engine holds its own GPU share)"
            )
            try:
                vllm = wrap_predictor(
                    model, processor, params, generator=_vllm_generator(model, processor, tmp / "model")
                )
                _phase("generate+capture (calib, vLLM)", len(calib), lambda: predict(calib, vllm, "vllm"), args.device)
            except Exception as exc:  # noqa: BLE001 - untested path: report it, keep the run's other numbers
                print(f"vLLM: failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def main(argv=None) -> None:
    args = _args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; the small CPU mode is `--layers 2 --device cpu`")
    images = None if args.skip_pipeline else _pipeline_images(args.images)  # checked before the model is built
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
    if not args.skip_pipeline:
        pipeline_table(model, processor, args, *images)
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
