"""Token selection, weights, aggregation and upsampling in readl.localization.anomaly_map."""

import numpy as np
import pytest

from readl.localization.anomaly_map import (
    NO_TOKEN_KEPT,
    NO_TOKENS,
    aggregate,
    real_map,
    token_weights,
    upsample,
)
from readl.localization.scores import normalize_scores, semantic_relevance, spatial_entropy
from readl.training.rewards import top_k_tokens  # with the consistency reward it serves (paper Eq. 6)

# token:        0     1     2     3
S_T_HAT = np.array([0.9, 0.9, 0.1, 0.5])
S_I_HAT = np.array([0.9, 0.1, 0.9, 0.5])  # token 3 sits exactly on both thresholds


@pytest.mark.parametrize(
    "mode, kept",
    [("all", [0, 1, 2, 3]), ("s_t", [0, 1]), ("s_i", [0, 2]), ("both", [0])],
)
def test_selection_modes_keep_different_sets(mode, kept):
    w, keep = token_weights(S_T_HAT, S_I_HAT, tau_t=0.5, tau_i=0.5, alpha=2.0, beta=0.5, mode=mode)
    assert np.flatnonzero(keep).tolist() == kept
    # Table 3's single-criterion rows weight by their own criterion only; "both" and "all" by Eq. 4
    score = {"s_t": 2.0 * S_T_HAT, "s_i": 0.5 * S_I_HAT}.get(mode, 2.0 * S_T_HAT + 0.5 * S_I_HAT)
    np.testing.assert_allclose(w, np.where(keep, score, 0.0))
    assert w.dtype == np.float64 and keep.dtype == bool


def test_token_weights_errors():
    with pytest.raises(ValueError, match="unknown selection mode 'neither'"):
        token_weights(S_T_HAT, S_I_HAT, 0.5, 0.5, mode="neither")
    with pytest.raises(ValueError, match="same length"):
        token_weights(S_T_HAT, S_I_HAT[:3], 0.5, 0.5)
    with pytest.raises(ValueError, match="s_i_hat contains NaN"):
        token_weights(S_T_HAT, np.array([np.nan, 0, 0, 0]), 0.5, 0.5)


def test_aggregate_is_weighted_sum():
    rng = np.random.default_rng(0)
    a = rng.random((5, 15, 15)).astype(np.float32)
    w = np.array([0.0, 1.5, 0.0, 0.25, 2.0])
    m = aggregate(a, w)
    assert m.shape == (15, 15) and m.dtype == np.float32
    np.testing.assert_allclose(m, 1.5 * a[1] + 0.25 * a[3] + 2.0 * a[4], rtol=1e-6)
    np.testing.assert_array_equal(aggregate(np.zeros((0, 4, 6)), np.zeros(0)), np.zeros((4, 6)))
    with pytest.raises(ValueError, match="R=5 maps but w has 4"):
        aggregate(a, w[:4])
    with pytest.raises(ValueError, match="image_attn must be 3-D"):
        aggregate(a[0], w)


@pytest.mark.parametrize(
    "grid, cell, size",
    [((15, 15), (2, 11), (420, 420)), ((15, 15), (0, 14), (420, 420)), ((3, 5), (1, 3), (60, 200))],
)
def test_upsample_keeps_raster_order(grid, cell, size):
    m = np.zeros(grid, dtype=np.float32)
    m[cell] = 1.0
    up = upsample(m, size)
    assert up.shape == size and up.dtype == np.float32
    bh, bw = size[0] // grid[0], size[1] // grid[1]
    rows = slice(cell[0] * bh, (cell[0] + 1) * bh)
    cols = slice(cell[1] * bw, (cell[1] + 1) * bw)
    peak = np.unravel_index(np.argmax(up), size)
    assert rows.start <= peak[0] < rows.stop and cols.start <= peak[1] < cols.stop
    blocks = up.reshape(grid[0], bh, grid[1], bw).mean(axis=(1, 3))  # (h, w) block means
    assert np.unravel_index(np.argmax(blocks), grid) == cell
    assert blocks[cell] > 2 * np.delete(blocks.ravel(), np.ravel_multi_index(cell, grid)).max()


