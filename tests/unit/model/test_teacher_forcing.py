"""readl.model.teacher_forcing: the one capture batch of inference and CGRO training (issue 13, item 5)."""

from __future__ import annotations

import pytest
import torch

from readl.model.teacher_forcing import left_pad, split_token_maps, teacher_forced_batch

PAD = 0


def test_prompts_left_padded_completions_right_padded():
    ids, mask = left_pad([[5, 6, 7], [8]], PAD)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    batch = teacher_forced_batch(ids, mask, [[9], [10, 11, 12]], PAD, mm_token_type_ids=(ids == 7).long())
    assert batch["input_ids"].tolist() == [[5, 6, 7, 9, 0, 0], [0, 0, 8, 10, 11, 12]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]]
    assert batch["mm_token_type_ids"].tolist() == [[0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]]  # completions: text
    # position P - 1 + j produces completion token j in every row (the capture's query_start = P - 1)
    p = ids.shape[1]
    for r, c in enumerate([[9], [10, 11, 12]]):
        assert batch["input_ids"][r, p : p + len(c)].tolist() == c
    empty = teacher_forced_batch(ids, mask, [[], []], PAD)
    assert (
        empty["input_ids"].shape == (2, 4)
        and not empty["attention_mask"][:, 3].any()
        and "mm_token_type_ids" not in empty
    )
    with pytest.raises(ValueError, match="1 completions for 2"):
        teacher_forced_batch(ids, mask, [[1]], PAD)


def test_split_token_maps_cuts_each_row_at_its_length_and_offset():
    b, n_img, e = 2, 4, 1
    attn = torch.arange(b * 4 * (n_img + e), dtype=torch.float32).reshape(b, 4, n_img + e)  # (B, T + 1, K)
    grids = [(2, 2), (1, 4)]  # per row (h, w): raster order, h * w = n_img
    (img0, an0), (img1, an1) = split_token_maps(attn, grids, n_img, [3, 1], offset=1)
    assert img0.shape == (3, 2, 2) and an0.shape == (3, 1) and img1.shape == (1, 1, 4)
    assert img0[0].ravel().tolist() == attn[0, 1, :n_img].tolist() and an1[0, 0] == attn[1, 1, n_img]
