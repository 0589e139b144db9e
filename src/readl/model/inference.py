"""Generate a reasoning chain and answer, then read the score and the attention maps in one pass.

Steps for a batch of images (left-padded prompts of length ``P``):

1. The generation backend (:mod:`readl.model.generation`; default transformers ``generate``, a batch of
   left-padded prompts per call) writes each completion (greedy unless sampling is asked for).
2. One teacher-forced forward over prompt + completion (+ the answer prefix when the completion has no
   ``<answer>``, see :func:`readl.model.prompting.answer_prefix_for`) with the attention capture on:
   it yields the next-token logits where the answer word is written (:func:`answer_read_position`) and,
   for every completion token, its attention to the image tokens (Eq. 1) and to the question's
   anomaly-word tokens (Eq. 2), mean over heads and layers.
3. The reasoning tokens (inside ``<think>``) are kept with their maps on the image-token grid.

Image score P(Yes). The strict format allows whitespace inside the answer tags
(``<answer> Yes</answer>``, ``<answer>\\nNo\\n</answer>``; the paper's own figures show such outputs), and
a byte-level tokenizer writes the word there as ``"Yes"`` or ``" Yes"`` (the space is part of the token),
after a ``"\\n"`` token or not. So the score is read at the position that writes the answer WORD
(whitespace-only tokens after ``<answer>`` skipped) and pools the spellings of each word:
P(Yes) = p(Yes-variants) / (p(Yes-variants) + p(No-variants)), the p from the softmax over the whole
vocabulary there. The variants of a word W are the single tokens among ``W``, ``" " + W``, ``"\\n" + W``
(:data:`ANSWER_LEADS`; those that this tokenizer writes as one token; the case is the format's,
lower-case ``yes`` breaks it). A completion without
``<answer>`` is scored after the appended answer prefix, the same way.

Query-row convention (``query_row``): the map of completion token r is the attention row of the query
that PRODUCED it (position r - 1: the decoding step that emits r; the default) or r's OWN row (position r).

The ReAL map itself is computed from these by :mod:`readl.localization.anomaly_map`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from readl.localization.attention import capture_attention, enable_capture
from readl.model.families import family_of
from readl.model.generation import HFGenerator
from readl.model.image_input import model_image
from readl.model.offsets import char_offsets
from readl.model.prompting import QUESTION, SYSTEM_PROMPT, Parsed, answer_prefix_for, build_messages, parse_completion

__all__ = [
    "ANSWER_LEADS",
    "SCORE_RULE",
    "GenerationSettings",
    "TokenAttention",
    "Prediction",
    "answer_variant_ids",
    "answer_read_position",
    "query_row_offset",
    "anomaly_token_positions",
    "image_token_positions",
    "reasoning_token_mask",
    "Predictor",
]

_ANOMALY_RE = re.compile(r"(defect|anomal|abnormal)\w*", re.IGNORECASE)
ANSWER_LEADS = ("", " ", "\n")  # whitespace a single answer token may start with (module docstring)
ANSWER_WORDS = ("Yes", "No")
SCORE_RULE = "word-position, pooled variants"  # part of the prediction-cache fingerprint: a change recomputes
QUERY_ROWS = ("producing", "own")


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
        p_yes: P(Yes) in [0, 1]: the pooled Yes-spellings' share of Yes + No where the answer word is
            written (module docstring).
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


def answer_variant_ids(tokenizer, pending: str = "") -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Token ids of the spellings of ``"Yes"`` and of ``"No"`` pooled for P(Yes) (module docstring).

    A spelling of word W is ``pending + lead + W`` for ``lead`` in :data:`ANSWER_LEADS` that this
    tokenizer encodes as ONE token. ``pending`` is the part of ``<answer>`` that the token read also
    writes (``""`` unless the tokenizer merges the tag's end with the word, e.g. ``">Yes"``).

    Returns:
        ``(yes_ids, no_ids)``: distinct ids in ``ANSWER_LEADS`` order, e.g. ``("Yes", " Yes")``.

    Raises:
        ValueError: a word has no single-token spelling in this vocabulary.
    """
    out = []
    for word in ANSWER_WORDS:
        ids: list[int] = []
        for lead in ANSWER_LEADS:
            enc = tokenizer.encode(pending + lead + word, add_special_tokens=False)
            if len(enc) == 1 and enc[0] not in ids:
                ids.append(enc[0])
        if not ids:
            spellings = [pending + lead + word for lead in ANSWER_LEADS]
            raise ValueError(f"none of {spellings!r} is one token in this tokenizer; the Yes/No score needs one")
        out.append(tuple(ids))
    return out[0], out[1]