def test_upsample_cell_2_11_block_explicit():
    m = np.zeros((15, 15))
    m[2, 11] = 1.0
    up = upsample(m, (420, 420))
    block = up[56:84, 308:336]
    assert block.min() > 0.25 and up.max() == block.max()  # corners ~0.27
    outside = up.copy()
    outside[56:84, 308:336] = 0
    assert outside.max() < 0.5 and block.mean() > 10 * outside.mean()


@pytest.mark.parametrize("grid, size", [((15, 15), (420, 420)), ((4, 6), (37, 91)), ((15, 15), (256, 300))])
def test_upsample_matches_torch_bilinear(grid, size):
    torch = pytest.importorskip("torch")
    m = np.random.default_rng(3).random(grid).astype(np.float32)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(m)[None, None], size=size, mode="bilinear", align_corners=False
    )[0, 0].numpy()
    np.testing.assert_allclose(upsample(m, size), ref, atol=1e-5)


def test_upsample_errors():
    with pytest.raises(ValueError, match="map_hw must be 2-D"):
        upsample(np.zeros((1, 15, 15)), (420, 420))
    with pytest.raises(ValueError, match="size"):
        upsample(np.zeros((15, 15)), (0, 420))
    with pytest.raises(ValueError, match="NaN"):
        upsample(np.full((2, 2), np.inf), (4, 4))


def make_case():
    """Token 0: concentrated on cell (4, 9) and attends anomaly words; tokens 1-5: diffuse."""
    rng = np.random.default_rng(7)
    image_attn = rng.dirichlet(np.full(225, 20.0), size=6).reshape(6, 15, 15).astype(np.float32)
    image_attn[0] *= 0.2
    image_attn[0, 4, 9] += 0.8
    anomaly_attn = rng.random((6, 3)).astype(np.float32) * 0.05
    anomaly_attn[0] += 0.3
    return image_attn, anomaly_attn


def test_real_map_end_to_end():
    image_attn, anomaly_attn = make_case()
    res = real_map(image_attn, anomaly_attn, tau_t=0.5, tau_i=0.5)
    assert res.fallback is None and res.keep.tolist() == [True] + [False] * 5
    assert res.map.shape == (15, 15) and res.map.dtype == np.float32
    assert np.unravel_index(np.argmax(res.map), (15, 15)) == (4, 9)
    s_t, s_i = semantic_relevance(anomaly_attn), spatial_entropy(image_attn)
    s_t_hat, s_i_hat = normalize_scores(s_t, s_i)
    np.testing.assert_allclose(res.s_t, s_t)
    np.testing.assert_allclose(res.s_i_hat, s_i_hat)
    np.testing.assert_allclose(res.w, [s_t_hat[0] + s_i_hat[0], 0, 0, 0, 0, 0])
    np.testing.assert_allclose(res.map, res.w[0] * image_attn[0], rtol=1e-6)


def test_mode_all_is_the_plain_mean_of_all_reasoning_tokens():
    """Paper Table 2 "without ReAL ... average the visual attention of all reasoning tokens" = Table 3 row 1."""
    image_attn, anomaly_attn = make_case()
    res = real_map(image_attn, anomaly_attn, tau_t=0.5, tau_i=0.5, alpha=2.0, beta=0.5, mode="all")
    assert res.fallback is None and res.keep.all()
    np.testing.assert_allclose(res.w, np.full(6, 1 / 6))
    np.testing.assert_allclose(res.map, image_attn.astype(np.float64).mean(axis=0), rtol=1e-6)


