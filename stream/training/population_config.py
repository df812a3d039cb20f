"""A synthetic population's configuration, its limits, and their validation.

The knobs of :mod:`stream.training.populations` (the processes they drive are
described there), kept apart from the code that draws from them so that each
part (seasons, catalogue, customers, sessions) imports the config without
importing the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np

from stream.core.events import MIN_TIMESTAMP_MS
from stream.training.generate import DAY_MS, MINUTE_MS

#: Orders above this are B2B outliers; far below decode's MAX_MONEY on purpose.
MAX_ORDER_VALUE: Final = 50_000.0
MIN_ORDER_VALUE: Final = 0.5
#: Catalogue sizes a population draws from (log-uniform) when ``categories`` is unset.
MIN_CATEGORIES: Final = 10
MAX_CATEGORIES: Final = 2000
#: Quiet time after a session before the next may start: sessions never overlap.
_SESSION_COOLDOWN_MS: Final = 30 * MINUTE_MS
#: Seeds a population's catalogue size when the config leaves it open. The
#: random-stream tags (3 in populations, 4 in population_catalogue, 5 here)
#: must stay distinct, or the streams they seed would repeat each other.
_CATALOGUE_SIZE_TAG: Final = 5


@dataclass(frozen=True)
class PopulationConfig:
    users: int = 2000
    days: float = 365.0
    start_ms: int = 1_704_067_200_000  # 2024-01-01T00:00:00Z
    seed: int = 0
    clickstream_topic: str = "clickstream"
    orders_topic: str = "orders"
    #: Free text for reports (vertical, tracking regime); not used to generate.
    label: str = "cdnow-like"
    # Defaults: Pareto/NBD on CDNOW (Fader, Hardie & Lee 2005) r=0.55,
    # alpha=10.58 weeks, s=0.61, beta=11.67 weeks; rates are per day here.
    r: float = 0.55
    alpha: float = 74.0
    s: float = 0.61
    beta: float = 82.0
    # Gamma-Gamma on CDNOW: p=6.25, q=3.74, gamma=15.44 (mean order ~35).
    p: float = 6.25
    q: float = 3.74
    gamma: float = 15.44
    #: Share acquired before the period: they appear when they next act.
    share_existing: float = 0.5
    share_orders_only: float = 0.2
    share_click_only: float = 0.3
    #: Browsing sessions a day while alive: each user's own rate, drawn from a
    #: Gamma with this mean and shape (smaller shape: more uneven), independent
    #: of the purchase rate and order value. 0.05 is a visit every 20 days.
    browse_per_day: float = 0.05
    browse_shape: float = 0.6
    #: Mean product views of a browsing session (1 + Poisson); half when buying.
    views_per_session: float = 4.0
    search_p: float = 0.5
    #: Per viewed product: added to the cart; with a cart, one taken out.
    cart_p: float = 0.1
    remove_p: float = 0.2
    #: A browsing session with a cart reaches checkout and abandons it.
    checkout_abandon_p: float = 0.05
    #: Mean distinct lines of an order (1 + Poisson).
    lines_per_order: float = 2.0
    #: Share of orders later cancelled or refunded, and the cancelled share of those.
    return_p: float = 0.05
    cancel_share: float = 0.4
    #: Share of the buying customers (buyers and orders-only) who buy several
    #: times a month and drop out BG/NBD-style (see :mod:`stream.training.populations`).
    share_frequent: float = 0.10
    #: Their purchase rate: lognormal, median orders a month and log-sd.
    frequent_orders_per_month: float = 4.0
    frequent_orders_sigma: float = 0.35
    #: Their dropout probability after each purchase, Beta(a, b). The default
    #: (mean 0.14) ends most runs of frequent buying within months, some after
    #: two orders and a few only after dozens. BG/NBD's fit on CDNOW, where
    #: most buy rarely, is a=0.79, b=2.43 (mean 0.25).
    frequent_dropout_a: float = 2.0
    frequent_dropout_b: float = 12.0
    #: Catalogue size; None draws it log-uniformly in [MIN_CATEGORIES,
    #: MAX_CATEGORIES] from the seed (see ``catalogue_size``).
    categories: int | None = None
    #: Mean number of a customer's favourite categories (1 + Poisson), and the
    #: share of picks (views, order lines) explored from the whole catalogue.
    favourite_categories: float = 3.0
    explore_p: float = 0.2
    #: Seasonality: relative swing of the day-of-week intensity (Monday at
    #: 1 + a, Saturday at 1 - a, of the mean) and of the day-of-year intensity
    #: (a cosine, 1 + a on yearly_peak_day, 1 - a half a year away; days from
    #: January 1st at 0, so 334 is December 1st). Amplitudes in [0, 1).
    weekly_amplitude: float = 0.2
    yearly_amplitude: float = 0.2
    yearly_peak_day: float = 334.0

    @property
    def end_ms(self) -> int:
        """Exclusive upper bound of every timestamp."""
        return self.start_ms + int(self.days * DAY_MS)

    @property
    def mean_order_value(self) -> float:
        """E[order value] under Gamma-Gamma: p * gamma / (q - 1)."""
        return self.p * self.gamma / (self.q - 1.0)

    @property
    def catalogue_size(self) -> int:
        """Categories in the catalogue: ``categories``, or drawn from the seed."""
        if self.categories is not None:
            return self.categories
        return _log_uniform_int(np.random.default_rng([self.seed, _CATALOGUE_SIZE_TAG]))

    def validate(self) -> None:
        if self.users < 0:
            raise ValueError(f"users must be >= 0, got {self.users}")
        if not (self.days > 0 and math.isfinite(self.days)):
            raise ValueError(f"days must be > 0, got {self.days}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.start_ms < MIN_TIMESTAMP_MS:
            # decode() dead-letters anything older; a generator must not produce it.
            raise ValueError(f"start_ms must be >= {MIN_TIMESTAMP_MS}, got {self.start_ms}")
        if not self.clickstream_topic or self.clickstream_topic == self.orders_topic:
            raise ValueError("topics must be non-empty and distinct")
        for name in _POSITIVE:
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"{name} must be finite and > 0, got {getattr(self, name)}")
        if not self.q > 1:
            # Gamma-Gamma's mean order value is infinite for q <= 1.
            raise ValueError(f"q must be > 1, got {self.q}")
        for name in ("browse_per_day", "frequent_orders_sigma"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"{name} must be finite and >= 0, got {getattr(self, name)}")
        for name in _SHARES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.share_orders_only + self.share_click_only > 1.0:
            raise ValueError("share_orders_only + share_click_only must be <= 1")
        for name in ("weekly_amplitude", "yearly_amplitude"):
            # At 1 the trough would have no activity at all, and thinning none to accept.
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not math.isfinite(self.yearly_peak_day):
            raise ValueError(f"yearly_peak_day must be finite, got {self.yearly_peak_day}")
        if not self.favourite_categories >= 1.0:
            raise ValueError(f"favourite_categories must be >= 1, got {self.favourite_categories}")
        if self.categories is not None and (
            type(self.categories) is not int or not 1 <= self.categories <= 100_000
        ):
            raise ValueError(f"categories must be an int in [1, 100000], got {self.categories}")


_POSITIVE: Final = ("r", "alpha", "s", "beta", "p", "q", "gamma", "browse_shape",
                    "views_per_session", "lines_per_order", "frequent_orders_per_month",
                    "frequent_dropout_a", "frequent_dropout_b",
                    "favourite_categories")  # fmt: skip
_SHARES: Final = ("share_existing", "share_orders_only", "share_click_only", "search_p", "cart_p",
                  "remove_p", "checkout_abandon_p", "return_p", "cancel_share",
                  "share_frequent", "explore_p")  # fmt: skip


def _log_uniform_int(
    rng: np.random.Generator, lo: int = MIN_CATEGORIES, hi: int = MAX_CATEGORIES
) -> int:
    """An integer in ``[lo, hi]``, log-uniform: as many tens as hundreds of categories."""
    x = float(np.exp(rng.uniform(math.log(lo), math.log(hi + 1))))
    return min(max(int(x), lo), hi)
