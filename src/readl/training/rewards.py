"""CGRO rewards (paper Sec. 4.2, Eq. 6-8): format, accuracy, reasoning/attention consistency.

Each reward is a pure function of literal completions, labels and (for consistency) per-token maps and
weights, so it can be tested without a model. :data:`REWARDS` maps the names used in ``params.yaml``
(``train.rewards``) to these functions; :func:`make_reward_funcs` wraps them in the call signature TRL's
``GRPOTrainer`` uses (``f(prompts=, completions=, completion_ids=, **dataset_columns) -> list[float]``).

Conventions shared by the three rewards (paper project page, figure 2): a rollout whose format is broken
gets 0 from every reward, so format failures are never rewarded for a lucky answer or attention pattern.

The CGRO contract (paper Eq. 6-7), all here: :class:`ConsistencySettings` (the one type; ``params.yaml``
``train.consistency`` is validated as it), :func:`top_k_tokens` (which tokens), :func:`supports` (their
regions), :func:`jaccard` (their agreement), :func:`consistency_j` (J per completion), :func:`consistency_reward`
(R_cons and J as explicit return values). The trainer supplies each completion's ``(R, h, w)`` maps and ``(R,)``
ranking weights as the dataset columns :data:`MAPS_KEY` / :data:`WEIGHTS_KEY`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from readl.config import SUPPORT_QUANTILE, ConsistencySettings, reward_names
from readl.localization.scores import checked_array
from readl.model.prompting import parse_completion

__all__ = [
    "REWARDS",
    "ConsistencySettings",
    "ConsistencyReward",
    "format_reward",
    "accuracy_reward",
    "consistency_reward",
    "top_k_tokens",
    "supports",
    "jaccard",
    "consistency_j",
    "reward_names",
    "make_reward_funcs",
    "completion_text",
    "MAPS_KEY",
    "WEIGHTS_KEY",
]


def top_k_tokens(w: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest weights, descending; ties keep token order (stable sort).

    The tokens whose supports the consistency reward intersects (paper Eq. 6). k > R returns all R indices.

    Args: w: (R,) finite weights. k: >= 0.
    Returns: (min(k, R),) int64 indices.
    Raises: ValueError if ``w`` is not 1-D, has NaN/inf, or k < 0.
    """
    wt = checked_array("w", w, 1)  # (R,)
    if int(k) != k or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    return np.argsort(-wt, kind="stable")[: int(k)].astype(np.int64)


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


def accuracy_reward(completions: Sequence[str], labels: Sequence[int], require_format: bool = True) -> list[float]:
    """R_acc: 1.0 iff the answer matches the image label (label 1 -> "Yes", 0 -> "No") (paper Eq. 8).

    ``require_format`` (ours, ``train.accuracy_requires_format``; Eq. 8 does not say it): a completion with a
    broken format gets 0.0 even if an answer can be read from it, as the format-broken rollout of the paper's
    figure 2 gets all three rewards 0. ``False``: the answer read by :func:`parse_completion` is scored as is.

    Args:
        completions: decoded completions.
        labels: image-level labels, 0 (normal) or 1 (anomalous), one per completion.
        require_format: the format gate above.

    Returns:
        One value in {0.0, 1.0} per completion.

    Raises:
        ValueError: lengths differ or a label is not 0/1.
    """
    ys = _check_labels(labels, len(completions))
    out = []
    for c, y in zip(completions, ys):
        p = parse_completion(c)
        gated = require_format and not p.format_ok
        out.append(1.0 if not gated and p.answer == ("Yes" if y == 1 else "No") else 0.0)
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


def consistency_j(
    maps: Sequence[np.ndarray], weights: Sequence[np.ndarray], settings: ConsistencySettings = ConsistencySettings()
) -> list[float]:
    """J per completion (paper Eq. 6): the Jaccard index of the supports of its top-k reasoning tokens.

    For each completion: the top ``settings.k`` tokens by weight (:func:`top_k_tokens`: descending, ties in
    token order), each one's map binarised by :func:`supports` at ``settings.quantile``, then :func:`jaccard`.

    Args:
        maps: per completion, ``(R, h, w)`` attention maps of its R reasoning tokens (Eq. 1).
        weights: per completion, ``(R,)`` ranking weights of the same tokens (larger = more relevant).
        settings: k and quantile.

    Returns:
        One J in [0, 1] per completion; NaN where R < k (no k tokens to agree).

    Raises:
        ValueError: lengths differ, a map is not 3-D, or a weight vector does not match its maps.
    """
    if len(maps) != len(weights):
        raise ValueError(f"got {len(maps)} map sets and {len(weights)} weight vectors")
    js = []
    for m, w in zip(maps, weights):
        m = np.asarray(m)
        w = np.asarray(w, dtype=np.float64)
        if m.ndim != 3 or w.shape != (m.shape[0],):
            raise ValueError(f"maps must be (R, h, w) and weights (R,), got {m.shape} and {w.shape}")
        if m.shape[0] < settings.k:
            js.append(float("nan"))
            continue
        top = top_k_tokens(w, settings.k)  # (k,)
        js.append(jaccard(supports(m[top], settings.quantile)))
    return js