@pytest.mark.parametrize("mode", ["both", "s_t"])
def test_real_map_falls_back_to_the_all_tokens_mean_when_nothing_kept(mode):
    image_attn, anomaly_attn = make_case()
    res = real_map(image_attn, anomaly_attn, tau_t=1.0, tau_i=0.0, alpha=1.0, beta=2.0, mode=mode)
    assert res.fallback == NO_TOKEN_KEPT and not res.keep.any() and res.kept_fraction == 0.0
    np.testing.assert_allclose(res.map, image_attn.astype(np.float64).mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(res.map, real_map(image_attn, anomaly_attn, 1.0, 0.0, mode="all").map)
    assert res.map.max() > 0


def test_real_map_fallback_can_be_an_empty_map():
    image_attn, anomaly_attn = make_case()
    res = real_map(image_attn, anomaly_attn, tau_t=1.0, tau_i=0.0, fallback="empty")
    assert res.fallback == NO_TOKEN_KEPT and not res.w.any()
    np.testing.assert_array_equal(res.map, np.zeros((15, 15), np.float32))
    with pytest.raises(ValueError, match="fallback"):
        real_map(image_attn, anomaly_attn, tau_t=1.0, tau_i=0.0, fallback="zeros")


def _blob_maps(n_blobs: list[int]) -> np.ndarray:
    """(R, 15, 15) maps with n equal one-cell blobs each: S_I = log(n), 0 for one blob (S_I^ = 1)."""
    maps = np.full((len(n_blobs), 15, 15), 1e-4, np.float32)
    for r, n in enumerate(n_blobs):
        for k in range(n):
            maps[r, 2 * (k // 7), 2 * (k % 7)] = 1.0
    return maps


def test_tied_concentrated_tokens_do_not_empty_the_selection():
    """60% of the tokens tie at S_I^ = 1 (one blob): the per-image rules must still keep tokens (tied ones and
    the untied concentrated ones), not fall back to the unfiltered map."""
    n_blobs = np.array([1] * 12 + [2, 2, 3, 3, 4, 5, 8, 40])  # 12 of 20 tied at the top (one blob)
    image_attn = _blob_maps(list(n_blobs))
    anomaly_attn = np.ones((20, 1), np.float32)
    res = real_map(image_attn, anomaly_attn, tau_t=0.0, tau_i="max_curvature", mode="s_i")
    # S_I^ below the tied block, ascending: 0 (40 blobs), 0.44 (8), 0.56 (5), 0.62 (4), 0.70 (3), 0.81 (2): a concave
    # curve whose knee is 0.56 (the 5-blob token): the tied tokens and the 2- to 4-blob tokens are kept
    assert res.fallback is None
    assert res.keep.tolist() == (n_blobs <= 4).tolist()
    assert res.tau_i == pytest.approx(res.s_i_hat[17]) and res.tau_i_fit.curve == "concave"
    assert res.tau_i_fit is not None and res.tau_i_fit.top_tied == 12
    strict = real_map(image_attn, anomaly_attn, tau_t=0.0, tau_i="max_curvature", mode="s_i", ties="strict")
    assert strict.fallback == NO_TOKEN_KEPT  # the rule as written: tau_i = 1.0, nothing is > 1


def test_real_map_without_tokens_and_errors():
    res = real_map(np.zeros((0, 15, 15), np.float32), np.zeros((0, 3), np.float32), 0.5, 0.5)
    assert res.fallback == NO_TOKENS and res.w.shape == (0,)
    np.testing.assert_array_equal(res.map, np.zeros((15, 15), np.float32))
    image_attn, anomaly_attn = make_case()
    with pytest.raises(ValueError, match="R=6 tokens but anomaly_attn has R=5"):
        real_map(image_attn, anomaly_attn[:5], 0.5, 0.5)
    image_attn[2, 0, 0] = np.nan
    with pytest.raises(ValueError, match="image_attn contains NaN"):
        real_map(image_attn, anomaly_attn, 0.5, 0.5)


def test_top_k_tokens():
    w = np.array([0.2, 0.9, 0.0, 0.9, 0.5])
    assert top_k_tokens(w, 3).tolist() == [1, 3, 4]  # tie 1/3 keeps token order
    assert top_k_tokens(w, 10).tolist() == [1, 3, 4, 0, 2]
    assert top_k_tokens(w, 0).tolist() == []
    many = np.tile([0.5, 1.0, 0.5, 0.0], 25)  # long enough for an unstable sort to reorder ties
    order = top_k_tokens(many, 100).tolist()
    halves = sorted([*range(0, 100, 4), *range(2, 100, 4)])
    assert order == [*range(1, 100, 4), *halves, *range(3, 100, 4)]
    with pytest.raises(ValueError, match="non-negative"):
        top_k_tokens(w, -1)
