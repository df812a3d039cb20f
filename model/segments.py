"""Segment names and the change rule (hysteresis). Pure.

A segment is a prediction of what the customer does next (see docs/design.md):
the classes come from the model's manifest, these are only the defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

DEFAULT_SEGMENTS: tuple[str, ...] = ("high_value", "regular", "potential", "at_risk")

#: Days of silence (event time) at which a quiet user is scored again. A
#: segment can only change when the user is scored, so the steps must be dense
#: where the model's answer moves: a weekly buyer who stops is at_risk after a
#: few weeks, not at the next step 60 days later. Weekly for the first month,
#: then every two weeks to three months, then monthly or so to a year
#: (tests/stream/test_going_quiet.py: a frequent buyer who stops reaches
#: at_risk by the first step after the model says so).
DEFAULT_REEVALUATE_DAYS: tuple[float, ...] = (
    7.0, 14.0, 21.0, 30.0, 45.0, 60.0, 75.0, 90.0, 120.0, 150.0, 180.0, 240.0, 300.0, 365.0
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Hysteresis:
    """A user leaves their segment only when the evidence is clearly elsewhere.

    ``margin``: the best other segment must beat the current one by this much.
    ``floor``: below this probability the current segment is dropped anyway,
    whatever the margin says (it has stopped being a plausible answer).
    """

    margin: float = 0.1
    floor: float = 0.2


def argmax(probabilities: Mapping[str, float]) -> str:
    # Ties break on the order the model lists its classes: dicts keep it.
    return max(probabilities, key=lambda s: probabilities[s])


def decision_scores(
    probabilities: Mapping[str, float], weights: Mapping[str, float] | None
) -> Mapping[str, float]:
    """What segments are decided on: the published probabilities, times the model's
    decision weights (renormalised), if it has any.

    A weight is a decision offset (e.g. tuned for high_value F1 at training):
    it moves where the line between segments falls, never the probabilities
    that are published, which stay calibrated (docs/model.md).
    """
    if not weights:
        return probabilities
    scored = {k: p * weights.get(k, 1.0) for k, p in probabilities.items()}
    total = sum(scored.values())
    return {k: v / total for k, v in scored.items()} if total > 0 else probabilities


def decide(
    current: str | None,
    probabilities: Mapping[str, float],
    rule: Hysteresis = Hysteresis(),
    weights: Mapping[str, float] | None = None,
) -> str:
    """The segment the user should be in, given where they are now.

    ``weights``: the model's decision weights (:func:`decision_scores`).
    """
    probabilities = decision_scores(probabilities, weights)
    best = argmax(probabilities)
    if current is None or current not in probabilities or best == current:
        return best
    # In basis points: the worker decides on probabilities rounded to 4
    # decimals, and float subtraction would settle an exact tie at the margin
    # one way or the other (0.55 - 0.45 > 0.1, but 0.35 - 0.25 < 0.1).
    p_current, p_best = _bp(probabilities[current]), _bp(probabilities[best])
    if p_current < _bp(rule.floor) or p_best - p_current > _bp(rule.margin):
        return best
    return current


def _bp(p: float) -> int:
    return round(p * 10_000)


#: Rounding to 4 decimals moves a probability by at most 0.5e-4, so a lead of
#: more than 1e-4 (plus slack for float error) survives rounding.
ROUNDING_SAFE_LEAD = 1.01e-4


def weighted(probs: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """:func:`decision_scores` for a (n, classes) matrix; ``weights`` per class."""
    if weights is None:
        return probs
    scored = probs * weights
    total = scored.sum(axis=1, keepdims=True)
    out: np.ndarray = np.where(total > 0, scored / np.where(total > 0, total, 1.0), probs)
    return out


def clear_leaders(probs: np.ndarray, weights: np.ndarray | None = None) -> list[int]:
    """Per row of ``probs`` (n, classes): the index of the class that is the argmax
    of the row *rounded to 4 decimals* whatever rounding does, or -1 if the lead
    is too narrow to tell without rounding.

    A user already in that segment stays there (:func:`decide`), so the worker
    can skip rounding and deciding for such rows, which are most of them.
    With decision ``weights`` (per class), the lead is taken on the weighted,
    renormalised scores and must be wider: rounding moves a weighted score by
    up to max(w)/min(w) times as much, and the renormalisation once more.
    """
    if probs.shape[0] == 0:
        return []
    if probs.shape[1] < 2:
        return [0] * probs.shape[0]
    lead = ROUNDING_SAFE_LEAD
    if weights is not None:
        probs = weighted(probs, weights)
        lead *= 2.0 * float(np.max(weights) / max(float(np.min(weights)), 1e-12))
    top2 = np.partition(probs, -2, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > lead
    leaders: list[int] = np.where(clear, probs.argmax(axis=1), -1).tolist()
    return leaders
