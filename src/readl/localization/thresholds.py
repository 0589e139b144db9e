"""Thresholds tau_t, tau_i for ReAL token selection (paper Eq. 4; supplement Table 5: tau_i by
maximum curvature, tau_t by the median of the sorted scores; a fixed value is also supported).

Ties at the top (``ties="set_aside"``, the default; our rule, the paper leaves ties open). Tokens are
kept when their score is STRICTLY above the threshold. The normalised S_I^ of a 15x15 map takes few
distinct values, and every token whose map is one connected region gets S_I = 0, i.e. S_I^ = 1 exactly:
often more than half of an image's tokens tie at the maximum. Then the median is 1.0, and so is maximum
curvature's knee of that concave curve: tau = 1.0 and NO token passes, so ``s_i`` and ``both`` silently
become the fallback map. The rule: when a data-driven
rule's value keeps no score (value >= max), the block of scores tied at the maximum is set aside (all of
its tokens are kept: they are the most extreme ones) and the same rule is applied to the scores below
the block; its value is the threshold, so the untied tokens it separates are kept too. If every score is
tied, all are kept (value = the largest float below them), as ``normalize_scores`` does for a constant
vector. ``Threshold.top_tied`` is the size of the block set aside (0 = the rule's own value was used).
``ties="strict"`` applies the rules as written.

Where a threshold comes from is ONE typed value, :class:`ThresholdSpec` (a rule, or a fixed / calibrated
number; ``params.yaml`` ``localization.tau_t`` / ``tau_i`` are this type), and ONE resolver turns a spec and
the scores it applies to into a :class:`Threshold`: :func:`resolve_threshold`. Predict, evaluate, the served
model (one image's scores), the CGRO trainer (one image's rollouts) and ReAL
(:func:`~readl.localization.anomaly_map.real_map`)
all use it; :func:`resolve_taus` picks the pair of specs (calibrated file or the configured rules).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple, get_args

import numpy as np

from readl.localization.scores import checked_array

Rule = Literal["max_curvature", "median", "fixed"]
_RULES = get_args(Rule)
Ties = Literal["set_aside", "strict"]
_TIES = ("set_aside", "strict")

KNEE_MIN_DISTANCE = 1e-6  # below this no knee "stands out" (a straight line)
_TIE_TOL = 1e-12  # distances within this of the maximum count as ties (scaling/shift rounding)


@dataclass(frozen=True)
class Threshold:
    """A threshold and how it was found.

    value: the threshold (tokens are kept when their score is strictly greater).
    rule: the rule asked for ("max_curvature", "median" or "fixed").
    index: for "max_curvature", the knee's position in the ascending sorted scores; else None.
    n: number of scores the rule saw (0 for "fixed" without scores).
    fallback: why the rule could not be applied as asked and the median was used; None if it was.
        With ``top_tied > 0`` it is about the rule applied to the scores below the tied block.
    top_tied: scores tied at the maximum that were set aside (kept) because the rule's value kept no
        score (module docstring, ``ties="set_aside"``); 0 when the rule's own value was used.
    """

    value: float
    rule: str
    index: int | None
    n: int
    fallback: str | None
    top_tied: int = 0
    curve: str | None = None  # "max_curvature": the shape the knee was found on ("convex" / "concave")


@dataclass(frozen=True)
class ThresholdSpec:
    """How one ReAL threshold (tau_t or tau_i) is found: a rule applied to the scores it thresholds, or a value.

    ``params.yaml`` ``localization.tau_t`` / ``tau_i`` (and ``train.localization``) are this type: pydantic
    validates it as a dataclass (unknown keys are errors), ``{"rule": "median"}`` or
    ``{"rule": "fixed", "value": 0.4}``.

    Attributes:
        rule: "max_curvature" or "median" (data-driven: applied per image, or per image group in CGRO, to the
            normalised scores; supplement Table 5), or "fixed" (a given value, e.g. calibrated by ``readl
            calibrate``).
        value: the threshold for "fixed" (finite); None for the data-driven rules.

    Raises:
        ValueError: unknown rule, "fixed" without a finite value, or a value given with a data-driven rule.
    """

    rule: Rule
    value: float | None = None

    def __post_init__(self):
        if self.rule not in _RULES:
            raise ValueError(f"unknown threshold rule {self.rule!r}; expected one of {_RULES}")
        if self.rule == "fixed":
            if self.value is None:
                raise ValueError("rule 'fixed' needs a value")
            if not math.isfinite(float(self.value)):
                raise ValueError(f"rule 'fixed' needs a finite value, got {self.value!r}")
            object.__setattr__(self, "value", float(self.value))
        elif self.value is not None:
            raise ValueError(f"rule {self.rule!r} takes no value (got {self.value!r}); use rule='fixed'")

    @classmethod
    def of(cls, tau: ThresholdSpec | float | str) -> ThresholdSpec:
        """A spec from a spec, a number (fixed) or a rule name ("median", "max_curvature")."""
        if isinstance(tau, ThresholdSpec):
            return tau
        if isinstance(tau, str):
            return cls(tau)  # type: ignore[arg-type]
        return cls("fixed", float(tau))

    @property
    def label(self) -> float | str:
        """JSON form used in reports (``metrics.json`` ``thresholds``): the value if fixed, else the rule name."""
        return self.value if self.rule == "fixed" else self.rule


class ThresholdPair(NamedTuple):
    """The two ReAL thresholds of one run: tau_t (on S_T^) and tau_i (on S_I^), paper Eq. 4."""

    tau_t: ThresholdSpec
    tau_i: ThresholdSpec


def resolve_threshold(
    spec: ThresholdSpec | float | str, scores: np.ndarray | None, ties: Ties = "set_aside"
) -> Threshold:
    """THE resolver: the threshold ``spec`` gives for ``scores`` (paper Eq. 4; supplement Table 5).

    Args:
        spec: a :class:`ThresholdSpec` (or what :meth:`ThresholdSpec.of` accepts).
        scores: (n,) finite normalised scores the threshold applies to (one image's S_T^ or S_I^, or an image's
            rollouts together in CGRO); may be None for "fixed".
        ties: the tie rule of the data-driven rules (module docstring).

    Returns:
        A :class:`Threshold`. "fixed": ``value`` = the spec's (``n`` = number of scores). A data-driven rule
        with no scores (n == 0): value 0.0, ``fallback="no scores"`` (every token of an empty set is kept
        trivially). Otherwise :func:`find_threshold`.

    Raises:
        ValueError: bad spec or ``ties``; scores not 1-D, NaN/inf, or missing for a data-driven rule.
    """
    spec = ThresholdSpec.of(spec)
    if spec.rule == "fixed":
        return find_threshold(scores, "fixed", spec.value, ties=ties)
    if scores is not None and not np.asarray(scores).size:
        if ties not in _TIES:
            raise ValueError(f"unknown ties rule {ties!r}; expected one of {_TIES}")
        return Threshold(0.0, spec.rule, None, 0, "no scores")
    return find_threshold(scores, spec.rule, ties=ties)


def read_thresholds_file(thresholds_file: str | Path) -> dict:
    """The one reader of ``thresholds.json`` (written by ``readl calibrate``): its JSON object.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not JSON, or not a JSON object (the message names the file and says to re-run calibrate).
    """
    try:
        data = json.loads(Path(thresholds_file).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{thresholds_file}: not JSON ({exc}); re-run `readl calibrate`") from None
    if not isinstance(data, dict):
        raise ValueError(f"{thresholds_file}: not a JSON object; re-run `readl calibrate`")
    return data


def resolve_taus(cfg, thresholds_file: str | Path | None) -> ThresholdPair:
    """tau_t and tau_i for ReAL: the calibrated values when a thresholds file is given, else ``cfg``'s specs.

    Args:
        cfg: an object with ``tau_t`` and ``tau_i`` :class:`ThresholdSpec` (``LocalizationConfig``): the rules
            (``median`` / ``max_curvature``, applied per image) or fixed values.
        thresholds_file: ``models/thresholds.json`` written by ``readl calibrate`` (keys ``tau_t``, ``tau_i``
            each with a ``value``), or None.

    Returns:
        :class:`ThresholdPair`; from a file both specs are "fixed".

    Raises:
        ValueError: the thresholds file lacks ``tau_t`` / ``tau_i`` values (the message names the file and
            the fix).
    """
    if thresholds_file is None:
        return ThresholdPair(ThresholdSpec.of(cfg.tau_t), ThresholdSpec.of(cfg.tau_i))
    data = read_thresholds_file(thresholds_file)
    try:
        return ThresholdPair(
            ThresholdSpec("fixed", float(data["tau_t"]["value"])), ThresholdSpec("fixed", float(data["tau_i"]["value"]))
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"{thresholds_file}: needs finite tau_t.value and tau_i.value; re-run `readl calibrate`"
        ) from exc


def _scores(scores: object) -> np.ndarray:
    return checked_array("scores", scores, 1).astype(np.float64)  # (n,)


def median(scores: np.ndarray) -> Threshold:
    """Median of the scores (``np.median``; the mean of the two middle values for even n).

    Args: scores: (n,) finite values. Returns: Threshold(rule="median"); n == 0 gives value 0.0
    with fallback "no scores". Raises: ValueError if not 1-D or a value is NaN/inf.
    """
    s = _scores(scores)
    if s.size == 0:
        return Threshold(0.0, "median", None, 0, "no scores")
    return Threshold(float(np.median(s)), "median", None, int(s.size), None)


def fixed(value: float) -> Threshold:
    """A given threshold. Raises ValueError if ``value`` is not a finite number."""
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"fixed threshold must be finite, got {value!r}")
    return Threshold(v, "fixed", None, 0, None)


def max_curvature(scores: np.ndarray) -> Threshold:
    """Threshold at the point of maximum curvature of the sorted score curve (deterministic Kneedle).

    Specification (Kneedle, Satopaa et al. 2011, with sensitivity S -> 0; the order of ``scores`` does not
    matter):

    1. s_(0) <= ... <= s_(n-1): the scores sorted ascending (ties allowed).
    2. x_i = i / (n - 1); y_i = (s_(i) - s_(0)) / (s_(n-1) - s_(0)), both in [0, 1].
    3. The curve's shape (Kneedle's ``curve`` for ``direction="increasing"``): convex when it lies farther below
       the chord y = x than above it (max(x - y) >= max(y - x)), else concave.
    4. d_i = x_i - y_i (convex) or y_i - x_i (concave): how far the curve lies from the chord (the perpendicular
       distance is d_i / sqrt(2), so the argmax is the same).
    5. knee k = the FIRST i with d_i >= max(d) - 1e-12 (the tolerance only absorbs rounding, so
       that scaling or shifting the scores cannot move the knee between equal-distance points).
    6. value = s_(k); index = k; ``curve`` = "convex" / "concave".

    Because y is normalised, the result is invariant to scaling by a positive factor and shifting
    (value transforms with the scores, index is unchanged).

    Fallbacks (rule stays "max_curvature", value from :func:`median`, reason in ``fallback``):
    n < 3; a flat curve (max == min); no knee stands out (max d <= 1e-6: a straight line).

    Args:
        scores: (n,) finite values, any order.

    Returns:
        Threshold(rule="max_curvature").

    Raises:
        ValueError: ``scores`` is not 1-D or holds NaN/inf.
    """
    s = np.sort(_scores(scores))  # (n,)
    n = int(s.size)

    def fallback(reason: str) -> Threshold:
        return Threshold(median(s).value, "max_curvature", None, n, reason)

    if n < 3:
        return fallback(f"fewer than 3 scores (n={n})")
    lo, hi = s[0], s[-1]
    if hi == lo:
        return fallback("flat curve (all scores equal)")
    x = np.arange(n) / (n - 1)  # (n,)
    y = (s - lo) / (hi - lo)  # (n,)
    below, above = x - y, y - x  # (n,) each
    curve, d = ("convex", below) if below.max() >= above.max() else ("concave", above)
    d_max = d.max()
    if d_max <= KNEE_MIN_DISTANCE:
        return fallback(f"no knee stands out (max distance from the chord {d_max:.3g} <= 1e-6)")
    k = int(np.flatnonzero(d >= d_max - _TIE_TOL)[0])
    return Threshold(float(s[k]), "max_curvature", k, n, None, curve=curve)


def find_threshold(
    scores: np.ndarray | None, rule: Rule, value: float | None = None, ties: Ties = "set_aside"
) -> Threshold:
    """Dispatch to :func:`max_curvature`, :func:`median` or :func:`fixed`, with the tie rule.

    Args:
        scores: (n,) finite values; ignored (may be None) for "fixed".
        rule: "max_curvature", "median" or "fixed".
        value: the threshold for "fixed"; must be None or absent for other rules.
        ties: "set_aside" (default): when the rule's value keeps no score, the rule is re-applied below
            the block tied at the maximum (module docstring); "strict": the rule's value as is. Fixed
            thresholds are never changed.

    Raises:
        ValueError: unknown rule or ``ties``, "fixed" without ``value``, ``value`` given for another
            rule, or ``scores`` missing for a data-driven rule.
    """
    if ties not in _TIES:
        raise ValueError(f"unknown ties rule {ties!r}; expected one of {_TIES}")
    if rule == "fixed":
        if value is None:
            raise ValueError("rule 'fixed' needs a value")
        t = fixed(value)
        n = 0 if scores is None else int(np.asarray(scores).size)
        return Threshold(t.value, "fixed", None, n, None)
    if rule not in ("max_curvature", "median"):
        raise ValueError(f"unknown threshold rule {rule!r}; expected 'max_curvature', 'median' or 'fixed'")
    if value is not None:
        raise ValueError(f"rule {rule!r} takes no value (got {value!r}); use rule='fixed'")
    if scores is None:
        raise ValueError(f"rule {rule!r} needs scores")
    apply = max_curvature if rule == "max_curvature" else median
    t = apply(scores)
    s = _scores(scores)  # (n,)
    if ties == "strict" or s.size == 0 or t.value < s.max():
        return t
    return _below_tied_top(s, apply, t)


def _below_tied_top(s: np.ndarray, apply, first: Threshold) -> Threshold:
    """The rule ``apply`` re-applied to the scores below the block tied at the maximum (module docstring)."""
    top = s.max()
    below = s[s < top]  # (m,) the untied rest; the sorted rest is the prefix of the sorted scores
    n_tied = int(s.size - below.size)
    if below.size == 0:  # every score tied: keep them all
        return Threshold(float(np.nextafter(top, -np.inf)), first.rule, None, int(s.size), first.fallback, n_tied)
    t = apply(below)
    return Threshold(t.value, first.rule, t.index, int(s.size), t.fallback, n_tied, t.curve)
