"""S_T (paper Eq. 2), S_I (Eq. 3) and normalisation in readl.localization.scores."""

import numpy as np
import pytest
from scipy import ndimage

from readl.localization.scores import normalize_scores, semantic_relevance, spatial_entropy

H = W = 15


def entropy(*p):
    p = np.asarray(p, dtype=float)
    return float(-(p * np.log(p)).sum())


def blob_map(blobs, total=1.0):
    """15x15 map: blobs = {(i, j): value}; the rest of ``total`` spread evenly below the mean."""
    m = np.zeros((H, W))
    for cell, v in blobs.items():
        m[cell] = v
    rest = total - sum(blobs.values())
    off = m == 0
    m[off] = rest / off.sum()
    assert m[off].max() < total / (H * W)  # background is off under the mean rule
    return m


def reference_entropy(maps, binarize="mean"):
    """Per-token loop with scipy.ndimage.label, the obvious reading of Eq. 3."""
    out = []
    for m in maps:
        cut = m.mean() if binarize == "mean" else np.quantile(m, binarize)
        on = m > cut
        if not on.any():
            out.append(np.log(m.size))
            continue
        lab, n = ndimage.label(on, structure=np.ones((3, 3)))
        mass = ndimage.sum_labels(m, lab, index=np.arange(1, n + 1))
        p = mass / mass.sum()
        out.append(float(-(p * np.log(p)).sum()))
    return np.array(out)


def test_two_blobs_hand_computed():
    # blob A: three touching cells, 0.1 each (mass 0.3); blob B: one far cell, mass 0.1
    m = blob_map({(2, 2): 0.1, (2, 3): 0.1, (3, 3): 0.1, (10, 12): 0.1})
    s_i = spatial_entropy(m[None].astype(np.float32))
    assert s_i.shape == (1,) and s_i.dtype == np.float64
    assert s_i[0] == pytest.approx(entropy(0.75, 0.25), abs=1e-6)


def test_diagonal_neighbours_form_one_component():
    m = blob_map({(3, 3): 0.2, (4, 4): 0.2})  # touch only at a corner
    assert spatial_entropy(m[None])[0] == pytest.approx(0.0, abs=1e-12)  # 4-conn would give log 2


def test_single_blob_and_flat_maps():
    one = blob_map({(7, 7): 0.5, (7, 8): 0.2})
    flat = np.full((H, W), 1 / (H * W))
    zeros = np.zeros((H, W))
    s_i = spatial_entropy(np.stack([one, flat, zeros]))
    assert s_i[0] == 0.0
    assert s_i[1] == pytest.approx(np.log(H * W))
    assert s_i[2] == pytest.approx(np.log(H * W))


def test_mosaic_gutters_keep_maps_apart():
    # map 0: blob at its bottom edge (0.3) + a far blob (0.1); map 1: blob at its top edge, same
    # column and diagonal. Merged across maps, map 0's bottom component would weigh 0.3 + 0.3 + 0.2.
    m0 = blob_map({(H - 1, 5): 0.3, (2, 2): 0.1})
    m1 = blob_map({(0, 5): 0.3, (0, 6): 0.2, (H - 1, 3): 0.1})
    m2 = blob_map({(0, 4): 0.4})  # diagonal to map 1's (H-1, 3) across the gutter
    s_i = spatial_entropy(np.stack([m0, m1, m2]))
    np.testing.assert_allclose(s_i, [entropy(0.75, 0.25), entropy(5 / 6, 1 / 6), 0.0], atol=1e-9)


def test_right_and_left_edges_do_not_wrap():
    m = blob_map({(4, W - 1): 0.3, (5, 0): 0.1})  # raster neighbours, but not grid neighbours
    assert spatial_entropy(m[None])[0] == pytest.approx(entropy(0.75, 0.25))


