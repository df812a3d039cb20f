"""Heterogeneous synthetic customer bases, drawn from buy-till-you-die processes.

Pure: no faust, no redis, no Kafka client. :mod:`stream.training.generate` has four
latent types with uniform ranges; a model trained on it did not transfer to a
real purchase log. Real customer bases are heavy-tailed: most customers buy
once, a few buy constantly, spend concentrates in the top fifth, people keep
arriving and silently leave. This module draws each user from the processes
the CLV literature fits to real logs, so training can see that shape:

* **Purchases:** Pareto/NBD (Schmittlein et al. 1987). While alive, a user buys
  as a Poisson process with rate ``lambda ~ Gamma(r, alpha)`` per day; ``r < 1``
  gives the heavy tail seen in real fits.
* **Dropout:** an exponential lifetime with rate ``mu ~ Gamma(s, beta)`` per day.
* **Frequent buyers who stop:** a share of the buying customers
  (``share_frequent``) buy several times a month (a lognormal rate around
  ``frequent_orders_per_month``) and drop out as in BG/NBD (Fader, Hardie & Lee
  2005): after each purchase they leave for good with probability
  ``p ~ Beta(frequent_dropout_a, frequent_dropout_b)``. Most of them stop
  within a few months and stay silent for the rest of the log, so training sees
  often what real logs show: silence after frequent buying means the customer
  has left.
* **Order value:** Gamma-Gamma (Fader, Hardie & Lee 2005): ``nu ~ Gamma(q, gamma)``
  per user and each order's value ``~ Gamma(p, nu)`` (rate parametrisation).
* **Browsing:** its own latent rate per user, ``Gamma(browse_shape)`` with mean
  ``browse_per_day`` sessions a day while alive, drawn independently of the
  purchase rate, of the order value and of the kind of user. How much someone
  browses therefore says nothing about how often or how much they buy beyond
  the purchase sessions themselves (each order is placed in a session of its
  own, with the products viewed and carted).
* **Catalogue:** each population has its own catalogue of
  :data:`MIN_CATEGORIES` to :data:`MAX_CATEGORIES` categories (log-uniform
  unless ``categories`` is set), priced around the population's order values.
  A customer has a few favourite categories (drawn by category popularity) and
  sometimes explores the whole catalogue. How many distinct categories a
  customer shows depends on how many products they view and buy, on their
  taste and on the catalogue, never on their purchase rate or value, so
  ``distinct_categories`` cannot buy a segment.
* **Seasonality:** acquisition, purchases and browsing are Poisson processes
  thinned by the hour of the day, the day of the week (``weekly_amplitude``:
  Monday high, Saturday low) and the day of the year (``yearly_amplitude``,
  peak on ``yearly_peak_day``). Rates are averages over a year.
* **Tracking:** some buyers leave no clickstream (offline, untracked, app
  without analytics); some visitors browse and never buy.
* **Acquisition:** part of the base predates the log (seen only once they next
  act); the rest arrive through the period, so tenure varies.

Events have the wire shapes of :mod:`stream.training.generate` (same :class:`GeneratedEvent`),
are time-ordered, deterministic for a config, and lazy per user merged with
:func:`heapq.merge`, so memory follows users, not events.
"""

from __future__ import annotations

import heapq
import math
import random
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, replace
from operator import attrgetter
from typing import Any, Final, Literal, TypedDict

import numpy as np

from stream.core.events import MIN_TIMESTAMP_MS
from stream.training.generate import (
    _HOUR_WEIGHTS,
    CATEGORIES,
    CURRENCY,
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    N_PRODUCTS,
    GeneratedEvent,
    _Product,
    _think_ms,
    _user_rng,
)

Kind = Literal["buyer", "orders_only", "click_only"]

