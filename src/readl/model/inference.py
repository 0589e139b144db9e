"""Generate a reasoning chain and answer, then read the score and the attention maps in one pass.

Steps for a batch of images (left-padded prompts of length ``P``):

1. ``generate`` writes each completion (greedy unless sampling is asked for).
2. One teacher-forced forward over prompt + completion (+ the answer prefix when the completion has no
   ``<answer>``, see :func:`readl.model.prompting.answer_prefix_for`) with the attention capture on:
   it yields the Yes/No logits at the answer position and, for every completion token, its attention to
   the image tokens (Eq. 1) and to the question's anomaly-word tokens (Eq. 2), mean over heads and layers.
3. The reasoning tokens (inside ``<think>``) are kept with their maps on the image-token grid.

The ReAL map itself is computed from these by :mod:`readl.localization.anomaly_map`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from readl.localization.attention import capture_attention, enable_capture
from readl.model.prompting import QUESTION, SYSTEM_PROMPT, Parsed, answer_prefix_for, build_messages, parse_completion

__all__ = [
    "GenerationSettings",
    "TokenAttention",
    "Prediction",
    "answer_token_ids",
    "anomaly_token_positions",
    "image_token_positions",
    "reasoning_token_mask",
    "Predictor",
]

_ANOMALY_RE = re.compile(r"(defect|anomal|abnormal)\w*", re.IGNORECASE)


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings. Greedy by default (predict / evaluate); GRPO samples (``do_sample=True``)."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass
class TokenAttention:
    """Attention of a completion's tokens, read in the teacher-forced pass.

    Attributes:
        image_attn: ``(T, h, w)`` float32, attention of each completion token to the image tokens on the
            merged-patch grid, raster order (15x15 for 420x420), mean over heads and layers (Eq. 1).
        anomaly_attn: ``(T, E)`` float32, attention to the E anomaly-word tokens of the question (Eq. 2).
        p_yes: P(Yes) in [0, 1] from the softmax over the "Yes"/"No" logits at the answer position.
        reasoning: ``(T,)`` bool, which completion tokens are reasoning (:func:`reasoning_token_mask`).
    """

    image_attn: np.ndarray
    anomaly_attn: np.ndarray
    p_yes: float
    reasoning: np.ndarray


@dataclass
class Prediction:
    """One image's result before ReAL aggregation.

    Attributes:
        completion: decoded completion (special tokens removed).
        parsed: reasoning / answer / format validity.
        score: P(Yes) in [0, 1] (image anomaly score).
        tokens: the R reasoning tokens (decoded one by one).
        image_attn: ``(R, h, w)`` float32 maps of the reasoning tokens.
        anomaly_attn: ``(R, E)`` float32.
        image_size: ``(H, W)`` of the original image, pixels (the map is upsampled to it).
    """

    completion: str
    parsed: Parsed
    score: float
    tokens: list[str]
    image_attn: np.ndarray
    anomaly_attn: np.ndarray
    image_size: tuple[int, int]
    extra: dict = field(default_factory=dict)


def answer_token_ids(tokenizer) -> tuple[int, int]:
    """Token ids of ``"Yes"`` and ``"No"`` (no leading space, as written after ``<answer>``).

    Raises:
        ValueError: either word is not a single token in this vocabulary.
    """
    ids = []
    for word in ("Yes", "No"):
        enc = tokenizer.encode(word, add_special_tokens=False)
        if len(enc) != 1:
            raise ValueError(f"{word!r} is {len(enc)} tokens in this tokenizer; the Yes/No score needs one token each")
        ids.append(enc[0])
    return ids[0], ids[1]


def image_token_positions(input_ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """Positions of the image tokens per row: ``(B, n_img)`` int64, ascending (raster order).

    Raises:
        ValueError: rows have different numbers of image tokens (images of different sizes in a batch).
    """
    rows = [(row == image_token_id).nonzero()[:, 0] for row in input_ids]
    counts = {len(r) for r in rows}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"image token counts per row differ or are zero: {sorted(counts)}; resize images alike")
    return torch.stack(rows)


def anomaly_token_positions(input_ids: torch.Tensor, tokenizer, question: str = QUESTION) -> torch.Tensor:
    """Positions of the question's anomaly-word tokens (paper Eq. 2, set E_a): ``(B, E)`` int64.

    The question is tokenised alone (it follows ``<|vision_end|>``, a special token, so its tokens are
    the same inside the chat prompt); its sub-word tokens overlapping a word matching
    ``(defect|anomal|abnormal)\\w*`` are E_a; the question's last occurrence in each row gives the offset.

    Raises:
        ValueError: the question has no anomaly word, or a row does not contain the question's tokens.
    """
    enc = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
    q_ids, offsets = enc["input_ids"], enc["offset_mapping"]
    spans = [m.span() for m in _ANOMALY_RE.finditer(question)]
    local = [i for i, (a, b) in enumerate(offsets) if any(a < e and b > s for s, e in spans)]
    if not local:
        raise ValueError(f"question {question!r} contains no anomaly word (defect/anomaly/abnormal)")
    q = torch.tensor(q_ids)
    out = []
    for r, row in enumerate(input_ids):
        windows = row.unfold(0, len(q_ids), 1)  # (N - n_q + 1, n_q)
        hits = (windows == q.to(row.device)).all(dim=1).nonzero()[:, 0]
        if len(hits) == 0:
            raise ValueError(f"row {r}: the prompt does not contain the question {question!r}")
        out.append(hits[-1] + torch.tensor(local, device=row.device))
    return torch.stack(out)


def _char_offsets(tokenizer, ids: list[int]) -> list[int]:
    """offsets[j] = length of the decoded text of ``ids[:j]`` (j = 0..T)."""
    return [len(tokenizer.decode(ids[:j], skip_special_tokens=True)) for j in range(len(ids) + 1)]


def reasoning_token_mask(tokenizer, ids: list[int]) -> tuple[np.ndarray, int | None]:
    """Which completion tokens belong to the reasoning, and where the answer is read.

    Args:
        tokenizer: the model's tokenizer.
        ids: completion token ids (no prompt, no padding).

    Returns:
        ``(mask, answer_index)``: ``mask`` (T,) bool marks tokens whose text lies inside
        ``<think>...</think>`` (or, with no think tag, before ``<answer>``); ``answer_index`` is the index
        of the first token after ``<answer>`` (the answer token), or ``None`` when there is no ``<answer>``.
    """
    offsets = _char_offsets(tokenizer, ids)
    text = tokenizer.decode(ids, skip_special_tokens=True)
    start = text.find("<think>")
    start = 0 if start < 0 else start + len("<think>")
    ends = [i for i in (text.find("</think>", start), text.find("<answer>", start)) if i >= 0]
    end = min(ends) if ends else len(text)
    lo, hi = np.array(offsets[:-1]), np.array(offsets[1:])
    mask = (lo >= start) & (hi <= end) & (hi > lo)
    answer_index = None
    a = text.find("<answer>")
    if a >= 0:
        after = a + len("<answer>")
        answer_index = next((j for j in range(len(ids)) if offsets[j] >= after), len(ids))
    return mask, answer_index


class Predictor:
    """Runs prompt -> generation -> teacher-forced capture for batches of images.

    Args:
        model: a Qwen2.5-VL model (optionally a ``PeftModel``) from :func:`readl.model.loading.load_model`.
        processor: its :class:`~readl.model.processor.ReadlQwenProcessor`.
        image_size: images are resized to ``image_size`` x ``image_size`` (paper: 420) before encoding.
        generation: decoding settings.
        layers: decoder layers averaged for the maps (``None`` = all, paper Eq. 1).
    """

    def __init__(self, model, processor, image_size: int = 420, generation: GenerationSettings | None = None,
                 layers: list[int] | None = None, system_prompt: str = SYSTEM_PROMPT, question: str = QUESTION):  # fmt: skip
        self.model = enable_capture(model)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_size = image_size
        self.generation = generation or GenerationSettings()
        self.layers = layers
        self.question = question
        self.prompt = processor.apply_chat_template(
            build_messages(system_prompt, question), tokenize=False, add_generation_prompt=True
        )
        self.yes_id, self.no_id = answer_token_ids(self.tokenizer)
        cfg = getattr(model, "config", None)
        self.image_token_id = cfg.image_token_id
        self.merge = processor.image_processor.merge_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, images: list[Image.Image]):
        """Processor inputs for ``images`` (RGB, resized to ``image_size``), prompts left-padded."""
        sized = [im.convert("RGB").resize((self.image_size, self.image_size), Image.BICUBIC) for im in images]
        inputs = self.processor(images=sized, text=[self.prompt] * len(sized), return_tensors="pt", padding=True)
        return inputs.to(self.device)

    @torch.no_grad()
    def generate(self, inputs) -> list[list[int]]:
        """Completion token ids per row, cut at the first EOS/pad token."""
        g = self.generation
        out = self.model.generate(
            **inputs, max_new_tokens=g.max_new_tokens, do_sample=g.do_sample,
            temperature=g.temperature if g.do_sample else None, top_p=g.top_p if g.do_sample else None,
            top_k=None,
        )  # fmt: skip
        stop = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id, *self._eos_ids()}
        completions = []
        for row in out[:, inputs["input_ids"].shape[1] :].tolist():
            cut = next((i for i, t in enumerate(row) if t in stop), len(row))
            completions.append(row[:cut])
        return completions

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        return [eos] if isinstance(eos, int) else list(eos or [])

    @torch.no_grad()
    def capture(self, inputs, completions: list[list[int]]) -> list[TokenAttention]:
        """Teacher-forced pass: P(Yes) and per-token maps for each row's completion.

        Args:
            inputs: the prompt batch from :meth:`encode` (left-padded, length ``P``).
            completions: token ids per row (``T_b`` each, no EOS).

        Returns:
            One :class:`TokenAttention` per row with ``T_b`` map rows (prefix tokens dropped).
        """
        texts = [self.tokenizer.decode(c, skip_special_tokens=True) for c in completions]
        suffixes = [answer_prefix_for(t) for t in texts]
        full = [c + (self.tokenizer.encode(s, add_special_tokens=False) if s else []) for c, s in zip(completions, suffixes)]
        b, p = inputs["input_ids"].shape
        t_max = max(1, max(len(f) for f in full))
        pad = self.tokenizer.pad_token_id
        comp = torch.full((b, t_max), pad, dtype=torch.long)
        comp_mask = torch.zeros((b, t_max), dtype=inputs["attention_mask"].dtype)
        for i, f in enumerate(full):
            comp[i, : len(f)] = torch.tensor(f, dtype=torch.long)
            comp_mask[i, : len(f)] = 1
        dev = self.device
        ids = torch.cat([inputs["input_ids"], comp.to(dev)], dim=1)  # (B, P + T)
        batch = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
        batch["input_ids"] = ids
        batch["attention_mask"] = torch.cat([inputs["attention_mask"], comp_mask.to(dev)], dim=1)
        if "mm_token_type_ids" in inputs:
            batch["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(comp).to(dev)], dim=1)
        img_pos = image_token_positions(inputs["input_ids"], self.image_token_id)  # (B, n_img)
        anom_pos = anomaly_token_positions(inputs["input_ids"], self.tokenizer, self.question)  # (B, E)
        key_index = torch.cat([img_pos, anom_pos], dim=1)  # (B, n_img + E)
        with capture_attention(key_index, query_start=p - 1, layers=self.layers) as cap:
            out = self.model(**batch, use_cache=False, logits_to_keep=t_max + 1)
        attn = cap.result().float().cpu()  # (B, T + 1, n_img + E): row j = attention when producing token j
        logits = out.logits[:, -(t_max + 1) :].float().cpu()  # (B, T + 1, V): row j predicts token j
        grid = inputs["image_grid_thw"].cpu()
        n_img = img_pos.shape[1]
        results = []
        for i, (c, f) in enumerate(zip(completions, full)):
            mask, answer_index = reasoning_token_mask(self.tokenizer, f)  # the suffix only closes open tags
            a = answer_index if answer_index is not None else len(f)
            pair = logits[i, a, [self.yes_id, self.no_id]]
            p_yes = float(torch.softmax(pair, dim=0)[0])
            h, w = int(grid[i, 1]) // self.merge, int(grid[i, 2]) // self.merge
            rows = attn[i, : len(c)]  # (T, n_img + E)
            results.append(TokenAttention(
                image_attn=rows[:, :n_img].reshape(len(c), h, w).numpy(),
                anomaly_attn=rows[:, n_img:].numpy(),
                p_yes=p_yes,
                reasoning=mask[: len(c)],
            ))  # fmt: skip
        return results

    def predict(self, images: list[Image.Image]) -> list[Prediction]:
        """Full prediction for a batch of PIL images (any mode/size; resized internally)."""
        if not images:
            return []
        inputs = self.encode(images)
        completions = self.generate(inputs)
        captured = self.capture(inputs, completions)
        preds = []
        for im, ids, cap in zip(images, completions, captured):
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            keep = np.flatnonzero(cap.reasoning)
            preds.append(Prediction(
                completion=text,
                parsed=parse_completion(text),
                score=cap.p_yes,
                tokens=[self.tokenizer.decode([ids[j]]) for j in keep],
                image_attn=cap.image_attn[keep],
                anomaly_attn=cap.anomaly_attn[keep],
                image_size=(im.height, im.width),
            ))  # fmt: skip
        return preds
