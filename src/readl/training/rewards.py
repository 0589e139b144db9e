"""CGRO rewards (paper Sec. 4.2, Eq. 6-8): format, accuracy, reasoning/attention consistency.

Each reward is a pure function of literal completions, labels and (for consistency) per-token maps and
weights, so it can be tested without a model. :data:`REWARDS` maps the names used in ``params.yaml``
(``train.rewards``) to these functions; :func:`make_reward_funcs` wraps them in the call signature TRL's
``GRPOTrainer`` uses (``f(prompts=, completions=, completion_ids=, **dataset_columns) -> list[float]``).

Conventions shared by the three rewards (paper project page, figure 2): a rollout whose format is broken
gets 0 from every reward, so format failures are never rewarded for a lucky answer or attention pattern.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from readl.localization.anomaly_map import top_k_tokens
from readl.model.prompting import parse_completion

__all__ = [
    "REWARDS",
    "ConsistencySettings",
    "format_reward",
    "accuracy_reward",
    "consistency_reward",
    "supports",
    "jaccard",
    "reward_names",
    "make_reward_funcs",
    "completion_text",
    "MAPS_KEY",
    "WEIGHTS_KEY",
]

SUPPORT_QUANTILE = 0.95  # paper Sec. 4.2: each selected token's map is thresholded at its 95th percentile


@dataclass(frozen=True)
class ConsistencySettings:
    """Parameters of the consistency reward (paper Eq. 6-7; supplement ablation: k=3, delta1=0.3, delta2=0.1).

    Attributes:
        k: number of top-weighted reasoning tokens whose supports are intersected (>= 1).
        delta1: anomalous images (y=1) are rewarded when J > delta1.
        delta2: normal images (y=0) are rewarded when J < delta2.
        quantile: per-map support threshold (0.95 = the paper's 95th percentile), in (0, 1).
        require_format: a broken format gets reward 0 (paper figure 2). ``False`` only for diagnostics such
            as ``benchmarks/learning_check.py`` on the untrained tiny model, which never writes the format.
    """

    k: int = 3
    delta1: float = 0.3
    delta2: float = 0.1
    quantile: float = SUPPORT_QUANTILE
    require_format: bool = True

    def __post_init__(self):
        if int(self.k) != self.k or self.k < 1:
            raise ValueError(f"consistency k must be a positive integer, got {self.k!r}")
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"consistency quantile must lie in (0, 1), got {self.quantile!r}")


def completion_text(completion) -> str:
    """The text of one TRL completion: a string, or a conversational ``[{"role": "assistant", "content": ...}]``."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content", "")
        if isinstance(content, list):  # structured content blocks
            return "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return content or ""
    raise TypeError(f"cannot read a completion of type {type(completion).__name__}")


def format_reward(completions: Sequence[str]) -> list[float]:
    """R_fmt: 1.0 iff a completion is exactly ``<think>...</think><answer>Yes|No</answer>`` (paper Eq. 8).

    Whitespace is tolerated around the whole completion, between ``</think>`` and ``<answer>`` and inside the
    answer tags, nothing else (see :func:`readl.model.prompting.parse_completion`).

    Args:
        completions: decoded completions (special tokens removed).

    Returns:
        One value in {0.0, 1.0} per completion.
    """
    return [1.0 if parse_completion(c).format_ok else 0.0 for c in completions]


def _check_labels(labels: Sequence[int], n: int) -> list[int]:
    out = [int(y) for y in labels]
    if len(out) != n:
        raise ValueError(f"got {len(out)} labels for {n} completions")
    bad = sorted({y for y in out if y not in (0, 1)})
    if bad:
        raise ValueError(f"labels must be 0 (normal) or 1 (anomalous), got {bad}")
    return out