#: A customer buying more than daily is a reseller or a bot, not a shopper, and
#: the Gamma tail would otherwise spend most of the event budget on one user.
MAX_PURCHASES_PER_DAY: Final = 1.0
MAX_SESSIONS_PER_DAY: Final = 4.0
#: Orders above this are B2B outliers; far below decode's MAX_MONEY on purpose.
MAX_ORDER_VALUE: Final = 50_000.0
MIN_ORDER_VALUE: Final = 0.5
#: Catalogue sizes a population draws from (log-uniform) when ``categories`` is unset.
MIN_CATEGORIES: Final = 10
MAX_CATEGORIES: Final = 2000
#: Products per category (at least; small catalogues get N_PRODUCTS in all).
_PRODUCTS_PER_CATEGORY: Final = 8
#: Of which accessories, at 1-10% of the category's price level.
_ACCESSORIES_PER_CATEGORY: Final = 3
#: Category popularity falls as 1 / rank**this (Zipf), for favourites and exploring.
_POPULARITY_EXPONENT: Final = 1.0
#: Day-of-week shape, Monday first, mean 0 and range [-1, 1]: a weekday's
#: intensity is ``1 + weekly_amplitude * shape`` (online shops peak at the start
#: of the week and dip on Friday and Saturday).
WEEKLY_SHAPE: Final[tuple[float, ...]] = (1.0, 0.5, 0.2, 0.0, -0.7, -1.0, 0.0)
#: Mean Gregorian year: the day of the year is days since 1970-01-01 modulo
#: this, within a day of the calendar's.
_YEAR_DAYS: Final = 365.2425
#: 1970-01-01 was a Thursday: hours since the epoch + 72 counts from a Monday.
_EPOCH_HOUR_OF_WEEK: Final = 72
#: Quiet time after a session before the next may start: sessions never overlap.
_SESSION_COOLDOWN_MS: Final = 30 * MINUTE_MS
#: A BG/NBD buyer's purchases are drawn up to this far past the end, at most.
_FAR_MS: Final = 100 * 365 * DAY_MS
#: Redraws allowed for a pre-existing user who never shows up in the period.
_MAX_VISIBLE_TRIES: Final = 200
_POPULATION_TAG: Final = 3  # keeps sample_populations' stream apart from users'
_CATALOGUE_TAG: Final = 4  # a population's catalogue
_CATALOGUE_SIZE_TAG: Final = 5  # its size, when the config leaves it open


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
    #: times a month and drop out BG/NBD-style (see the module docstring).
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


# Ground truth of one user. Rates are per day: "lambda" purchases while alive
# (0 for click-only visitors), "browse" sessions while alive (0 for orders-only
# customers). "acquired_ms" is the period start for customers acquired before
# it; "alive_until_ms" may lie past the end. "frequent" customers drop out
# BG/NBD-style with probability "dropout_p" after each purchase (0 for the
# others): their "alive_until_ms" is 1 ms after the nominal time of their last
# purchase (its session completes), and "mu" is lambda * dropout_p, the hazard
# of the same expected lifetime. Functional form: "lambda" is a keyword.
LatentRates = TypedDict("LatentRates", {
    "kind": Kind, "lambda": float, "mu": float, "nu": float, "browse": float,
    "acquired_ms": int, "alive_until_ms": int, "frequent": bool, "dropout_p": float,
})  # fmt: skip


# -- seasonality ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Season:
    """Acceptance of the thinned processes by hour of the week and day of the year."""

    #: Hour of the day x day of the week (from Monday 00:00 UTC), max 1.
    hour_of_week: tuple[float, ...]
    #: Day of the year (0 is January 1st), max 1; index 365 is the quarter day.
    day_of_year: tuple[float, ...]
    #: Candidates per accepted event on average (1 / the mean acceptance).
    boost: float


def _season(cfg: PopulationConfig) -> _Season:
    week = [
        hour * (1.0 + cfg.weekly_amplitude * day) for day in WEEKLY_SHAPE for hour in _HOUR_WEIGHTS
    ]
    top = max(week)
    week = [w / top for w in week]
    year = [
        1.0
        + cfg.yearly_amplitude
        * math.cos(2 * math.pi * (d + 0.5 - cfg.yearly_peak_day) / _YEAR_DAYS)
        for d in range(366)
    ]
    top = max(year)
    year = [w / top for w in year]
    # The last index is reached a quarter of a day a year (the .2425).
    mean_year = (sum(year[:365]) + (_YEAR_DAYS - 365) * year[365]) / _YEAR_DAYS
    boost = 1.0 / (sum(week) / len(week) * mean_year)
    return _Season(tuple(week), tuple(year), boost)