def consistency_reward(
    completions: Sequence[str],
    labels: Sequence[int],
    maps: Sequence[np.ndarray],
    weights: Sequence[np.ndarray],
    settings: ConsistencySettings = ConsistencySettings(),
) -> tuple[list[float], list[float]]:
    """R_cons = y * 1[J > delta1] + (1 - y) * 1[J < delta2] (paper Eq. 6-7), J from :func:`consistency_j`.

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
    js = consistency_j(maps, weights, settings)
    rewards = []
    for text, y, j in zip(completions, ys, js):
        if np.isnan(j) or (settings.require_format and not parse_completion(text).format_ok):
            rewards.append(0.0)
        else:
            rewards.append(float(j > settings.delta1) if y == 1 else float(j < settings.delta2))
    return rewards, js


REWARDS: dict[str, Callable] = {
    "format": format_reward,
    "accuracy": accuracy_reward,
    "consistency": consistency_reward,
}  # keys = readl.config.REWARD_NAMES (the names params.yaml may list; a test keeps the two equal)

# Dataset columns the trainer adds for the consistency reward (see readl.training.trainer.CGROTrainer).
MAPS_KEY = "readl_maps"
WEIGHTS_KEY = "readl_weights"


def make_reward_funcs(
    names: Sequence[str],
    consistency: ConsistencySettings = ConsistencySettings(),
    accuracy_requires_format: bool = True,
) -> list[Callable]:
    """TRL reward callables for ``names`` (``__name__`` = the reward name, so TRL logs ``rewards/<name>/mean``).

    TRL passes every dataset column as a keyword list; these read ``label`` and, for ``consistency``, the
    per-completion ``readl_maps`` / ``readl_weights`` that :class:`~readl.training.trainer.CGROTrainer` adds
    after its attention-capture pass. The consistency callable is a :class:`ConsistencyReward` (its
    ``settings`` are the trainer's k / quantile for logging J; it keeps no state between calls).

    Raises:
        ValueError: an unknown name (see :func:`reward_names`).
    """
    return [_trl_reward(name, consistency, accuracy_requires_format) for name in reward_names(names)]


@dataclass(frozen=True)
class ConsistencyReward:
    """The TRL callable of the consistency reward: ``f(prompts=, completions=, label=, readl_maps=,
    readl_weights=, **columns) -> list[float]`` (:func:`consistency_reward` with ``settings``).

    Raises (when called):
        RuntimeError: the maps columns are missing (the model was not trained with ``CGROTrainer``).
    """

    settings: ConsistencySettings = ConsistencySettings()
    __name__ = "consistency"

    def score(self, completions=(), label=None, **kw) -> tuple[list[float], list[float]]:
        """``(rewards, J)`` for one batch of TRL completions (J explicit, for logging)."""
        if MAPS_KEY not in kw or WEIGHTS_KEY not in kw:
            raise RuntimeError("the consistency reward needs the rollouts' attention maps; train with CGROTrainer")
        texts = [completion_text(c) for c in completions]
        return consistency_reward(texts, label, kw[MAPS_KEY], kw[WEIGHTS_KEY], self.settings)

    def __call__(self, prompts=None, completions=(), label=None, **kw) -> list[float]:
        return self.score(completions, label, **kw)[0]


def _trl_reward(name: str, consistency: ConsistencySettings, accuracy_requires_format: bool = True) -> Callable:
    if name == "consistency":
        return ConsistencyReward(consistency)
    if name == "format":

        def fn(prompts=None, completions=(), **kw):
            return format_reward([completion_text(c) for c in completions])

    else:

        def fn(prompts=None, completions=(), label=None, **kw):
            return accuracy_reward([completion_text(c) for c in completions], label, accuracy_requires_format)

    fn.__name__ = fn.__qualname__ = name
    return fn
