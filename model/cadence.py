"""Buy-till-you-die quantities per user, from the feature row: P(alive), expected purchases
and expected spend over the horizon. Pure NumPy: the worker serves them.

BG/NBD (Fader, Hardie & Lee 2005) needs only frequency, recency and age, and
Gamma-Gamma (Fader & Hardie 2013) only frequency and mean order value; the
feature row carries all four (``order_count``, ``days_since_first_order``,
``days_since_last_order``, ``avg_order_value``). Their parameters are fitted
at training (:mod:`model.training.clv`, on buyers, with age measured from the
first purchase) and travel in the model's weights, so the network reads the
same quantities at training and in the worker. Time is in weeks, as there.

P(alive) takes the MBG/NBD form (see :meth:`Cadence.quantities`). The one
further approximation: the expected number of purchases is P(alive) times the
alive customer's posterior mean rate times the horizon. BG/NBD's exact
conditional expectation (eq. 10) also lets a customer die *during* the
horizon, through a Gauss hypergeometric function that NumPy lacks; this
ceiling ranks customers alike where it matters (it is monotone in the same
inputs) and is what the network is given, not what is published.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from model.features import raw_column

WEEK_DAYS = 7.0
#: The extra model inputs, appended to the feature row in this order.
CADENCE_INPUTS: tuple[str, ...] = ("btyd_p_alive", "btyd_purchases", "btyd_spend")

#: The feature columns the cadence reads. No other column moves its inputs or
#: its scores (tests/model/test_explain.py holds both to that), which is what
#: lets an explanation occlude any other feature without recomputing them.
CADENCE_READS: tuple[str, ...] = (
    "order_count",
    "days_since_first_order",
    "days_since_last_order",
    "avg_order_value",
)


@dataclass(frozen=True, slots=True)
class Cadence:
    """Fitted BG/NBD (r, alpha, a, b; weeks) and Gamma-Gamma (p, q, v; None when
    unfittable, and then a customer's own mean order value is their expected value)."""

    r: float
    alpha: float
    a: float
    b: float
    horizon_days: float
    p: float | None = None
    q: float | None = None
    v: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cadence:
        """From :meth:`to_dict`; NaN (how the weights file stores None) reads as None."""

        def value(v: Any) -> float | None:
            return None if v is None or math.isnan(float(v)) else float(v)

        return cls(**{k: value(v) for k, v in data.items()})  # type: ignore[arg-type]

    def quantities(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(P(alive), expected purchases, expected spend) over the horizon, per row of
        model input ``x``. Customers who never ordered get 0 for all three: the
        buy-till-you-die process starts at the first purchase."""
        orders = np.rint(raw_column(x, "order_count"))
        buyer = orders >= 1
        age = np.maximum(raw_column(x, "days_since_first_order"), 0.0) / WEEK_DAYS
        since = np.maximum(raw_column(x, "days_since_last_order"), 0.0) / WEEK_DAYS
        t_x = np.clip(age - since, 0.0, age)
        repeat = np.maximum(orders - 1.0, 0.0)
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        # Odds of being dead, in the MBG/NBD form (Batislam, Denizel & Filiztekin
        # 2007): a / (b + x) * ((alpha + T) / (alpha + t_x)) ** (r + x). BG/NBD's
        # own form (b + x - 1, and 0 odds at x = 0) holds every one-order
        # customer alive forever, so a second order would *lower* P(alive);
        # here an order placed now always raises it, and age always lowers it.
        log_odds = (
            np.log(a)
            - np.log(b + repeat)
            + (r + repeat) * (np.log(alpha + age) - np.log(alpha + t_x))
        )
        dead = np.exp(np.minimum(log_odds, 700.0))
        p_alive = np.where(buyer, 1.0 / (1.0 + dead), 0.0)
        rate = (r + repeat) / (alpha + age)
        purchases = p_alive * rate * (self.horizon_days / WEEK_DAYS)
        aov = np.maximum(raw_column(x, "avg_order_value"), 0.0)
        if self.p is not None and self.q is not None and self.v is not None:
            value = self.p * (self.v + repeat * aov) / (self.p * repeat + self.q - 1.0)
        else:
            value = aov
        return p_alive, purchases, purchases * value

    def inputs(self, x: np.ndarray) -> np.ndarray:
        """The :data:`CADENCE_INPUTS` columns for model input ``x`` (counts and money log1p'd).

        The spend column prices the expected purchases at the customer's own
        mean order value, not Gamma-Gamma's: its shrinkage toward the
        population mean would make an order at the customer's own average
        *lower* their expected spend when they buy below the mean, and the
        network's spend head must never fall when an order is added.
        """
        p_alive, purchases, _ = self.quantities(x)
        own = np.maximum(raw_column(x, "avg_order_value"), 0.0)
        return np.stack([p_alive, np.log1p(purchases), np.log1p(purchases * own)], axis=1)


#: Columns of :func:`btyd_scores`: the scores of the activity, purchase and line
#: probabilities, then the buyer indicator and the expected spend itself.
BTYD_SCORES: tuple[str, ...] = ("activity", "purchase", "value", "buyer", "spend")


def p_purchase(cadence: Cadence, x: np.ndarray) -> np.ndarray:
    """P(at least one purchase in the horizon) under the fitted model, per row.

    An alive customer's purchase rate has the posterior Gamma(r + x, alpha + T),
    and a BG/NBD customer can only die just after a purchase, so no purchase in
    the next t means none by a Poisson process at that rate:
    E[exp(-lambda t)] = ((alpha + T) / (alpha + T + t)) ** (r + x). Hence
    P(alive) * (1 - that). 0 for customers who never ordered.
    """
    p_alive, _, _ = cadence.quantities(x)
    orders = np.rint(raw_column(x, "order_count"))
    repeat = np.maximum(orders - 1.0, 0.0)
    age = np.maximum(raw_column(x, "days_since_first_order"), 0.0) / WEEK_DAYS
    t = cadence.horizon_days / WEEK_DAYS
    a = cadence.alpha + age
    none = np.exp((cadence.r + repeat) * (np.log(a) - np.log(a + t)))
    out: np.ndarray = p_alive * (1.0 - none)
    return out


def btyd_scores(cadence: Cadence, x: np.ndarray) -> np.ndarray:
    """What the buy-till-you-die model itself says of each row, as scores the value
    head can stack (model.value): logit P(purchase in the horizon) for activity
    and for buying (on a purchase log, activity is buying), log expected spend
    (Gamma-Gamma's value when fitted) for the line; each 0 for a customer who
    never ordered; then the buyer indicator and the expected spend itself.

    Each score rises with what the model believes raises it: more, and more
    recent, purchases; a higher order value. The head's weight on each is kept
    non-negative, so the directions survive stacking.
    """
    _, _, spend = cadence.quantities(x)
    buyer = (np.rint(raw_column(x, "order_count")) >= 1).astype(np.float64)
    p = np.clip(p_purchase(cadence, x), 1e-6, 1.0 - 1e-6)
    out = np.zeros((x.shape[0], len(BTYD_SCORES)))
    out[:, 0] = np.log(p) - np.log1p(-p)
    out[:, 1] = out[:, 0]
    out[:, 2] = np.log(spend + 1e-6)
    out[:, :3] *= buyer[:, None]
    out[:, 3] = buyer
    out[:, 4] = spend
    return out


#: The fields of :class:`Cadence`, in the order a weights file stores them.
CADENCE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Cadence))


def extend(x: np.ndarray, cadence: Cadence | None) -> np.ndarray:
    """Model input ``x`` with the cadence inputs appended (as is without a cadence)."""
    if cadence is None:
        return x
    return np.concatenate([x, cadence.inputs(x)], axis=1)
