"""CGRO rewards (paper Eq. 6-8) on literal completions and hand-made maps; no model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from readl.training.rewards import (
    MAPS_KEY,
    REWARDS,
    WEIGHTS_KEY,
    ConsistencySettings,
    accuracy_reward,
    consistency_reward,
    format_reward,
    jaccard,
    make_reward_funcs,
    reward_names,
    supports,
)

YES = "<think>The grid has a bent wire near the top.</think><answer>Yes</answer>"
NO = "<think>The surface looks uniform.</think><answer>No</answer>"


# --- format -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, ok",
    [
        (YES, True),
        (NO, True),
        ("  \n" + YES + "\n ", True),  # surrounding whitespace
        ("<think>x</think>\n<answer> Yes </answer>", True),  # whitespace between tags / inside the answer
        ("<answer>Yes</answer>", False),  # no reasoning block
        ("<think>x</think><answer>yes</answer>", False),  # lower case
        (YES + " extra", False),  # text after </answer>
        ("<think>x</think><answer>Yes</answer><answer>No</answer>", False),  # two answers
        ("<think>x <answer>No</answer></think><answer>Yes</answer>", False),  # nested answer
        ("Sure. " + YES, False),  # text before <think>
        ("<think>x</think><answer>Maybe</answer>", False),
        ("", False),
    ],
)
def test_format_reward(text, ok):
    assert format_reward([text]) == [1.0 if ok else 0.0]


# --- accuracy ---------------------------------------------------------------------------------------------------
def test_accuracy_reward_matches_label():
    assert accuracy_reward([YES, NO, YES, NO], [1, 0, 0, 1]) == [1.0, 1.0, 0.0, 0.0]


def test_accuracy_reward_is_zero_for_broken_format_even_with_right_answer():
    # paper figure 2: a format-broken rollout gets all rewards 0
    assert accuracy_reward(["<answer>Yes</answer>", YES + " trailing"], [1, 1]) == [0.0, 0.0]
    # the gate is ours (train.accuracy_requires_format), not Eq. 8: off, the readable answer is scored
    assert accuracy_reward(["<answer>Yes</answer>", YES + " trailing"], [1, 1], require_format=False) == [1.0, 1.0]


def test_accuracy_reward_checks_labels():
    with pytest.raises(ValueError, match="0 .normal. or 1"):
        accuracy_reward([YES], [2])
    with pytest.raises(ValueError, match="1 labels for 2"):
        accuracy_reward([YES, NO], [1])


# --- supports and Jaccard (Eq. 6) ------------------------------------------------------------------------------
def test_supports_are_cells_strictly_above_the_95th_percentile():
    m = np.arange(16, dtype=float).reshape(1, 4, 4)  # distinct values: q95 = 14.25 -> only the 15
    assert supports(m)[0].sum() == 1 and supports(m)[0][3, 3]
    big = np.arange(225, dtype=float).reshape(1, 15, 15)  # q95 = 212.8 -> the 12 largest cells (213..224)
    assert supports(big)[0].sum() == 12
    assert supports(m, quantile=0.5)[0].sum() == 8  # strict > median 7.5


def test_supports_of_flat_and_tied_maps():
    flat = np.full((1, 4, 4), 0.25)
    assert not supports(flat).any()  # a flat map points nowhere
    tied = np.zeros((1, 4, 4))
    tied[0, 0, :2] = 1.0  # two cells tie at the top: q95 interpolates between them = 1.0 -> none strictly above
    assert not supports(tied).any()
    three = np.zeros((1, 5, 5))
    three[0, 0, :3] = 1.0  # 25 cells, three tied at the top: q95 index 22.8 lies in the tie -> empty as well
    assert not supports(three).any()


def test_supports_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(k, h, w\)"):
        supports(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="NaN"):
        supports(np.full((1, 2, 2), np.nan))


def _omega(*cell_sets, shape=(3, 3)):
    out = np.zeros((len(cell_sets), *shape), dtype=bool)
    for i, cells in enumerate(cell_sets):
        for r, c in cells:
            out[i, r, c] = True
    return out


def test_jaccard_on_hand_made_supports():
    assert jaccard(_omega({(0, 0)}, {(0, 0)}, {(0, 0)})) == 1.0
    assert jaccard(_omega({(0, 0)}, {(1, 1)}, {(2, 2)})) == 0.0
    # A={0,1}, B={1,2}, C={1,3} (row 0 cells): intersection {1}, union {0,1,2,3} -> 1/4
    assert jaccard(_omega({(0, 0), (0, 1)}, {(0, 1), (0, 2)}, {(0, 1), (1, 0)})) == pytest.approx(0.25)
    assert jaccard(_omega({(0, 0), (0, 1)}, {(0, 1)})) == pytest.approx(0.5)
    assert jaccard(_omega(set(), set())) == 0.0  # empty union: no consensus
    with pytest.raises(ValueError):
        jaccard(np.zeros((0, 3, 3), dtype=bool))


# --- consistency (Eq. 6-7) ---------------------------------------------------------------------------------------
def _maps(hot_cells, shape=(4, 4)):
    """One map per token, a single hot cell each on a low random background."""
    rng = np.random.default_rng(0)
    m = rng.uniform(0, 0.01, size=(len(hot_cells), *shape))
    for i, (r, c) in enumerate(hot_cells):
        m[i, r, c] = 1.0
    return m


FOCUSED = _maps([(1, 1), (1, 1), (1, 1), (3, 0)])  # the three top tokens share one hot cell
SCATTERED = _maps([(0, 0), (1, 1), (2, 2), (1, 1)])  # the three top tokens point at different cells
W = np.array([0.9, 0.8, 0.7, 0.1])  # token 3 is the least relevant


def test_consistency_rewards_concentrated_attention_on_anomalies_and_dispersed_on_normals():
    rewards, js = consistency_reward(
        [YES, YES, NO, NO], [1, 1, 0, 0], [FOCUSED, SCATTERED, FOCUSED, SCATTERED], [W] * 4
    )
    assert js == [1.0, 0.0, 1.0, 0.0]
    assert rewards == [1.0, 0.0, 0.0, 1.0]  # y*1[J>0.3] + (1-y)*1[J<0.1]


def test_consistency_uses_the_top_k_tokens_by_weight():
    # SCATTERED becomes focused if the weights put tokens 1 and 3 (both at (1,1)) ... and token 0 last
    w = np.array([0.1, 0.9, 0.2, 0.8])
    _, js = consistency_reward([YES], [1], [SCATTERED], [w], ConsistencySettings(k=2))
    assert js == [1.0]
    _, js = consistency_reward([YES], [1], [SCATTERED], [w], ConsistencySettings(k=3))  # adds token 2 at (2,2)
    assert js == [0.0]


def test_consistency_thresholds_are_strict():
    # k=2 tokens whose supports overlap in 1 of 3 cells: J = 1/3; with delta1 = 1/3 exactly, no reward
    m = np.zeros((2, 1, 40))
    m[0, 0, :2], m[1, 0, 1:3] = 1.0, 1.0  # q95 of 40 cells with 2 ones: 0.05 < 1 -> supports are the ones
    s = ConsistencySettings(k=2, delta1=1 / 3, delta2=1 / 3)
    rewards, js = consistency_reward([YES, NO], [1, 0], [m, m], [np.ones(2)] * 2, s)
    assert js[0] == pytest.approx(1 / 3)
    assert rewards == [0.0, 0.0]


def test_consistency_is_zero_for_broken_format_but_j_is_still_reported():
    rewards, js = consistency_reward(["<answer>Yes</answer>", "junk"], [1, 0], [FOCUSED, SCATTERED], [W, W])
    assert rewards == [0.0, 0.0] and js == [1.0, 0.0]
    relaxed = ConsistencySettings(require_format=False)
    rewards, _ = consistency_reward(["<answer>Yes</answer>", "junk"], [1, 0], [FOCUSED, SCATTERED], [W, W], relaxed)
    assert rewards == [1.0, 1.0]


def test_consistency_with_fewer_tokens_than_k():
    rewards, js = consistency_reward([YES, YES], [1, 0], [FOCUSED[:2], np.zeros((0, 4, 4))], [W[:2], np.zeros(0)])
    assert rewards == [0.0, 0.0] and all(math.isnan(j) for j in js)
    _, js = consistency_reward([YES], [1], [FOCUSED], [W], ConsistencySettings(k=10))
    assert math.isnan(js[0])


def test_consistency_checks_inputs():
    with pytest.raises(ValueError, match="weights"):
        consistency_reward([YES], [1], [FOCUSED], [W[:3]])
    with pytest.raises(ValueError, match="map sets"):
        consistency_reward([YES, NO], [1, 0], [FOCUSED], [W])
    with pytest.raises(ValueError, match="k must be"):
        ConsistencySettings(k=0)


# --- registry and the TRL adapters ------------------------------------------------------------------------------
def test_registry_and_unknown_names():
    assert set(REWARDS) == {"format", "accuracy", "consistency"}
    assert reward_names(["format", "accuracy"]) == ["format", "accuracy"]
    with pytest.raises(
        ValueError, match=r"unknown reward\(s\) \['bogus'\]; known rewards: \['accuracy', 'consistency', 'format'\]"
    ):
        reward_names(["format", "bogus"])
    with pytest.raises(ValueError, match="empty"):
        reward_names([])
    with pytest.raises(ValueError, match="twice"):
        reward_names(["format", "format"])


def test_trl_adapters_read_conversational_completions_and_dataset_columns():
    fmt, acc, cons = make_reward_funcs(["format", "accuracy", "consistency"])
    assert [f.__name__ for f in (fmt, acc, cons)] == ["format", "accuracy", "consistency"]
    completions = [[{"role": "assistant", "content": YES}], [{"role": "assistant", "content": NO}]]
    kw = {
        "prompts": [None, None],
        "completions": completions,
        "completion_ids": [[1], [2]],
        "label": [1, 1],
        "image_path": ["a", "b"],
        "trainer_state": None,
    }
    assert fmt(**kw) == [1.0, 1.0]
    assert acc(**kw) == [1.0, 0.0]
    with pytest.raises(RuntimeError, match="CGROTrainer"):
        cons(**kw)
    assert cons(**kw, **{MAPS_KEY: [FOCUSED, SCATTERED], WEIGHTS_KEY: [W, W]}) == [1.0, 0.0]
    rewards, js = cons.score(**kw, **{MAPS_KEY: [FOCUSED, SCATTERED], WEIGHTS_KEY: [W, W]})  # J explicit, no state
    assert (rewards, js) == ([1.0, 0.0], [1.0, 0.0])
    assert not hasattr(cons, "last_j")


def test_train_config_rejects_unknown_rewards(tmp_path):
    from readl.config import load_params

    (tmp_path / "params.yaml").write_text("train:\n  rewards: [format, accuracy, consistancy]\n")
    with pytest.raises(ValueError, match="consistancy.*known rewards"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("train:\n  rewards: [format, accuracy]\n")
    assert load_params(tmp_path / "params.yaml").train.rewards == ["format", "accuracy"]


def test_reward_registry_matches_the_names_params_may_list():
    """params.yaml's train.rewards is validated against readl.config.REWARD_NAMES (config imports nothing of
    readl.training); every such name has a reward function here and vice versa."""
    from readl.config import REWARD_NAMES, reward_names
    from readl.training.rewards import REWARDS

    assert tuple(REWARDS) == REWARD_NAMES
    assert reward_names(["consistency", "format"]) == ["consistency", "format"]
    with pytest.raises(ValueError, match="unknown reward"):
        reward_names(["format", "jaccard"])