def query_row_offset(query_row: str) -> int:
    """Row offset into a capture started at query ``P - 1``: 0 for ``"producing"``, 1 for ``"own"``.

    Raises:
        ValueError: ``query_row`` is neither.
    """
    if query_row not in QUERY_ROWS:
        raise ValueError(f"unknown query_row {query_row!r}; expected one of {QUERY_ROWS} (localization.query_row)")
    return QUERY_ROWS.index(query_row)


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


def _reasoning_and_answer(tokenizer, ids: list[int]) -> tuple[np.ndarray, int | None, str]:
    """``(mask, answer_index, pending)``: see :func:`reasoning_token_mask` and :func:`answer_read_position`."""
    offsets = char_offsets(tokenizer, ids)
    text = tokenizer.decode(ids, skip_special_tokens=True)
    start = text.find("<think>")
    start = 0 if start < 0 else start + len("<think>")
    ends = [i for i in (text.find("</think>", start), text.find("<answer>", start)) if i >= 0]
    end = min(ends) if ends else len(text)
    lo, hi = np.array(offsets[:-1]), np.array(offsets[1:])
    mask = (lo >= start) & (hi <= end) & (hi > lo)
    answer_index, pending = None, ""
    a = text.find("<answer>")
    if a >= 0:
        after = a + len("<answer>")
        word = len(text) - len(text[after:].lstrip())  # first non-whitespace character after <answer>
        # the token holding that character (offsets[j] <= word < offsets[j + 1]), or len(ids) when the
        # completion ends before the word
        answer_index = next((j for j in range(len(ids)) if offsets[j + 1] > word), len(ids))
        if answer_index < len(ids) and offsets[answer_index] < after:
            pending = text[offsets[answer_index] : after]
    return mask, answer_index, pending


def reasoning_token_mask(tokenizer, ids: list[int]) -> tuple[np.ndarray, int | None]:
    """Which completion tokens belong to the reasoning, and where the answer is read.

    Args:
        tokenizer: the model's tokenizer.
        ids: completion token ids (no prompt, no padding).

    Returns:
        ``(mask, answer_index)``: ``mask`` (T,) bool marks tokens whose text lies inside
        ``<think>...</think>`` (or, with no think tag, before ``<answer>``); ``answer_index`` is the index
        of the token that writes the answer word (the first non-whitespace character after ``<answer>``;
        whitespace-only tokens in between are skipped), ``len(ids)`` when the completion ends before the
        word, or ``None`` when there is no ``<answer>``.
    """
    mask, answer_index, _ = _reasoning_and_answer(tokenizer, ids)
    return mask, answer_index


def answer_read_position(tokenizer, ids: list[int]) -> tuple[int | None, str]:
    """Where P(Yes) is read: ``(answer_index, pending)``.

    ``answer_index`` as in :func:`reasoning_token_mask` (the logits that predict that token are read);
    ``pending`` is the part of ``<answer>`` that token also writes (``""`` unless the tokenizer merged
    the tag's end with what follows), passed to :func:`answer_variant_ids`.
    """
    _, answer_index, pending = _reasoning_and_answer(tokenizer, ids)
    return answer_index, pending