def _accept(season: _Season, rng: random.Random, t: int) -> bool:
    hour = season.hour_of_week[(t // HOUR_MS + _EPOCH_HOUR_OF_WEEK) % 168]
    return rng.random() < hour * season.day_of_year[int(t / DAY_MS % _YEAR_DAYS)]


def _after(season: _Season, rng: random.Random, t: int, rate_per_day: float) -> float:
    """Next event of the seasonally thinned Poisson process at ``rate_per_day`` after ``t``.

    ``rate_per_day`` is the mean over a year; inf when it is 0. The first 30
    minutes after ``t`` are skipped: negligible against days, and two sessions
    of one user never start on top of each other.
    """
    if rate_per_day <= 0.0:
        return math.inf
    # Candidates come faster by the boost, so after thinning the mean rate holds.
    per_ms = rate_per_day * season.boost / DAY_MS
    t += _SESSION_COOLDOWN_MS
    while True:
        t += int(rng.expovariate(per_ms)) + 1
        if _accept(season, rng, t):
            return t


def _seasonal_uniform(season: _Season, rng: random.Random, lo: int, span: int) -> int:
    """A time in ``[lo, lo + span]`` with the seasonal profile (rejection sampling)."""
    while True:
        t = lo + rng.randint(0, max(span, 0))
        if _accept(season, rng, t):
            return t


# -- who each user is -------------------------------------------------------------


def _geometric(rng: random.Random, p: float) -> int:
    """Purchases up to and including the one after which the customer leaves."""
    if p >= 1.0:
        return 1
    return 1 + int(math.log(1.0 - rng.random()) / math.log1p(-p))


@dataclass(frozen=True, slots=True)
class _Plan:
    rates: LatentRates
    first_buy: float  # inf: never
    first_browse: float
    #: A frequent customer's purchase times inside the period (drawn up front:
    #: their death follows the count of purchases); None for the others.
    buys: tuple[int, ...] | None


def _plan(cfg: PopulationConfig, season: _Season, rng: random.Random) -> _Plan:
    """Ground truth and first purchase / browse time; the user's first draws."""
    u = rng.random()
    kind: Kind = "buyer"
    if u < cfg.share_orders_only:
        kind = "orders_only"
    elif u < cfg.share_orders_only + cfg.share_click_only:
        kind = "click_only"
    frequent = kind != "click_only" and rng.random() < cfg.share_frequent
    period = cfg.end_ms - cfg.start_ms
    buys: list[float] = []
    for _ in range(_MAX_VISIBLE_TRIES):
        dropout_p = 0.0
        if frequent:
            monthly = rng.lognormvariate(
                math.log(cfg.frequent_orders_per_month), cfg.frequent_orders_sigma
            )
            lam = min(monthly * 12.0 / 365.0, MAX_PURCHASES_PER_DAY)
            # A zero draw would mean an endless run of purchases: floor it.
            dropout_p = max(rng.betavariate(cfg.frequent_dropout_a, cfg.frequent_dropout_b), 1e-6)
            mu = lam * dropout_p
        else:
            lam = min(rng.gammavariate(cfg.r, 1.0 / cfg.alpha), MAX_PURCHASES_PER_DAY)
            # A zero draw (possible in floating point for tiny shapes) would mean
            # an endless life or an infinite order value: floor it.
            mu = max(rng.gammavariate(cfg.s, 1.0 / cfg.beta), 1e-9)
        nu = max(rng.gammavariate(cfg.q, 1.0 / cfg.gamma), 1e-9)
        # Browsing has a latent rate of its own, independent of buying: it must
        # not tell the purchase rate (click-only visitors draw it the same way).
        browse = 0.0
        if kind != "orders_only" and cfg.browse_per_day > 0:
            shape = cfg.browse_shape
            browse = min(rng.gammavariate(shape, cfg.browse_per_day / shape), MAX_SESSIONS_PER_DAY)
        buy = 0.0 if kind == "click_only" else lam
        existing = rng.random() < cfg.share_existing
        # Memoryless lifetimes (and geometric purchase counts): an existing
        # customer alive at the start has the same remainder as a new one.
        acquired = (
            cfg.start_ms if existing else _seasonal_uniform(season, rng, cfg.start_ms, period - 1)
        )
        if existing:
            start = cfg.start_ms - _SESSION_COOLDOWN_MS  # cancels _after's cooldown
            first_buy, first_browse = (
                _after(season, rng, start, buy),
                _after(season, rng, start, browse),
            )
        elif kind == "click_only":
            first_buy, first_browse = math.inf, float(acquired)
        else:
            # Pareto/NBD's trial purchase at time 0 is the acquisition.
            first_buy, first_browse = float(acquired), _after(season, rng, acquired, browse)
        if frequent:
            # BG/NBD: the customer leaves right after their n-th purchase.
            n = _geometric(rng, dropout_p)
            buys = [first_buy]
            while len(buys) < n and buys[-1] < cfg.end_ms + _FAR_MS:
                buys.append(_after(season, rng, int(buys[-1]), lam))
            alive_until = int(buys[-1]) + 1
        else:
            alive_until = acquired + min(int(rng.expovariate(mu) * DAY_MS), 1000 * 365 * DAY_MS)
        # Only users who act within the period are in a log, so an existing
        # customer who would not is redrawn: a real log's base is selected so.
        # (As in a real log, that selection ties the rates of the customers
        # there from the start together: who shows up without buying must
        # have browsed. Customers acquired in the period are not selected.)
        if min(first_buy, first_browse) < min(alive_until, cfg.end_ms):
            break
    rates: LatentRates = {
        "kind": kind,
        "lambda": buy,
        "mu": mu,
        "nu": nu,
        "browse": browse,
        "acquired_ms": acquired,
        "alive_until_ms": alive_until,
        "frequent": frequent,
        "dropout_p": dropout_p,
    }
    in_period = tuple(int(t) for t in buys if t < cfg.end_ms) if frequent else None
    return _Plan(rates, first_buy, first_browse, in_period)


def _user_id(cfg: PopulationConfig, index: int) -> str:
    return f"p{cfg.seed}-u{index:0{max(6, len(str(cfg.users)))}d}"


def latent_rates(cfg: PopulationConfig) -> dict[str, LatentRates]:
    """user_id -> ground truth for ``cfg``, without generating any event."""
    cfg.validate()
    season = _season(cfg)
    return {
        _user_id(cfg, i): _plan(cfg, season, _user_rng(cfg.seed, i)).rates for i in range(cfg.users)
    }


# -- the catalogue --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Catalogue:
    """One population's products, per category sorted by price."""

    by_category: tuple[tuple[_Product, ...], ...]
    category_prices: tuple[tuple[float, ...], ...]
    #: Cumulative popularity of the categories, Zipf in their index.
    popularity: tuple[float, ...]

    @property
    def size(self) -> int:
        return len(self.by_category)


def _catalogue(cfg: PopulationConfig) -> _Catalogue:
    n_cat = cfg.catalogue_size
    rng = np.random.default_rng([cfg.seed, _CATALOGUE_TAG])
    n_products = max(N_PRODUCTS, _PRODUCTS_PER_CATEGORY * n_cat)
    # Each category belongs to one of the named departments, which sets its
    # price level relative to the others (compressed: a square root of the
    # departments' spread), around the population's value per order line.
    # Prices so follow the population's order values, and most order lines
    # find a product near their budget in whatever category taste picks.
    departments = rng.integers(0, len(CATEGORIES), n_cat)
    medians = np.array([m for _, m in CATEGORIES])
    relative = np.sqrt(medians / np.exp(np.log(medians).mean()))
    line_value = cfg.mean_order_value / cfg.lines_per_order
    category_level = line_value * relative[departments] * rng.lognormal(0.0, 0.3, n_cat)
    # Round-robin then shuffle: every category gets n_products / n_cat products.
    cats = rng.permutation(np.arange(n_products) % n_cat)
    spread = rng.lognormal(0.0, 1.0, n_products)
    # Every category also has accessories (cables beside the TVs): its first
    # few products cost 1-10% of its level, so the small lines of an order find
    # something in whatever category taste picked instead of costing more than
    # their budget, even when several lines land in one category.
    order = np.argsort(cats, kind="stable")
    slot = np.empty(n_products, dtype=np.int64)
    slot[order] = np.arange(n_products) - np.repeat(
        np.searchsorted(cats[order], np.arange(n_cat)), np.bincount(cats, minlength=n_cat)
    )
    accessory = slot < _ACCESSORIES_PER_CATEGORY
    spread[accessory] = np.exp(rng.uniform(math.log(0.01), math.log(0.1), int(accessory.sum())))
    prices = np.maximum(np.round(category_level[cats] * spread, 2), MIN_ORDER_VALUE)
    width, pwidth = len(str(n_cat - 1)), len(str(n_products - 1))
    names = [f"{CATEGORIES[int(d)][0]}-{i:0{width}d}" for i, d in enumerate(departments)]
    groups: list[list[_Product]] = [[] for _ in range(n_cat)]
    for i, (c, price) in enumerate(zip(cats.tolist(), prices.tolist(), strict=True)):
        groups[c].append(_Product(f"p{i:0{pwidth}d}", names[c], float(price)))
    by_category = tuple(tuple(sorted(g, key=attrgetter("price"))) for g in groups)
    # Popularity is Zipf in the category index, which is unrelated to price.
    weights = (np.arange(1, n_cat + 1, dtype=np.float64)) ** -_POPULARITY_EXPONENT
    return _Catalogue(
        by_category,
        tuple(tuple(p.price for p in g) for g in by_category),
        tuple(np.cumsum(weights).tolist()),
    )


def _poisson(rng: random.Random, mean: float) -> int:
    # Knuth's method: the means used here are small (views, lines, favourites).
    limit, k, prod = math.exp(-mean), 0, rng.random()
    while prod > limit:
        k += 1
        prod *= rng.random()
    return k


# -- one user's events ----------------------------------------------------------


class _UserSim:
    """One user's life: plan up front, then sessions lazily, in time order."""

    def __init__(
        self, cfg: PopulationConfig, season: _Season, catalogue: _Catalogue, index: int
    ) -> None:
        self.cfg = cfg
        self.season = season
        self.catalogue = catalogue
        self.user_id = _user_id(cfg, index)
        self.rng = rng = _user_rng(cfg.seed, index)
        plan = _plan(cfg, season, rng)
        self.rates, self.buys = plan.rates, plan.buys
        self.first_buy, self.first_browse = plan.first_buy, plan.first_browse
        # Taste: a few favourite categories, drawn by popularity, with uneven
        # weights. Neither their number nor the exploring depends on buying.
        self.categories = range(catalogue.size)
        self.favourites = rng.choices(
            self.categories,
            cum_weights=catalogue.popularity,
            k=1 + _poisson(rng, cfg.favourite_categories - 1.0),
        )
        acc, self.cum_favourites = 0.0, []
        for _ in self.favourites:
            acc += rng.gammavariate(1.0, 1.0)
            self.cum_favourites.append(acc)
        self.end_ms = min(self.rates["alive_until_ms"], cfg.end_ms)
        self.seq = 0
        self.n_orders = 0
        #: Cancellations and refunds due later: (timestamp, seq, event).
        self.pending: list[tuple[int, int, GeneratedEvent]] = []

    def _event(self, topic: str, ts: int, value: dict[str, Any]) -> GeneratedEvent:
        self.seq += 1
        # The population tag in user_id makes event ids unique across
        # populations and distinct from stream.training.generate's "e<seed>-..." ids.
        value = {"event_id": f"{self.user_id}-e{self.seq}", "user_id": self.user_id, **value}
        value["timestamp"] = ts
        return GeneratedEvent(topic, self.user_id, value, ts)

    def _click(
        self, ts: int, kind: str, sid: str, product: _Product | None = None
    ) -> GeneratedEvent:
        value: dict[str, Any] = {"event_type": kind, "session_id": sid}
        if product is not None:
            value |= {"product_id": product.product_id, "category": product.category}
            value["price"] = product.price
        return self._event(self.cfg.clickstream_topic, ts, value)

    def _category(self) -> int:
        # random.choices(..., cum_weights=...)[0], inlined: this is the hot path.
        rng = self.rng
        if rng.random() < self.cfg.explore_p:
            popular = self.catalogue.popularity
            return bisect_right(popular, rng.random() * popular[-1], 0, len(popular) - 1)
        cum = self.cum_favourites
        return self.favourites[bisect_right(cum, rng.random() * cum[-1], 0, len(cum) - 1)]

    def _for_budget(self, budget: float, basket: dict[_Product, int]) -> _Product:
        """A product of a category of the user's taste, priced near ``budget``.

        The category is drawn before the budget is looked at, and a product
        already in the basket gives way to the next one in price, so an order's
        lines and categories do not depend on its value: only on how many lines
        were drawn, the customer's taste and the catalogue.
        """
        cat = self._category()
        goods, prices = self.catalogue.by_category[cat], self.catalogue.category_prices[cat]
        # The priciest product within budget (the quantity fills the rest), or
        # the cheapest if none is: totals track the drawn value.
        k = max(bisect_right(prices, budget) - 1, 0)
        # Outwards from it, cheaper first, the first product not in the basket
        # yet (the product is taken again if the whole category is in it).
        for step in range(2 * len(goods)):
            j = k + (step + 1) // 2 * (-1 if step % 2 else 1)
            if 0 <= j < len(goods) and goods[j] not in basket:
                return goods[j]
        return goods[k]

    def _basket(self) -> dict[_Product, int]:
        cfg, rng = self.cfg, self.rng
        value = rng.gammavariate(cfg.p, 1.0 / self.rates["nu"])
        value = min(max(value, MIN_ORDER_VALUE), MAX_ORDER_VALUE)
        weights = [
            rng.gammavariate(2.0, 1.0) for _ in range(1 + _poisson(rng, cfg.lines_per_order - 1))
        ]
        basket: dict[_Product, int] = {}
        for w in weights:
            budget = value * w / sum(weights)
            product = self._for_budget(budget, basket)
            # Quantities fill the line's budget, so the total tracks the drawn
            # Gamma-Gamma value while prices stay the catalogue's.
            basket[product] = basket.get(product, 0) + max(1, round(budget / product.price))
        return basket

    def _order(self, ts: int, basket: dict[_Product, int]) -> GeneratedEvent:
        cfg, rng = self.cfg, self.rng
        items = [
            dict(product_id=p.product_id, category=p.category, quantity=q, unit_price=p.price)
            for p, q in basket.items()
        ]
        total = round(sum(p.price * q for p, q in basket.items()), 2)
        order_id = f"{self.user_id}-o{self.n_orders}"
        self.n_orders += 1
        head = {"event_type": "order_placed", "order_id": order_id}
        tail = {"total": total, "currency": CURRENCY, "items": items}
        placed = self._event(cfg.orders_topic, ts, head | tail)
        if rng.random() < cfg.return_p:
            if rng.random() < cfg.cancel_share:
                kind, at = "order_cancelled", ts + rng.randint(10 * MINUTE_MS, 12 * HOUR_MS)
            else:
                kind, at = "order_refunded", ts + rng.randint(DAY_MS, 20 * DAY_MS)
            # Dropped past the user's end: a customer who left stays silent.
            if at < self.end_ms:
                # Own copies of the items: consumers may mutate one event's dicts.
                tail["items"] = [dict(i) for i in items]
                follow = self._event(cfg.orders_topic, at, head | {"event_type": kind} | tail)
                heapq.heappush(self.pending, (at, self.seq, follow))
        return placed

    def _session(self, t: int, buys: bool) -> list[GeneratedEvent]:
        cfg, rng = self.cfg, self.rng
        if buys and self.rates["kind"] == "orders_only":
            return [self._order(t, self._basket())]
        sid = f"{self.user_id}-s{self.seq}"
        out = [self._click(t, "page_view", sid)]
        if rng.random() < cfg.search_p:
            t += _think_ms(rng)
            out.append(self._click(t, "search", sid))
        cart: list[_Product] = []
        views = 1 + _poisson(rng, cfg.views_per_session - 1.0)
        for _ in range(views // 2 if buys else views):
            t += _think_ms(rng)
            product = rng.choice(self.catalogue.by_category[self._category()])
            out.append(self._click(t, "product_view", sid, product))
            if rng.random() < cfg.cart_p:
                t += _think_ms(rng)
                out.append(self._click(t, "add_to_cart", sid, product))
                cart.append(product)
            if cart and rng.random() < cfg.remove_p:
                t += _think_ms(rng)
                out.append(self._click(t, "remove_from_cart", sid, cart.pop()))
        if buys:
            # Every ordered product is viewed and carted in this session, and
            # browsed extras are taken out before paying.
            basket = self._basket()
            for product in basket:
                for kind in ("product_view", "add_to_cart"):
                    t += _think_ms(rng)
                    out.append(self._click(t, kind, sid, product))
            for product in cart:
                if product not in basket:
                    t += _think_ms(rng)
                    out.append(self._click(t, "remove_from_cart", sid, product))
            t += _think_ms(rng)
            out.append(self._click(t, "checkout_start", sid))
            out.append(self._order(t + rng.randint(2_000, 15_000), basket))
        elif cart and rng.random() < cfg.checkout_abandon_p:
            t += _think_ms(rng)
            out.append(self._click(t, "checkout_start", sid))
        return out

    def events(self) -> Iterator[GeneratedEvent]:
        rng, pending, end, season = self.rng, self.pending, self.end_ms, self.season
        next_buy, next_browse = self.first_buy, self.first_browse
        buys, k = self.buys, 0
        free_at = 0  # sessions never overlap: the next starts after the last ends
        while min(next_buy, next_browse) < end:
            is_buy = next_buy <= next_browse
            nominal = int(next_buy if is_buy else next_browse)
            # Drawn from the nominal time, not the shifted start, so rates hold.
            if not is_buy:
                next_browse = _after(season, rng, nominal, self.rates["browse"])
            elif buys is None:
                next_buy = _after(season, rng, nominal, self.rates["lambda"])
            else:
                k += 1
                next_buy = buys[k] if k < len(buys) else math.inf
            start = max(nominal, free_at)
            if start >= end:
                continue
            session = self._session(start, is_buy)
            free_at = session[-1].timestamp_ms + _SESSION_COOLDOWN_MS
            for event in session:
                if event.timestamp_ms >= self.cfg.end_ms:
                    break
                while pending and pending[0][0] <= event.timestamp_ms:
                    yield heapq.heappop(pending)[2]
                yield event
        while pending:
            yield heapq.heappop(pending)[2]


def generate_population(cfg: PopulationConfig) -> Iterator[GeneratedEvent]:
    """All events of ``cfg`` in non-decreasing timestamp order (ties by user index)."""
    cfg.validate()
    if cfg.users == 0:
        return iter(())
    season, catalogue = _season(cfg), _catalogue(cfg)
    streams = [_UserSim(cfg, season, catalogue, i).events() for i in range(cfg.users)]
    # merge() breaks timestamp ties by user index and keeps each user's order.
    return heapq.merge(*streams, key=attrgetter("timestamp_ms"))


# Ranges (lo, hi) every population draws from; verticals below override or add
# to them. Fields in _LOG_SCALE vary by ratios and are drawn log-uniformly.
_COMMON: Final[dict[str, tuple[float, float]]] = {
    "q": (2.2, 5.0),  # CDNOW 3.74; per-customer mean value CV 1/sqrt(q-2)
    "share_existing": (0.2, 0.7),
    "share_click_only": (0.1, 0.5),  # most sites convert a minority of known visitors
    # A visit every 50 days to one a week, on average; uneven between users.
    "browse_per_day": (0.02, 0.12),
    "browse_shape": (0.4, 1.2),
    "views_per_session": (2.0, 6.0),
    "cart_p": (0.05, 0.2),
    "checkout_abandon_p": (0.02, 0.1),
    "share_frequent": (0.08, 0.12),
    "frequent_orders_per_month": (2.5, 6.0),
    "favourite_categories": (1.5, 5.0),
    "explore_p": (0.05, 0.3),
    "weekly_amplitude": (0.1, 0.35),
    "yearly_amplitude": (0.1, 0.4),
    "yearly_peak_day": (305.0, 360.0),  # November to late December
}
_LOG_SCALE: Final = {
    "orders_per_year",
    "beta",
    "aov",
    "browse_per_day",
    "frequent_orders_per_month",
}

# Anchors: CDNOW Pareto/NBD r=0.55, alpha=10.6 wk (2.7 orders a year), s=0.61,
# beta=11.7 wk; BG/NBD r=0.24, alpha=4.4 wk; Gamma-Gamma p=6.25, q=3.74,
# gamma=15.44 (Fader, Hardie & Lee 2005). Published retail fits keep r within
# ~0.1-2 and p within ~1-12. Frequency is drawn as orders a year (sets alpha =
# 365 r / rate) and value as the mean order in EUR (sets gamma), both easier
# to judge than raw scales; r < 1 (a heavy tail) everywhere but replenishment,
# where habits make rates more even.
_VERTICALS: Final[dict[str, dict[str, tuple[float, float]]]] = {
    # CD/media retail, CDNOW-like: small baskets, a long tail of one-timers.
    "media": {"r": (0.2, 0.6), "orders_per_year": (1.5, 5.0), "s": (0.4, 0.9),
              "beta": (40, 120), "aov": (20, 60), "p": (4, 8), "lines_per_order": (1.2, 2.5),
              "return_p": (0.02, 0.06)},
    # Replenishment (coffee, pet food): frequent, cheap, loyal, hardly seasonal;
    # reorders need little browsing, which also keeps these, the busiest,
    # populations small.
    "consumables": {"r": (0.6, 1.5), "orders_per_year": (4.0, 12.0), "s": (0.5, 1.2),
                    "beta": (120, 360), "aov": (10, 40), "p": (6, 12),
                    "lines_per_order": (3, 8), "return_p": (0.01, 0.04),
                    "browse_per_day": (0.01, 0.05), "yearly_amplitude": (0.0, 0.15)},
    # Fashion: a few orders a year, many returns (15-35% is typical online).
    "fashion": {"r": (0.25, 0.7), "orders_per_year": (1.5, 4.0), "s": (0.4, 0.9),
                "beta": (60, 180), "aov": (40, 120), "p": (3, 7), "lines_per_order": (1.5, 3.5),
                "return_p": (0.15, 0.35)},
    # Electronics: rare, expensive and very uneven orders (a cable or a TV: small p).
    "electronics": {"r": (0.15, 0.45), "orders_per_year": (0.8, 2.5), "s": (0.3, 0.8),
                    "beta": (90, 250), "aov": (120, 300), "p": (1.2, 3.0),
                    "lines_per_order": (1.0, 1.5), "return_p": (0.04, 0.10)},
}  # fmt: skip


def sample_populations(seed: int, n: int, *, users: int, days: float) -> list[PopulationConfig]:
    """``n`` plausible, different populations (deterministic for ``seed``).

    Verticals cycle in a seeded order, so any 4 consecutive populations cover
    all of them. With ``n >= 2`` at least one in four is orders-only dominated
    (share_orders_only in [0.5, 0.6]: a purchase log with a thin tracking
    layer); the others have 0-35% orders-only buyers. Each draws its catalogue
    size log-uniformly in [MIN_CATEGORIES, MAX_CATEGORIES], its seasonality
    and its share of frequent buyers who stop (8-12%).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng([seed, _POPULATION_TAG])
    names = [list(_VERTICALS)[int(i)] for i in rng.permutation(len(_VERTICALS))]
    offline = set(rng.choice(n, size=max(1, n // 4), replace=False).tolist()) if n > 1 else set()
    if n == 1 and rng.random() < 0.25:
        offline = {0}
    out = []
    for k in range(n):
        # Each population draws from its own stream, so its hyperparameters do
        # not depend on n (only whether it is the orders-only-heavy one does).
        seq = np.random.SeedSequence([seed, _POPULATION_TAG, k])
        pop_rng = np.random.default_rng(seq)
        name = names[k % len(names)]
        drawn: dict[str, Any] = {}
        for key, (lo, hi) in (_COMMON | _VERTICALS[name]).items():
            log = key in _LOG_SCALE
            x = pop_rng.uniform(math.log(lo), math.log(hi)) if log else pop_rng.uniform(lo, hi)
            drawn[key] = float(np.exp(x) if log else x)
        oo = float(pop_rng.uniform(0.5, 0.6) if k in offline else pop_rng.uniform(0.0, 0.35))
        drawn["share_orders_only"] = oo
        # At least 10% tracked buyers remain, so clicks and orders still meet.
        drawn["share_click_only"] = min(drawn["share_click_only"], 0.9 - oo)
        # Solve E[lambda] = r / alpha and E[order] = p * gamma / (q - 1).
        drawn["alpha"] = 365.0 * drawn["r"] / drawn.pop("orders_per_year")
        drawn["gamma"] = drawn.pop("aov") * (drawn["q"] - 1.0) / drawn["p"]
        drawn["categories"] = _log_uniform_int(pop_rng)
        # 31 bits from the seed sequence: population tags, and so user and event
        # ids, do not collide across populations or sample_populations calls.
        tag = int(seq.generate_state(1)[0]) >> 1
        label = name + ("/orders-only-heavy" if k in offline else "")
        cfg = replace(PopulationConfig(users=users, days=days, seed=tag, label=label), **drawn)
        cfg.validate()
        out.append(cfg)
    return out
