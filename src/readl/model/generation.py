"""The generation seam: who writes the completions that the teacher-forced capture then reads.

Two backends, selected by ``model.generation_backend`` (params.yaml):

* ``hf`` (default, tested): transformers' ``generate`` on the loaded model, a batch of left-padded prompts
  per call (``model.batch_size`` images). Under greedy decoding the completions equal batch-1 ones.
* ``vllm`` (optional extra ``pip install 'readl[vllm]'``, CUDA only): a vLLM engine on the same base model
  (+ the LoRA adapter as a ``LoRARequest``), images resized as for the HF path. vLLM cannot run on the CPU
  machines this project is tested on: this path is documented, not tested; :func:`make_generator` raises a
  clear error when vLLM is not installed.

Either way the completions' token ids go to :meth:`readl.model.inference.Predictor.capture`, the
teacher-forced HF pass, so P(Yes) and the ReAL maps (paper Eq. 1-5) are computed the same way.

A generator is a callable ``generator(predictor, inputs, images) -> list[list[int]]``: ``inputs`` is the
processor batch from ``Predictor.encode`` (on the model's device), ``images`` the resized RGB images; it
returns one list of completion token ids per image, cut before the first EOS / pad token.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path

__all__ = ["BACKENDS", "HFGenerator", "VLLMGenerator", "cut_at_stop", "make_generator"]

BACKENDS = ("hf", "vllm")


def cut_at_stop(rows: Iterable[list[int]], stop: set[int]) -> list[list[int]]:
    """Each row up to (excluding) its first token in ``stop`` (EOS / pad ids)."""
    out = []
    for row in rows:
        cut = next((i for i, t in enumerate(row) if t in stop), len(row))
        out.append(list(row[:cut]))
    return out


def _stop_ids(predictor) -> set[int]:
    tok = predictor.tokenizer
    eos = predictor.model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    return {i for i in (tok.eos_token_id, tok.pad_token_id, *eos) if i is not None}


class HFGenerator:
    """transformers ``generate`` on the predictor's model: one call per batch of left-padded prompts."""

    name = "hf"

    def __call__(self, predictor, inputs, images=None) -> list[list[int]]:
        import torch

        g = predictor.generation
        with torch.no_grad():
            out = predictor.model.generate(
                **inputs,
                max_new_tokens=g.max_new_tokens,
                do_sample=g.do_sample,
                temperature=g.temperature if g.do_sample else None,
                top_p=g.top_p if g.do_sample else None,
                top_k=None,
            )  # (B, P + T_max)
        return cut_at_stop(out[:, inputs["input_ids"].shape[1] :].tolist(), _stop_ids(predictor))


class VLLMGenerator:
    """vLLM generation (CUDA; untested here, see the module docstring). The engine starts on the first call.

    Args:
        base: the base model folder or HF id (the same weights as the HF model: the completions must be
            tokens of the same tokenizer).
        adapter: LoRA adapter folder or ``None``.
        gpu_memory_utilization: share of the GPU's memory vLLM may take (the HF model for the capture
            shares the GPU).
        max_model_len: context length of the engine (prompt + completion tokens).

    Raises:
        RuntimeError: vLLM is not installed (on construction).
    """

    name = "vllm"

    def __init__(
        self,
        base: str | Path,
        adapter: str | Path | None = None,
        gpu_memory_utilization: float = 0.5,
        max_model_len: int = 4096,
    ):
        if importlib.util.find_spec("vllm") is None:
            raise RuntimeError(
                "model.generation_backend is 'vllm' but vllm is not installed: `pip install 'readl[vllm]'` on a "
                "CUDA machine, or set model.generation_backend: hf in params.yaml"
            )
        self.base, self.adapter = str(base), (str(adapter) if adapter is not None else None)
        self.gpu_memory_utilization, self.max_model_len = gpu_memory_utilization, max_model_len
        self._llm = None

    def _engine(self, image_size: int):
        if self._llm is None:
            from vllm import LLM

            pixels = image_size * image_size
            self._llm = LLM(
                model=self.base,
                enable_lora=self.adapter is not None,
                max_model_len=self.max_model_len,
                gpu_memory_utilization=self.gpu_memory_utilization,
                limit_mm_per_prompt={"image": 1},
                mm_processor_kwargs={"min_pixels": pixels, "max_pixels": pixels},
            )
        return self._llm

    def __call__(self, predictor, inputs, images) -> list[list[int]]:
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        g = predictor.generation
        llm = self._engine(predictor.image_size)
        params = SamplingParams(
            max_tokens=g.max_new_tokens,
            temperature=g.temperature if g.do_sample else 0.0,
            top_p=g.top_p if g.do_sample else 1.0,
            stop_token_ids=sorted(_stop_ids(predictor)),
        )
        lora = LoRARequest("readl", 1, self.adapter) if self.adapter else None
        requests = [{"prompt": predictor.prompt, "multi_modal_data": {"image": im}} for im in images]
        outs = llm.generate(requests, params, lora_request=lora, use_tqdm=False)
        return cut_at_stop((list(o.outputs[0].token_ids) for o in outs), _stop_ids(predictor))


def make_generator(backend: str = "hf", base: str | Path | None = None, adapter: str | Path | None = None):
    """The generator for ``model.generation_backend``.

    Args:
        backend: ``"hf"`` or ``"vllm"``.
        base: base model (needed by ``vllm``; for ``tiny`` pass the resolved folder).
        adapter: LoRA adapter folder (``vllm``) or ``None``.

    Raises:
        ValueError: unknown backend, or ``vllm`` without ``base``.
        RuntimeError: ``vllm`` is not installed.
    """
    if backend == "hf":
        return HFGenerator()
    if backend == "vllm":
        if base is None:
            raise ValueError("the vllm generation backend needs the base model (model.base)")
        return VLLMGenerator(base, adapter)
    raise ValueError(f"unknown model.generation_backend {backend!r}; expected one of {BACKENDS}")