class Predictor:
    """Runs prompt -> generation -> teacher-forced capture for batches of images.

    Args:
        model: a Qwen2.5-VL model (optionally a ``PeftModel``) from :func:`readl.model.loading.load_model`.
        processor: its :class:`~readl.model.processor.ReadlQwenProcessor`.
        image_size: images are resized to ``image_size`` x ``image_size`` (paper: 420) before encoding.
        generation: decoding settings.
        layers: decoder layers averaged for the maps (``None`` = all, paper Eq. 1).
        query_row: ``"producing"`` or ``"own"`` (module docstring; ``localization.query_row``).
        generator: who writes the completions (:func:`readl.model.generation.make_generator`,
            ``model.generation_backend``); default transformers ``generate``.

    Raises:
        ValueError: unknown ``query_row``; the vocabulary has no single-token Yes / No.
    """

    def __init__(self, model, processor, image_size: int = 420, generation: GenerationSettings | None = None,
                 layers: list[int] | None = None, system_prompt: str = SYSTEM_PROMPT, question: str = QUESTION,
                 query_row: str = "producing", generator=None):  # fmt: skip
        self.row_offset = query_row_offset(query_row)
        self.query_row = query_row
        self.model = enable_capture(model)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_size = image_size
        self.generation = generation or GenerationSettings()
        self.generator = generator if generator is not None else HFGenerator()
        self.layers = layers
        self.question = question
        self.prompt = processor.apply_chat_template(
            build_messages(system_prompt, question), tokenize=False, add_generation_prompt=True
        )
        self._variants = {"": answer_variant_ids(self.tokenizer)}  # pending -> (yes_ids, no_ids)
        self.family = family_of(model)  # the backbone seam (readl.model.families): token ids and grids
        self.image_token_id = self.family.image_token_id(model.config)

    def variant_ids(self, pending: str = "") -> tuple[tuple[int, ...], tuple[int, ...]]:
        """:func:`answer_variant_ids` for this tokenizer, cached per ``pending``."""
        if pending not in self._variants:
            self._variants[pending] = answer_variant_ids(self.tokenizer, pending)
        return self._variants[pending]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def resize(self, images: list[Image.Image]) -> list[Image.Image]:
        """RGB, ``image_size`` x ``image_size`` (bicubic): what the model sees."""
        return [model_image(im, self.image_size) for im in images]  # the one image-size rule

    def encode(self, images: list[Image.Image], resized: bool = False):
        """Processor inputs for ``images`` (RGB, resized to ``image_size`` unless ``resized``), prompts left-padded."""
        sized = images if resized else self.resize(images)
        inputs = self.processor(images=sized, text=[self.prompt] * len(sized), return_tensors="pt", padding=True)
        return inputs.to(self.device)

    def generate(self, inputs, images: list[Image.Image] | None = None) -> list[list[int]]:
        """Completion token ids per row, cut at the first EOS/pad token, by the generation backend
        (:mod:`readl.model.generation`; the HF one reads ``inputs``, vLLM the resized ``images``)."""
        return self.generator(self, inputs, images)

    def teacher_forced_batch(self, inputs, full: list[list[int]]) -> dict:
        """Model inputs for prompt + completion: ``inputs`` (left-padded, ``(B, P)``) followed by ``full``
        right-padded to ``T = max(1, max len)``: ``input_ids`` / ``attention_mask`` (+ ``mm_token_type_ids``)
        ``(B, P + T)``, the image tensors unchanged, on the model's device."""
        b = inputs["input_ids"].shape[0]
        t_max = max(1, max(len(f) for f in full))
        comp = torch.full((b, t_max), self.tokenizer.pad_token_id, dtype=torch.long)
        comp_mask = torch.zeros((b, t_max), dtype=inputs["attention_mask"].dtype)
        for i, f in enumerate(full):
            comp[i, : len(f)] = torch.tensor(f, dtype=torch.long)
            comp_mask[i, : len(f)] = 1
        dev = self.device
        batch = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
        batch["input_ids"] = torch.cat([inputs["input_ids"], comp.to(dev)], dim=1)  # (B, P + T)
        batch["attention_mask"] = torch.cat([inputs["attention_mask"], comp_mask.to(dev)], dim=1)
        if "mm_token_type_ids" in inputs:
            batch["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(comp).to(dev)], dim=1)
        return batch

    @torch.no_grad()
    def capture(self, inputs, completions: list[list[int]]) -> list[TokenAttention]:
        """Teacher-forced pass: P(Yes) and per-token maps for each row's completion.

        Only the logits at each row's answer position are computed (``logits_to_keep`` = those positions,
        ``(B, 1, V)`` on the device), and only the Yes/No spellings' logits leave the device: P(Yes) =
        sigmoid(logsumexp(yes logits) - logsumexp(no logits)), the softmax normaliser cancels.

        Args:
            inputs: the prompt batch from :meth:`encode` (left-padded, length ``P``).
            completions: token ids per row (``T_b`` each, no EOS).

        Returns:
            One :class:`TokenAttention` per row with ``T_b`` map rows (prefix tokens dropped), in the
            ``query_row`` convention; P(Yes) pooled over the answer spellings (module docstring).
        """
        texts = [self.tokenizer.decode(c, skip_special_tokens=True) for c in completions]
        suffixes = [answer_prefix_for(t) for t in texts]
        full = [c + (self.tokenizer.encode(s, add_special_tokens=False) if s else []) for c, s in zip(completions, suffixes)]
        p = inputs["input_ids"].shape[1]
        reads = [_reasoning_and_answer(self.tokenizer, f) for f in full]  # the suffix only closes tags
        answer_at = [a if a is not None else len(f) for (_, a, _), f in zip(reads, full)]
        batch = self.teacher_forced_batch(inputs, full)
        img_pos = image_token_positions(inputs["input_ids"], self.image_token_id)  # (B, n_img)
        anom_pos = anomaly_token_positions(inputs["input_ids"], self.tokenizer, self.question)  # (B, E)
        key_index = torch.cat([img_pos, anom_pos], dim=1)  # (B, n_img + E)
        # the logits at query P - 1 + a predict completion token a (the answer word)
        read_pos = torch.tensor([[p - 1 + a] for a in answer_at], device=self.device)  # (B, 1)
        with capture_attention(key_index, query_start=p - 1, layers=self.layers) as cap:
            out = self.model(**batch, use_cache=False, logits_to_keep=read_pos)
        attn = cap.result().float().cpu()  # (B, T + 1, n_img + E): row j = query at P - 1 + j, which produces token j
        variants = [self.variant_ids(pending) for _, _, pending in reads]
        answer_logits = out.logits[:, 0]  # (B, V), on the device
        grids = self.family.token_grids(inputs, self.processor.image_processor)  # (h, w) per row
        n_img = img_pos.shape[1]
        results = []
        for i, (c, (mask, _, _)) in enumerate(zip(completions, reads)):
            yes, no = variants[i]
            row = answer_logits[i, list(yes) + list(no)].double().cpu()  # (n_yes + n_no,): the spellings' logits only
            # P(Yes) = p(yes) / (p(yes) + p(no)) = sigmoid(log p(yes) - log p(no)), p pooled over the spellings
            p_yes = float(torch.sigmoid(torch.logsumexp(row[: len(yes)], 0) - torch.logsumexp(row[len(yes) :], 0)))
            h, w = grids[i]
            rows = attn[i, self.row_offset : self.row_offset + len(c)]  # (T, n_img + E)
            results.append(TokenAttention(
                image_attn=rows[:, :n_img].reshape(len(c), h, w).numpy(),
                anomaly_attn=rows[:, n_img:].numpy(),
                p_yes=p_yes,
                reasoning=mask[: len(c)],
            ))  # fmt: skip
        return results

    def predict(self, images: list[Image.Image]) -> list[Prediction]:
        """Generate and capture one batch: reasoning, answer, P(Yes) and per-token attention (paper Sec. 4.1).

        Args:
            images: B PIL images of any mode and size (decoded by :func:`readl.predictor.open_image`); each is
                resized to ``image_size`` x ``image_size`` RGB (:func:`readl.model.image_input.model_image`).

        Returns:
            B :class:`Prediction` in input order: ``score`` = P(Yes) in [0, 1]; for the R reasoning tokens
            ``image_attn`` ``(R, h, w)`` and ``anomaly_attn`` ``(R, E)`` float32 (h = w = image_size / 28, the
            attention of the configured ``layers`` averaged over heads and layers); ``image_size`` = the input's
            ``(H, W)`` in pixels. An empty list for no images.

        Raises:
            RuntimeError: a CUDA / model error during generation or the teacher-forced capture pass.
        """
        if not images:
            return []
        sized = self.resize(images)
        inputs = self.encode(sized, resized=True)
        completions = self.generate(inputs, sized)
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