def accuracy_reward(completions: Sequence[str], labels: Sequence[int]) -> list[float]:
    """R_acc: 1.0 iff the answer matches the image label (label 1 -> "Yes", 0 -> "No") (paper Eq. 8).

    A completion with a broken format gets 0.0 even if an answer can be read from it (paper figure 2: the
    format-broken rollout gets all three rewards 0).

    Args:
        completions: decoded completions.
        labels: image-level labels, 0 (normal) or 1 (anomalous), one per completion.

    Returns:
        One value in {0.0, 1.0} per completion.

    Raises:
        ValueError: lengths differ or a label is not 0/1.
    """
    ys = _check_labels(labels, len(completions))
    out = []
    for c, y in zip(completions, ys):
        p = parse_completion(c)
        out.append(1.0 if p.format_ok and p.answer == ("Yes" if y == 1 else "No") else 0.0)
    return out


def supports(maps: np.ndarray, quantile: float = SUPPORT_QUANTILE) -> np.ndarray:
    """Binary support regions Omega_r of token maps: cells strictly above the map's ``quantile`` (paper Sec. 4.2).

    The threshold is ``np.quantile(map, quantile)`` (linear interpolation) per map; a cell is in the support
    iff its value is STRICTLY greater. Consequences: a flat map (all cells equal) has an empty support (it
    points nowhere); when the top values tie, only cells above the interpolated quantile count, so ties at
    the top can shrink the support (down to empty). On a 15x15 map at q=0.95 a map with distinct values has
    12 support cells (the ~5% largest); on a 4x4 map, 1 cell (the maximum).

    Args:
        maps: ``(k, h, w)`` non-negative attention maps (any real dtype).
        quantile: in (0, 1).

    Returns:
        ``(k, h, w)`` bool.

    Raises:
        ValueError: ``maps`` is not 3-D or holds NaN/inf.
    """
    a = np.asarray(maps, dtype=np.float64)
    if a.ndim != 3:
        raise ValueError(f"maps must be (k, h, w), got shape {a.shape}")
    if a.size and not np.isfinite(a).all():
        raise ValueError("maps contain NaN or inf")
    flat = a.reshape(a.shape[0], -1)  # (k, h*w)
    if flat.shape[1] == 0:
        return np.zeros(a.shape, dtype=bool)
    cut = np.quantile(flat, quantile, axis=1, keepdims=True)  # (k, 1)
    return (flat > cut).reshape(a.shape)  # (k, h, w)


def jaccard(omega: np.ndarray) -> float:
    """Jaccard index of k supports: |intersection| / |union| (paper Eq. 6).

    Args:
        omega: ``(k, h, w)`` bool supports, k >= 1.

    Returns:
        J in [0, 1]; 0.0 when the union is empty (no token points anywhere: no consensus).

    Raises:
        ValueError: ``omega`` is not 3-D or k == 0.
    """
    s = np.asarray(omega, dtype=bool)
    if s.ndim != 3 or s.shape[0] == 0:
        raise ValueError(f"omega must be (k, h, w) with k >= 1, got shape {s.shape}")
    union = int(s.any(axis=0).sum())
    return 0.0 if union == 0 else float(s.all(axis=0).sum()) / union