@pytest.mark.parametrize("binarize", ["mean", 0.5, 0.9])
def test_matches_per_token_loop_on_random_maps(binarize):
    rng = np.random.default_rng(0)
    conc = rng.choice([0.05, 0.3, 1.0, 10.0], size=64)
    maps = np.stack([rng.dirichlet(np.full(H * W, c)) for c in conc]).reshape(64, H, W)
    maps[:, 3:6, 3:6] += 0.05  # some larger regions too
    np.testing.assert_allclose(
        spatial_entropy(maps.astype(np.float32), binarize=binarize),
        reference_entropy(maps.astype(np.float32).astype(np.float64), binarize),
        atol=1e-9,
    )


def test_quantile_rule_differs_from_mean_rule():
    m = blob_map({(1, 1): 0.5})  # background 0.00223, mean 0.00444
    m[12, 12] = m[12, 13] = 0.004  # above the background, below the mean
    assert spatial_entropy(m[None], binarize="mean")[0] == 0.0
    assert spatial_entropy(m[None], binarize=0.99)[0] > 0.0


def test_non_square_grid_and_empty_r():
    m = np.zeros((2, 4, 7))
    m[0, 0, 0] = m[0, 3, 6] = 1.0
    m[1, 1, 1] = 1.0
    np.testing.assert_allclose(spatial_entropy(m), [np.log(2), 0.0])
    assert spatial_entropy(np.zeros((0, H, W))).shape == (0,)
    assert spatial_entropy(np.zeros((0, H, W)), binarize=0.9).shape == (0,)
    with pytest.raises(ValueError, match="binarize"):
        spatial_entropy(np.zeros((0, H, W)), binarize="max")


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((H, W)), "3-D"),
        (np.full((1, H, W), np.nan), "NaN"),
        (np.full((1, H, W), np.inf), "NaN or inf"),
        (-np.ones((1, H, W)), "negative"),
        (np.zeros((1, 0, W)), "empty grid"),
    ],
)
def test_spatial_entropy_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        spatial_entropy(bad)


@pytest.mark.parametrize("binarize", ["median", 0.0, 1.0, 1.5])
def test_spatial_entropy_rejects_bad_binarize(binarize):
    with pytest.raises(ValueError, match="binarize"):
        spatial_entropy(np.ones((1, H, W)), binarize=binarize)


def test_semantic_relevance_sums_anomaly_words():
    a = np.array([[0.1, 0.2, 0.05], [0.0, 0.0, 0.3]], dtype=np.float32)
    s_t = semantic_relevance(a)
    assert s_t.dtype == np.float64
    np.testing.assert_allclose(s_t, [0.35, 0.3], rtol=1e-6)
    np.testing.assert_array_equal(semantic_relevance(np.zeros((4, 0))), np.zeros(4))
    with pytest.raises(ValueError, match="anomaly_attn must be 2-D"):
        semantic_relevance(np.zeros((2, 3, 1)))
    with pytest.raises(ValueError, match="NaN"):
        semantic_relevance(np.array([[np.nan]]))


def test_normalize_min_max_and_inverts_entropy():
    s_t_hat, s_i_hat = normalize_scores(np.array([0.2, 0.6, 1.0]), np.array([0.0, 1.0, 4.0]))
    np.testing.assert_allclose(s_t_hat, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(s_i_hat, [1.0, 0.75, 0.0])  # lowest entropy -> 1


def test_normalize_constant_single_and_empty():
    t, i = normalize_scores(np.full(4, 0.3), np.array([1.0, 2.0, 2.0, 3.0]))
    np.testing.assert_array_equal(t, np.ones(4))
    np.testing.assert_allclose(i, [1.0, 0.5, 0.5, 0.0])
    t, i = normalize_scores(np.array([5.0]), np.array([2.0]))
    np.testing.assert_array_equal(t, [1.0])
    np.testing.assert_array_equal(i, [1.0])
    t, i = normalize_scores(np.zeros(0), np.zeros(0))
    assert t.shape == i.shape == (0,)


def test_normalize_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        normalize_scores(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="s_i must be 1-D"):
        normalize_scores(np.zeros(3), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="s_t contains NaN"):
        normalize_scores(np.array([np.nan, 1.0]), np.zeros(2))
