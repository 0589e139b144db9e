"""The teacher-forced capture batch, built ONE way for inference and for CGRO training.

Both :meth:`readl.model.inference.Predictor.capture` (predict / evaluate / the served model) and
:func:`readl.training.trainer.capture_completion_attention` (the consistency reward's pass over the policy's
rollouts) run one forward over prompt + completion with the attention capture on. The layout is the same
as in TRL's own forward passes: prompts LEFT-padded to ``P``, completions RIGHT-padded to ``T``, so that
absolute position ``P - 1 + j`` is the query that produces completion token ``j`` in every row
(:mod:`readl.localization.attention`, query-row convention). :func:`split_token_maps` cuts the captured
rows back into per-row ``(T_b, h, w)`` image maps and ``(T_b, E)`` anomaly-word attention.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["left_pad", "teacher_forced_batch", "split_token_maps"]


def left_pad(prompt_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpadded prompts -> ``(input_ids, attention_mask)``, both ``(B, P)`` int64, left-padded with ``pad_id``.

    ``P = max(len)`` (at least 1). Raises ValueError for an empty batch.
    """
    if not prompt_ids:
        raise ValueError("no prompts to pad")
    p_len = max(1, max(len(p) for p in prompt_ids))
    ids = torch.full((len(prompt_ids), p_len), pad_id, dtype=torch.long)  # (B, P)
    mask = torch.zeros((len(prompt_ids), p_len), dtype=torch.long)  # (B, P)
    for r, p in enumerate(prompt_ids):
        if p:
            ids[r, p_len - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[r, p_len - len(p) :] = 1
    return ids, mask


def teacher_forced_batch(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completions: list[list[int]],
    pad_id: int,
    mm_token_type_ids: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Left-padded prompts followed by right-padded completions: the model inputs of the capture pass.

    Args:
        prompt_ids, prompt_mask: ``(B, P)`` left-padded prompt ids and attention mask (any device).
        completions: per row, the completion token ids (``T_b`` each, may be empty).
        pad_id: the tokenizer's pad id (right padding of the completions).
        mm_token_type_ids: ``(B, P)`` the prompt's modality ids (1 = image token) when the model takes
            them (Qwen2.5-VL does); completion tokens get 0 (text), as during generation.

    Returns:
        ``input_ids``, ``attention_mask`` and (when given) ``mm_token_type_ids``, each ``(B, P + T)`` with
        ``T = max(1, max T_b)``, on ``prompt_ids``' device; the attention mask has the prompt mask's dtype.

    Raises:
        ValueError: ``completions`` does not have one entry per row.
    """
    b = prompt_ids.shape[0]
    if len(completions) != b:
        raise ValueError(f"{len(completions)} completions for {b} prompt rows")
    t_max = max(1, max((len(c) for c in completions), default=0))
    comp = torch.full((b, t_max), pad_id, dtype=torch.long)  # (B, T)
    comp_mask = torch.zeros((b, t_max), dtype=prompt_mask.dtype)  # (B, T)
    for i, c in enumerate(completions):
        comp[i, : len(c)] = torch.tensor(c, dtype=torch.long)
        comp_mask[i, : len(c)] = 1
    dev = prompt_ids.device
    batch = {
        "input_ids": torch.cat([prompt_ids, comp.to(dev)], dim=1),  # (B, P + T)
        "attention_mask": torch.cat([prompt_mask, comp_mask.to(dev)], dim=1),  # (B, P + T)
    }
    if mm_token_type_ids is not None:
        zeros = torch.zeros((b, t_max), dtype=mm_token_type_ids.dtype, device=mm_token_type_ids.device)
        batch["mm_token_type_ids"] = torch.cat([mm_token_type_ids, zeros], dim=1)  # (B, P + T)
    return batch


def split_token_maps(
    attn: torch.Tensor, grids: list[tuple[int, int]], n_img: int, lengths: list[int], offset: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-row token maps from one capture started at query ``P - 1``.

    Args:
        attn: ``(B, T + 1, n_img + E)`` captured rows (row ``j`` = query at ``P - 1 + j``), on the CPU.
        grids: ``(h, w)`` image-token grid per row, ``h * w = n_img`` (the backbone family's
            :meth:`readl.model.families.Family.token_grids`, from the processor's own output).
        n_img: image tokens per row (the first ``n_img`` key columns; the rest are the E anomaly words).
        lengths: ``T_b`` per row, the completion tokens to keep.
        offset: 0 for the ``producing`` query row, 1 for ``own`` (:func:`readl.model.tokens.query_row_offset`).

    Returns:
        Per row ``(image_attn, anomaly_attn)``: ``(T_b, h, w)`` and ``(T_b, E)`` float32, ``h, w`` = the
        token grid (15 x 15 for 420 x 420 on Qwen2.5-VL), raster order.
    """
    out = []
    for r, t in enumerate(lengths):
        h, w = grids[r]
        rows = attn[r, offset : offset + t].float()  # (T_b, n_img + E)
        out.append((rows[:, :n_img].reshape(t, h, w).numpy(), rows[:, n_img:].numpy()))
    return out
