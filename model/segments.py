"""Segment names and the change rule (hysteresis). Pure.

A segment is a prediction of what the customer does next (see docs/design.md):
the classes come from the model's manifest, these are only the defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

DEFAULT_SEGMENTS: tuple[str, ...] = ("high_value", "regular", "potential", "at_risk")


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


def decide(
    current: str | None, probabilities: Mapping[str, float], rule: Hysteresis = Hysteresis()
) -> str:
    """The segment the user should be in, given where they are now."""
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


def clear_leaders(probs: np.ndarray) -> list[int]:
    """Per row of ``probs`` (n, classes): the index of the class that is the argmax
    of the row *rounded to 4 decimals* whatever rounding does, or -1 if the lead
    is too narrow to tell without rounding.

    A user already in that segment stays there (:func:`decide`), so the worker
    can skip rounding and deciding for such rows, which are most of them.
    """
    if probs.shape[0] == 0:
        return []
    if probs.shape[1] < 2:
        return [0] * probs.shape[0]
    top2 = np.partition(probs, -2, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > ROUNDING_SAFE_LEAD
    leaders: list[int] = np.where(clear, probs.argmax(axis=1), -1).tolist()
    return leaders
