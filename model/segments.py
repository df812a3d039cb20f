"""Segment names and the change rule (hysteresis). Pure.

A segment is a prediction of what the customer does next (see design.md):
the classes come from the model's manifest, these are only the defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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
