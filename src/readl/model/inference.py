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

import numpy as np
import torch
from PIL import Image

from readl.localization.attention import capture_attention, enable_capture
from readl.model.families import family_of
from readl.model.generation import HFGenerator
from readl.model.image_input import model_image
from readl.model.prompting import QUESTION, SYSTEM_PROMPT, answer_prefix_for, build_messages, parse_completion
from readl.model.teacher_forcing import split_token_maps, teacher_forced_batch
from readl.model.tokens import (
    ANSWER_LEADS,
    SCORE_RULE,
    anomaly_token_positions,
    answer_read_position,
    answer_variant_ids,
    image_token_positions,
    query_row_offset,
    reasoning_and_answer,
    reasoning_token_mask,
)
from readl.model.types import GenerationSettings, Prediction, TokenAttention

# Predictor lives here; the token helpers (readl.model.tokens) and the torch-free types (readl.model.types) are
# re-exported for the callers that import them from here.
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

    def __init__(
        self,
        model,
        processor,
        image_size: int = 420,
        generation: GenerationSettings | None = None,
        layers: list[int] | None = None,
        system_prompt: str = SYSTEM_PROMPT,
        question: str = QUESTION,
        query_row: str = "producing",
        generator=None,
    ):
        self.row_offset = query_row_offset(query_row)
        self.query_row = query_row
        self.model = enable_capture(model, layers)
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
        ``(B, P + T)`` (:func:`readl.model.teacher_forcing.teacher_forced_batch`, shared with the CGRO
        trainer), the image tensors unchanged, on the model's device."""
        batch = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
        batch.update(
            teacher_forced_batch(
                inputs["input_ids"],
                inputs["attention_mask"],
                full,
                self.tokenizer.pad_token_id,
                inputs.get("mm_token_type_ids"),
            )
        )
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
        full = [
            c + (self.tokenizer.encode(s, add_special_tokens=False) if s else []) for c, s in zip(completions, suffixes)
        ]
        p = inputs["input_ids"].shape[1]
        reads = [reasoning_and_answer(self.tokenizer, f) for f in full]  # the suffix only closes tags
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
        maps = split_token_maps(
            attn, grids, img_pos.shape[1], [len(c) for c in completions], self.row_offset
        )  # (T_b, h, w), (T_b, E) per row
        results = []
        for i, ((image_attn, anomaly_attn), (mask, _, _)) in enumerate(zip(maps, reads)):
            yes, no = variants[i]
            row = answer_logits[i, list(yes) + list(no)].double().cpu()  # (n_yes + n_no,): the spellings' logits only
            # P(Yes) = p(yes) / (p(yes) + p(no)) = sigmoid(log p(yes) - log p(no)), p pooled over the spellings
            p_yes = float(torch.sigmoid(torch.logsumexp(row[: len(yes)], 0) - torch.logsumexp(row[len(yes) :], 0)))
            results.append(TokenAttention(image_attn, anomaly_attn, p_yes, mask[: len(completions[i])]))
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
            preds.append(
                Prediction(
                    completion=text,
                    parsed=parse_completion(text),
                    score=cap.p_yes,
                    tokens=[self.tokenizer.decode([ids[j]]) for j in keep],
                    image_attn=cap.image_attn[keep],
                    anomaly_attn=cap.anomaly_attn[keep],
                    image_size=(im.height, im.width),
                )
            )
        return preds
