"""Buy-till-you-die expectations from feature rows: BG/NBD purchases, Gamma-Gamma value.

The fitted models and their conditional expectations, apart from the fitting
(model/training/clv.py, which has the references): what a fit *is* does not need an
optimiser. Time is in weeks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import hyp2f1

from model.features import raw_column
from stream.core.fold import DAY_MS

WEEK_MS = 7 * DAY_MS
# eq. 10 has removable singularities (a = 1; a + b + x = 1): it is evaluated this far off them.
_NUDGE = 1e-6


@dataclass(frozen=True, slots=True)
class BGNBD:
    """Fitted BG/NBD: purchase rate lambda ~ Gamma(r, alpha), dropout p ~ Beta(a, b)."""

    r: float
    alpha: float
    a: float
    b: float

    def expected_purchases(
        self, t: float | np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray
    ) -> np.ndarray:
        """E[Y(t) | x, t_x, T]: expected purchases in the next ``t`` (eq. 10).

        The hypergeometric term is rewritten with Euler's transformation,
        ``(1-z)^(r+x) 2F1(r+x, b+x; c; z) = (1-z)^(a-1) 2F1(a+b-1-r, a-1; c; z)``,
        so heavy buyers (large x) never see huge 2F1 parameters. eq. 10 is
        analytic in ``a`` apart from a removable 0/0 at a = 1, so a <= 1 (which
        real fits give: 0.79 on CDNOW) needs no clipping, only a nudge off 1;
        likewise c = 0 (x = 0, a + b = 1), where the 2F1 pole meets a factor c.
        """
        x, t_x, T = (np.asarray(v, dtype=np.float64) for v in (x, t_x, T))
        r, alpha, b = self.r, self.alpha, self.b
        a = self.a if abs(self.a - 1.0) > _NUDGE else 1.0 + _NUDGE
        z = t / (alpha + T + t)
        c = a + b + x - 1.0
        c = np.where(np.abs(c) > _NUDGE, c, _NUDGE)
        tail = 1.0 - np.exp((a - 1.0) * np.log1p(-z)) * hyp2f1(a + b - 1.0 - r, a - 1.0, c, z)
        # Odds that a customer who bought x times is already dead (the 1 + ... term).
        repeat = x > 0
        log_odds = (
            np.log(a)
            - np.log(np.where(repeat, b + x - 1.0, 1.0))
            + (r + x) * (np.log(alpha + T) - np.log(alpha + t_x))
        )
        dead = np.where(repeat, np.exp(np.minimum(log_odds, 700.0)), 0.0)
        return np.asarray(c / (a - 1.0) * tail / (1.0 + dead), dtype=np.float64)


@dataclass(frozen=True, slots=True)
class GammaGamma:
    """Fitted Gamma-Gamma: order value ~ Gamma(p, nu), nu ~ Gamma(q, v); q > 1 by construction."""

    p: float
    q: float
    v: float

    @property
    def mean(self) -> float:
        """Population mean order value, p v / (q - 1): the guess for a customer with no history."""
        return self.p * self.v / (self.q - 1.0)

    def expected_value(self, frequency: np.ndarray, monetary: np.ndarray) -> np.ndarray:
        """E[order value | frequency, monetary]: a credibility-weighted blend of the population
        mean and the customer's own mean, trusting the latter more the more orders back it."""
        f = np.asarray(frequency, dtype=np.float64)
        m = np.maximum(np.asarray(monetary, dtype=np.float64), 0.0)
        own = self.p * (self.v + f * m) / (self.p * f + self.q - 1.0)
        return np.asarray(np.where(f > 0, own, self.mean), dtype=np.float64)


def btyd_inputs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(repeat purchases, t_x weeks, T weeks, mean order value) from feature rows.

    Age is measured from the first purchase, as BG/NBD defines it, so browsing
    before it does not count as time the customer could have bought in; rows
    of customers who never ordered have T = 0 (fit on buyers only:
    :func:`buyers`). The mean order value includes the first order, which
    classic Gamma-Gamma leaves out.
    """
    orders = np.rint(raw_column(x, "order_count"))
    age = np.where(orders > 0, np.maximum(raw_column(x, "days_since_first_order"), 0.0), 0.0)
    since_order = raw_column(x, "days_since_last_order")
    t_x = np.where(orders > 0, np.clip(age - since_order, 0.0, age), 0.0)
    week = WEEK_MS / DAY_MS
    return np.maximum(orders - 1, 0), t_x / week, age / week, raw_column(x, "avg_order_value")


def buyers(x: np.ndarray) -> np.ndarray:
    """Mask of rows whose customer has ordered: the buy-till-you-die population."""
    return np.asarray(np.rint(raw_column(x, "order_count")) >= 1)
