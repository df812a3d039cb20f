"""Behavioural checks: directional expectations (CheckList) on a model's own rows. Pure NumPy.

Ribeiro et al., "Beyond Accuracy: Behavioral Testing of NLP Models with
CheckList" (ACL 2020): change one thing about an input that can only push the
answer one way, and count how often the model moves the other way. Here the
inputs are rows of model input (:func:`model.features.transform`); each
perturbation edits the raw features the way the fold would have, had the
change happened (an order placed now moves counts, spend, recency and the
ratios together), then transforms them back.

The expectations are data (:data:`EXPECTATIONS`), each with its threshold;
the gate refuses a candidate over any threshold, and the report shows the
rates. The archetype customers live in :mod:`model.training.behaviour.archetypes`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from model.features import (
    FEATURE_NAMES,
    LOG_MASK,
    MIN_GAP_DAYS,
    PRIOR_GAP_DAYS,
    RATE_DAYS,
    transform,
)
from stream.core.fold import HALF_LIVES

#: A move the other way smaller than this is float noise, not a violation.
NOISE = 1e-6
DEFAULT_MAX_RATE = 0.01
#: Order value used for buyers-to-be (rows with no orders yet) when a row set
#: has no buyers to take a median from.
FALLBACK_ORDER_VALUE = 50.0

_COL = {name: i for i, name in enumerate(FEATURE_NAMES)}


def to_raw(x: np.ndarray) -> np.ndarray:
    """Model input back to raw feature values (undo log1p)."""
    raw = np.array(x, dtype=np.float64, copy=True)
    raw[:, LOG_MASK] = np.expm1(raw[:, LOG_MASK])
    return raw


def _c(raw: np.ndarray, name: str) -> np.ndarray:
    return raw[:, _COL[name]]


def _set(raw: np.ndarray, name: str, values: np.ndarray | float) -> None:
    raw[:, _COL[name]] = values


def _rates(out: np.ndarray) -> None:
    """Recompute the features derived from counts, spend, recency and tenure, as
    :func:`model.features.raw_row` does (the mean gap between orders is kept:
    only a perturbation that adds an order changes it)."""
    months = np.maximum(_c(out, "tenure_days"), RATE_DAYS) / RATE_DAYS
    _set(out, "orders_per_30d", _c(out, "order_count") / months)
    _set(out, "spend_per_30d", _c(out, "total_spend") / months)
    _set(out, "silence_ratio", _c(out, "days_since_last_order") / _c(out, "mean_order_gap_days"))


def add_order_now(raw: np.ndarray) -> np.ndarray:
    """An order placed at the cutoff, worth the user's own average (else the rows' median)."""
    out = raw.copy()
    orders = _c(raw, "order_count")
    aov = _c(raw, "avg_order_value")
    buyers = aov[orders > 0]
    typical = float(np.median(buyers)) if len(buyers) else FALLBACK_ORDER_VALUE
    value = np.where(orders > 0, aov, typical)
    new_orders = orders + 1
    _set(out, "order_count", new_orders)
    for name in ("orders_30d", "orders_90d"):
        _set(out, name, _c(raw, name) + 1.0)
    for name in ("total_spend", "spend_30d", "spend_90d"):
        _set(out, name, _c(raw, name) + value)
    _set(out, "avg_order_value", (_c(raw, "total_spend") + value) / new_orders)
    _set(out, "days_since_last_order", 0.0)
    _set(out, "days_since_last_activity", 0.0)
    _set(out, "has_ordered", 1.0)
    # Cadence: a first order starts it; a further one spreads the span from the
    # first order to now over one more gap.
    since_first = np.where(orders > 0, _c(raw, "days_since_first_order"), 0.0)
    _set(out, "days_since_first_order", since_first)
    gap = np.maximum(since_first / np.maximum(orders, 1.0), MIN_GAP_DAYS)
    _set(out, "mean_order_gap_days", np.where(orders > 0, gap, PRIOR_GAP_DAYS))
    # cart_to_order = min(1, orders / carts), or 1 for a buyer without carts:
    # one more order scales it by (orders + 1) / orders; a first order makes it
    # 1 / carts (carts unknown here: at least the last 30 days' adds) or 1.
    ratio = _c(raw, "cart_to_order")
    carts = np.maximum(_c(raw, "cart_adds_30d"), 1.0)
    first = np.where(_c(raw, "cart_adds_30d") < 0.5, 1.0, np.minimum(1.0, 1.0 / carts))
    grown = np.minimum(1.0, ratio * new_orders / np.maximum(orders, 1.0))
    _set(out, "cart_to_order", np.where(orders > 0, grown, first))
    sessions = _c(raw, "session_count")
    per_session = np.divide(new_orders, sessions, out=np.zeros_like(sessions), where=sessions > 0)
    # orders / sessions; never below what it was (rounding, or an order whose
    # session was not tracked, must not read as fewer orders per session).
    _set(out, "orders_per_session", np.maximum(_c(raw, "orders_per_session"), per_session))
    _set(out, "return_ratio", _c(raw, "return_ratio") * orders / new_orders)
    _rates(out)
    return out


def older(raw: np.ndarray, days: float = 30.0) -> np.ndarray:
    """The same history, ``days`` further in the past: spans grow, decayed counters decay."""
    out = raw.copy()
    for name in ("days_since_last_activity", "days_since_last_order", "tenure_days"):
        _set(out, name, _c(raw, name) + days)
    buyer = _c(raw, "order_count") >= 1
    _set(
        out, "days_since_first_order", _c(raw, "days_since_first_order") + np.where(buyer, days, 0)
    )
    decayed = {
        "orders_30d": "orders_30d",
        "orders_90d": "orders_90d",
        "spend_30d": "spend_30d",
        "spend_90d": "spend_90d",
        "product_views_30d": "views_30d",
        "cart_adds_30d": "carts_30d",
    }
    for feature, counter in decayed.items():
        _set(out, feature, _c(raw, feature) * 2.0 ** (-days / HALF_LIVES[counter]))
    _rates(out)
    return out


def bigger_last_order(raw: np.ndarray, extra: float = 100.0) -> np.ndarray:
    """The last order worth ``extra`` more (buyers only; others unchanged)."""
    out = raw.copy()
    orders = _c(raw, "order_count")
    add = np.where(orders > 0, extra, 0.0)
    age = _c(raw, "days_since_last_order")
    total = _c(raw, "total_spend") + add
    _set(out, "total_spend", total)
    _set(
        out, "avg_order_value", np.divide(total, orders, out=np.zeros_like(total), where=orders > 0)
    )
    _set(out, "spend_30d", _c(raw, "spend_30d") + add * 2.0 ** (-age / HALF_LIVES["spend_30d"]))
    _set(out, "spend_90d", _c(raw, "spend_90d") + add * 2.0 ** (-age / HALF_LIVES["spend_90d"]))
    _rates(out)
    return out


def more_views(raw: np.ndarray, views: float = 5.0) -> np.ndarray:
    """Five more product views today, in sessions the user already had."""
    out = raw.copy()
    _set(out, "product_views_30d", _c(raw, "product_views_30d") + views)
    _set(out, "days_since_last_activity", 0.0)
    return out


def order_in_new_session(raw: np.ndarray) -> np.ndarray:
    """An order placed now in a session the user never had before: sessions grow
    with it, so orders per session can fall."""
    out = add_order_now(raw)
    sessions = _c(raw, "session_count") + 1.0
    _set(out, "session_count", sessions)
    _set(out, "orders_per_session", _c(out, "order_count") / sessions)
    return out


def small_order_now(raw: np.ndarray, value: float = 5.0) -> np.ndarray:
    """An order of EUR 5 placed now: the average order value falls."""
    out = add_order_now(raw)
    orders = _c(out, "order_count")
    total = _c(raw, "total_spend") + value
    _set(out, "total_spend", total)
    _set(out, "avg_order_value", total / orders)
    for name in ("spend_30d", "spend_90d"):
        _set(out, name, _c(raw, name) + value)
    _rates(out)
    return out


def first_order_new_category(raw: np.ndarray) -> np.ndarray:
    """An order placed now in a category the user never touched."""
    out = add_order_now(raw)
    _set(out, "distinct_categories", _c(raw, "distinct_categories") + 1.0)
    return out


def refund_last_order(raw: np.ndarray) -> np.ndarray:
    """The last order refunded (buyers only): returned spend grows by its average value."""
    out = raw.copy()
    orders = _c(raw, "order_count")
    total = _c(raw, "total_spend")
    returned = _c(raw, "return_ratio") * total + np.where(orders > 0, _c(raw, "avg_order_value"), 0)
    ratio = np.divide(returned, total, out=np.zeros_like(total), where=total > 0)
    _set(out, "return_ratio", np.where(orders > 0, np.minimum(ratio, 1.0), _c(raw, "return_ratio")))
    return out


PERTURBATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "add_order_now": add_order_now,
    "older_30d": older,
    "bigger_last_order": bigger_last_order,
    "more_views": more_views,
    "order_in_new_session": order_in_new_session,
    "small_order_now": small_order_now,
    "first_order_new_category": first_order_new_category,
    "refund_last_order": refund_last_order,
}


@dataclass(frozen=True)
class Expectation:
    name: str
    description: str
    perturbation: str  # a key of PERTURBATIONS
    segment: str
    #: "not_lower": P(segment) must not fall; "not_higher": must not rise
    direction: Literal["not_lower", "not_higher"]
    max_violation_rate: float = DEFAULT_MAX_RATE
    #: True when the weight constraints (model.training.monotone) already make it
    #: hold for any weights; False for the moves users make that also shift free
    #: inputs (sessions, categories, ratios), where only the model's training can.
    by_construction: bool = True


EXPECTATIONS: tuple[Expectation, ...] = (
    Expectation(
        "recent_spend_high_value",
        "an order placed now must not lower P(high_value)",
        "add_order_now",
        "high_value",
        "not_lower",
    ),
    Expectation(
        "added_order_at_risk",
        "an added order must not raise P(at_risk)",
        "add_order_now",
        "at_risk",
        "not_higher",
    ),
    Expectation(
        "older_history_at_risk",
        "the same history, 30 days older, must not lower P(at_risk)",
        "older_30d",
        "at_risk",
        "not_lower",
    ),
    Expectation(
        "bigger_order_high_value",
        "a last order worth EUR 100 more must not lower P(high_value)",
        "bigger_last_order",
        "high_value",
        "not_lower",
    ),
    Expectation(
        "more_views_at_risk",
        "five more product views today must not raise P(at_risk)",
        "more_views",
        "at_risk",
        "not_higher",
    ),
    # What users do that the ones above never try (issue 33). Each names the
    # label it leans on (model/labels.py): at_risk is no activity at all in the
    # window; high_value is the top of the window's buyers by spend.
    Expectation(
        "order_in_new_session_at_risk",
        "an order now, in a new session, must not raise P(at_risk) (at_risk = no activity; "
        "orders per session may fall)",
        "order_in_new_session",
        "at_risk",
        "not_higher",
        by_construction=False,
    ),
    Expectation(
        "small_order_at_risk",
        "a EUR 5 order now must not raise P(at_risk) (at_risk = no activity; the average "
        "order value falls)",
        "small_order_now",
        "at_risk",
        "not_higher",
        by_construction=False,
    ),
    Expectation(
        "new_category_order_at_risk",
        "an order now in a category never touched must not raise P(at_risk) "
        "(at_risk = no activity)",
        "first_order_new_category",
        "at_risk",
        "not_higher",
        by_construction=False,
    ),
    Expectation(
        "refund_high_value",
        "a refund of the last order must not raise P(high_value) (high_value = top spend "
        "among the window's buyers; nothing was bought)",
        "refund_last_order",
        "high_value",
        "not_higher",
        by_construction=False,
    ),
)


Predict = Callable[[np.ndarray], np.ndarray]


def check(
    predict: Predict,
    classes: tuple[str, ...],
    x: np.ndarray,
    expectations: tuple[Expectation, ...] = EXPECTATIONS,
) -> list[dict[str, Any]]:
    """Violation rate of each expectation on rows ``x`` (model input), one dict each.

    An expectation about a class the model lacks is reported as not applicable.
    """
    raw = to_raw(x)
    base = predict(x)
    out: list[dict[str, Any]] = []
    perturbed: dict[str, np.ndarray] = {}
    for e in expectations:
        row: dict[str, Any] = {
            "name": e.name,
            "description": e.description,
            "segment": e.segment,
            "threshold": e.max_violation_rate,
        }
        if e.segment not in classes or len(x) == 0:
            out.append({**row, "applicable": False, "passed": True, "rate": None, "rows": 0})
            continue
        if e.perturbation not in perturbed:
            perturbed[e.perturbation] = predict(transform(PERTURBATIONS[e.perturbation](raw)))
        k = classes.index(e.segment)
        delta = perturbed[e.perturbation][:, k] - base[:, k]
        wrong = delta < -NOISE if e.direction == "not_lower" else delta > NOISE
        rate = float(wrong.mean())
        out.append(
            {
                **row,
                "applicable": True,
                "rows": len(x),
                "violations": int(wrong.sum()),
                "rate": rate,
                "worst": float(-delta.min() if e.direction == "not_lower" else delta.max()),
                "passed": rate <= e.max_violation_rate,
            }
        )
    return out
