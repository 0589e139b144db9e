"""The supervised cold start of ``readl warmup`` (R1-style, as in Vision-R1): SFT dataset, augmentation, weighted loss.

The stage itself (manifest -> targets -> model -> SFT -> ``models/warmup``) is :func:`readl.stages.warmup.run`.

The paper starts GRPO from Qwen2.5-VL-Instruct, which already writes the format (paper Sec. 5.1), so its
recipe sets ``warmup.enabled: false``. The embedded default's random tiny model writes nothing readable
until it has seen the format: the cold start makes GRPO's rewards non-zero, so CGRO has a signal.

Loss (a choice of ours, ``warmup.decision_weight`` / ``warmup.answer_weight``): token cross-entropy over the
completion, with the first ``decision_tokens`` reasoning tokens after ``<think>`` (where the fixed per-label
opening sentence of :mod:`readl.training.reasoning_targets` takes the decision) and the answer word after
``<answer>`` weighted up. Under teacher forcing every later token can be read off the earlier text, so
without the weights the image's contribution to the loss is a small fraction of a nat per target.

Trainable weights: ``warmup.trainable`` ``full`` (every weight, vision tower included; the default for the
tiny random kit, where LoRA on random weights learns little) or ``lora`` (``train.lora``'s targets, merged
into the base after training: HF checkpoints); ``auto`` = full for ``tiny``, LoRA otherwise.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from PIL import Image
from trl import SFTConfig, SFTTrainer

from readl.config import Params
from readl.model.image_input import model_image
from readl.training.data import prompt_messages
from readl.training.trl_adapter import run_args

__all__ = ["WARMUP_DIR", "augment", "sft_dataset", "token_weights_from_labels", "WeightedSFTTrainer", "sft_args"]

log = logging.getLogger(__name__)
WARMUP_DIR = Path("models/warmup")


def augment(image: Image.Image, rng: np.random.Generator, grayscale: float = 0.25) -> Image.Image:
    """Label-preserving augmentation of one warm-up image: a random flip / 90-degree rotation (one of the 8
    symmetries of the square) and, with probability ``grayscale``, grey conversion (back to RGB).

    Industrial defects keep their label under these; the model cannot memorise the few normal images by pose or
    colour, and grey textures (e.g. MVTec AD grid) are no longer out of distribution for the answer format.

    Args:
        image: RGB image. rng: consumed. grayscale: probability in [0, 1].
    """
    k = int(rng.integers(0, 8))
    if k & 1:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if k >> 1:
        image = image.transpose(
            (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)[k >> 1]
        )
    if rng.random() < grayscale:
        image = image.convert("L").convert("RGB")
    return image


def sft_dataset(
    frame, image_size: int, targets: list[str], augment_seed: int | None = None, grayscale: float = 0.25
) -> Dataset:
    """Prompt-completion rows for TRL's ``SFTTrainer``: ``{"prompt", "completion", "image"}``.

    ``prompt`` is the GRPO prompt (:func:`readl.training.data.prompt_messages`; TRL inserts the image before
    the question), ``completion`` the assistant message with the target, ``image`` the RGB image resized to
    ``image_size`` x ``image_size`` (bicubic), decoded when a row is read. No mask column is read.

    Args:
        frame: manifest rows with absolute ``image_path`` (:func:`readl.training.data.load_manifest`).
        image_size: side in pixels (multiple of 28).
        targets: one target completion per row (:func:`readl.training.reasoning_targets.targets_for`).
        augment_seed: ``None`` = no augmentation; else each read of a row is augmented (:func:`augment`) with a
            generator seeded by (augment_seed, row, how often this row was read), so a run is reproducible (a
            resumed run draws its remaining augmentations afresh).
        grayscale: :func:`augment`'s probability of a grey read, in [0, 1] (``warmup.augment_grayscale``).
    """
    ds = Dataset.from_dict(
        {"image_path": list(frame["image_path"]), "target": list(targets), "row": list(range(len(frame)))}
    )
    reads: dict[int, int] = {}

    def transform(batch: dict) -> dict:
        images = []
        for p, row in zip(batch["image_path"], batch["row"]):
            with Image.open(p) as im:
                img = model_image(im, image_size)
            if augment_seed is not None:
                reads[row] = reads.get(row, -1) + 1
                img = augment(img, np.random.default_rng([augment_seed, row, reads[row]]), grayscale)
            images.append(img)
        return {
            "prompt": [prompt_messages() for _ in images],
            "completion": [[{"role": "assistant", "content": t}] for t in batch["target"]],
            "image": images,
        }

    return ds.with_transform(transform)


def _find(row: list[int], pattern: list[int], start: int = 0) -> int:
    """Index just after the first occurrence of ``pattern`` in ``row`` at or after ``start``; -1 if absent."""
    n = len(pattern)
    for i in range(start, len(row) - n + 1):
        if row[i : i + n] == pattern:
            return i + n
    return -1


def token_weights_from_labels(
    labels: torch.Tensor,
    think_ids: list[int],
    answer_ids: list[int],
    whitespace_ids: set[int],
    decision_tokens: int,
    decision_weight: float,
    answer_weight: float,
) -> torch.Tensor:
    """Per-token loss weights of a batch of labels (``-100`` = not trained).

    Args:
        labels: ``(B, L)`` int64 labels as the model sees them (not yet shifted).
        think_ids, answer_ids: token ids of ``<think>`` and ``<answer>``.
        whitespace_ids: ids of whitespace-only tokens (skipped when looking for the answer word).
        decision_tokens: how many tokens after ``<think>`` get ``decision_weight``.
        decision_weight, answer_weight: weights (>= 0) of those tokens and of the answer word.

    Returns:
        ``(B, L)`` float32: 0 where the label is -100, 1 elsewhere, the two weights at their positions.
    """
    w = (labels != -100).float()  # (B, L)
    for b, row in enumerate(labels.tolist()):
        t = _find(row, think_ids)
        if t >= 0:
            w[b, t : t + decision_tokens] *= decision_weight
        a = _find(row, answer_ids, max(t, 0))
        while 0 <= a < len(row) and row[a] in whitespace_ids:
            a += 1
        if 0 <= a < len(row) and row[a] != -100:
            w[b, a] *= answer_weight
    return w


class WeightedSFTTrainer(SFTTrainer):
    """TRL's ``SFTTrainer`` with a weighted token cross-entropy (one forward pass per step).

    loss = sum_t w_t CE_t / sum_t w_t over the batch's completion tokens (shifted: logits at t predict t+1),
    w from :func:`token_weights_from_labels` (``warmup.decision_tokens`` / ``decision_weight`` /
    ``answer_weight``). With gradient accumulation each micro-batch is normalised by its own weight sum.

    Args (besides ``SFTTrainer``'s): decision_tokens, decision_weight, answer_weight: see above.
    """

    def __init__(self, *args, decision_tokens: int, decision_weight: float, answer_weight: float, **kwargs):
        super().__init__(*args, **kwargs)
        tok = self.processing_class.tokenizer
        self._think = tok.encode("<think>", add_special_tokens=False)
        self._answer = tok.encode("<answer>", add_special_tokens=False)
        self._space = {i for i in range(len(tok)) if tok.decode([i]) and not tok.decode([i]).strip()}
        self._weights = (decision_tokens, decision_weight, answer_weight)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")  # (B, L), -100 outside the completion
        outputs = model(**inputs, use_cache=False)
        weights = token_weights_from_labels(labels, self._think, self._answer, self._space, *self._weights)
        logits = outputs.logits[:, :-1].float()  # (B, L-1, V): position t predicts token t+1
        target = labels[:, 1:]  # (B, L-1)
        w = weights[:, 1:].to(logits.device)  # (B, L-1)
        ce = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.clamp(min=0).reshape(-1).to(logits.device), reduction="none"
        ).view(target.shape)  # (B, L-1)
        loss = (ce * w).sum() / w.sum().clamp(min=1e-8)
        return (loss, outputs) if return_outputs else loss


def sft_args(params: Params, output_dir: Path, model) -> SFTConfig:
    """``SFTConfig`` from ``params.warmup``; precision and the shared run settings from
    :func:`readl.training.trl_adapter.run_args`."""
    w = params.warmup
    return SFTConfig(
        warmup_steps=w.lr_warmup_steps,
        max_steps=w.max_steps,
        weight_decay=w.weight_decay,
        max_grad_norm=1.0,
        completion_only_loss=True,
        activation_checkpointing=False,  # TRL's SFT default is on: a second forward per step
        max_length=None,  # never cut the image tokens
        save_total_limit=w.save_total_limit,
        dataset_kwargs={"skip_prepare_dataset": True},  # rows are built on access (images decoded per batch)
        **run_args(model, w, output_dir),  # shared with CGRO (readl.training.trl_adapter)
    )