def consistency_reward(
    completions: Sequence[str],
    labels: Sequence[int],
    maps: Sequence[np.ndarray],
    weights: Sequence[np.ndarray],
    settings: ConsistencySettings = ConsistencySettings(),
) -> tuple[list[float], list[float]]:
    """R_cons = y * 1[J > delta1] + (1 - y) * 1[J < delta2] (paper Eq. 6-7).

    For each completion: take the top-k reasoning tokens by weight (descending, ties in token order,
    :func:`readl.localization.anomaly_map.top_k_tokens`), binarise each one's map with :func:`supports`,
    and compute J with :func:`jaccard`.

    J is computed whenever there are at least k reasoning tokens (also for broken formats, for logging);
    the reward is 0.0 when the format is broken (unless ``settings.require_format`` is False) or fewer
    than k reasoning tokens exist (J is NaN then).

    Args:
        completions: decoded completions (format check).
        labels: 0/1 image labels, one per completion.
        maps: per completion, ``(R, h, w)`` attention maps of its R reasoning tokens (Eq. 1).
        weights: per completion, ``(R,)`` ranking weights of the same tokens (Eq. 4's w; larger = more relevant).
        settings: k, delta1, delta2, quantile, require_format.

    Returns:
        ``(rewards, J)``: two lists, one entry per completion; rewards in {0.0, 1.0}, J in [0, 1] or NaN.

    Raises:
        ValueError: lengths differ, bad labels, a map is not 3-D, or a weight vector does not match its maps.
    """
    n = len(completions)
    ys = _check_labels(labels, n)
    if len(maps) != n or len(weights) != n:
        raise ValueError(f"got {len(maps)} map sets and {len(weights)} weight vectors for {n} completions")
    rewards, js = [], []
    for text, y, m, w in zip(completions, ys, maps, weights):
        m = np.asarray(m)
        w = np.asarray(w, dtype=np.float64)
        if m.ndim != 3 or w.shape != (m.shape[0],):
            raise ValueError(f"maps must be (R, h, w) and weights (R,), got {m.shape} and {w.shape}")
        if m.shape[0] < settings.k:
            rewards.append(0.0)
            js.append(float("nan"))
            continue
        top = top_k_tokens(w, settings.k)  # (k,)
        j = jaccard(supports(m[top], settings.quantile))
        js.append(j)
        if settings.require_format and not parse_completion(text).format_ok:
            rewards.append(0.0)
        else:
            rewards.append(float(j > settings.delta1) if y == 1 else float(j < settings.delta2))
    return rewards, js


REWARDS: dict[str, Callable] = {
    "format": format_reward,
    "accuracy": accuracy_reward,
    "consistency": consistency_reward,
}

# Dataset columns the trainer adds for the consistency reward (see readl.training.trainer.CGROTrainer).
MAPS_KEY = "readl_maps"
WEIGHTS_KEY = "readl_weights"


def reward_names(names: Sequence[str]) -> list[str]:
    """Validate reward names against :data:`REWARDS`.

    Raises:
        ValueError: an unknown or repeated name, or an empty list; the message lists the known names.
    """
    names = list(names)
    if not names:
        raise ValueError(f"train.rewards is empty; choose from {sorted(REWARDS)}")
    unknown = [n for n in names if n not in REWARDS]
    if unknown:
        raise ValueError(f"unknown reward(s) {unknown}; known rewards: {sorted(REWARDS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"train.rewards lists a reward twice: {names}")
    return names


def make_reward_funcs(names: Sequence[str], consistency: ConsistencySettings = ConsistencySettings()) -> list[Callable]:
    """TRL reward callables for ``names`` (``__name__`` = the reward name, so TRL logs ``rewards/<name>/mean``).

    TRL passes every dataset column as a keyword list; these read ``label`` and, for ``consistency``, the
    per-completion ``readl_maps`` / ``readl_weights`` that :class:`~readl.training.trainer.CGROTrainer` adds
    after its attention-capture pass. The consistency callable keeps the last J values in ``.last_j``.

    Raises:
        ValueError: an unknown name (see :func:`reward_names`).
    """
    return [_trl_reward(name, consistency) for name in reward_names(names)]


def _trl_reward(name: str, consistency: ConsistencySettings) -> Callable:
    if name == "format":

        def fn(prompts=None, completions=(), **kw):
            return format_reward([completion_text(c) for c in completions])

    elif name == "accuracy":

        def fn(prompts=None, completions=(), label=None, **kw):
            return accuracy_reward([completion_text(c) for c in completions], label)

    else:

        def fn(prompts=None, completions=(), label=None, **kw):
            if MAPS_KEY not in kw:
                raise RuntimeError("the consistency reward needs the rollouts' attention maps; train with CGROTrainer")
            rewards, js = consistency_reward(
                [completion_text(c) for c in completions], label, kw[MAPS_KEY], kw[WEIGHTS_KEY], consistency
            )
            fn.last_j = js
            return rewards

        fn.last_j = []
    fn.__name__ = fn.__qualname__ = name
    return fn
