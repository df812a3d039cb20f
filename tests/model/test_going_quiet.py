"""A frequent buyer who stops: the shipped model says at_risk within a step of when it should.

The path is walked as the worker walks it: the user is scored at their last
order, then at each re-scoring step (model.segments.DEFAULT_REEVALUATE_DAYS)
as their silence grows, and the published segment moves through hysteresis
(model.segments.decide). tests/stream/test_going_quiet.py holds the same
through a live worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from model.features import vector
from model.registry import LoadedModel, bootstrap_dir, load_version
from model.segments import DEFAULT_REEVALUATE_DAYS, Hysteresis, decide
from model.training.behaviour.archetypes import NOW_MS, _orders
from stream.core.fold import DAY_MS, fold_all


@dataclass(frozen=True)
class Quiet:
    name: str
    orders: int
    total: float
    span_days: float
    #: at_risk by this many days of silence after the last order
    at_risk_by_days: float


#: The issue's two customers (issue 30, "Done when").
CASES = (
    Quiet("six_orders_of_120_in_30_days", 6, 120.0, 30.0, 120.0),
    Quiet("ten_orders_of_500", 10, 500.0, 90.0, 300.0),
)


def path(
    model: LoadedModel, case: Quiet, predict: Callable[[np.ndarray], np.ndarray] | None = None
) -> list[tuple[float, str]]:
    """(days of silence, published segment) at the last order and at every step."""
    predict = predict or model.scorer.predict
    days = [case.span_days * i / (case.orders - 1) for i in range(case.orders)]
    state = fold_all(_orders(case.name, days, case.total))  # the last order at NOW_MS
    weights = model.decision_weights
    segment: str | None = None
    out = []
    for silence in (0.0, *DEFAULT_REEVALUATE_DAYS):
        x = vector(state, NOW_MS + int(silence * DAY_MS))[None, :]
        p = predict(x)[0]
        probs = {c: round(float(v), 4) for c, v in zip(model.classes, p, strict=True)}
        segment = decide(segment, probs, Hysteresis(), weights)
        out.append((silence, segment))
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_a_frequent_buyer_who_stops_reaches_at_risk_in_time(case: Quiet) -> None:
    walked = path(load_version(bootstrap_dir()), case)
    assert walked[0][1] in ("high_value", "regular"), walked  # a buyer at their last order
    reached = [d for d, s in walked if s == "at_risk"]
    assert reached and reached[0] <= case.at_risk_by_days, walked
    # Once gone, silence alone never brings them back.
    assert all(s == "at_risk" for d, s in walked if d >= reached[0]), walked


def test_a_model_blind_to_time_fails_the_check() -> None:
    """The check can fail: a model that reads the customer as of their last order,
    whatever the silence since (one that ignores recency), never says at_risk."""
    model = load_version(bootstrap_dir())
    case = CASES[0]
    days = [case.span_days * i / (case.orders - 1) for i in range(case.orders)]
    at_last_order = vector(fold_all(_orders(case.name, days, case.total)), NOW_MS)[None, :]

    def blind(x: np.ndarray) -> np.ndarray:
        return np.repeat(model.scorer.predict(at_last_order), len(x), axis=0)

    walked = path(model, case, blind)
    assert not any(s == "at_risk" for _, s in walked), walked
