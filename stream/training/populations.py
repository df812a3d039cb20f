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

The parts live beside this module: the config and its limits in
:mod:`~stream.training.population_config`, seasonality in
:mod:`~stream.training.population_seasons`, the catalogue in
:mod:`~stream.training.population_catalogue`, who each customer is in
:mod:`~stream.training.population_customers` and their sessions in
:mod:`~stream.training.population_sessions`. Import from here.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from dataclasses import replace
from operator import attrgetter
from typing import Any, Final

import numpy as np

from stream.training.generate import GeneratedEvent, _user_rng
from stream.training.population_catalogue import _catalogue
from stream.training.population_config import (
    MAX_CATEGORIES,
    MAX_ORDER_VALUE,
    MIN_CATEGORIES,
    MIN_ORDER_VALUE,
    PopulationConfig,
    _log_uniform_int,
)
from stream.training.population_customers import (
    MAX_PURCHASES_PER_DAY,
    MAX_SESSIONS_PER_DAY,
    Kind,
    LatentRates,
    _plan,
    _user_id,
)
from stream.training.population_seasons import WEEKLY_SHAPE, _season
from stream.training.population_sessions import _UserSim

# The public names, as before the split: they are imported from this module.
__all__ = [
    "MAX_CATEGORIES",
    "MAX_ORDER_VALUE",
    "MAX_PURCHASES_PER_DAY",
    "MAX_SESSIONS_PER_DAY",
    "MIN_CATEGORIES",
    "MIN_ORDER_VALUE",
    "WEEKLY_SHAPE",
    "Kind",
    "LatentRates",
    "PopulationConfig",
    "generate_population",
    "latent_rates",
    "sample_populations",
]

_POPULATION_TAG: Final = 3  # keeps sample_populations' stream apart from users'


def latent_rates(cfg: PopulationConfig) -> dict[str, LatentRates]:
    """user_id -> ground truth for ``cfg``, without generating any event."""
    cfg.validate()
    season = _season(cfg)
    return {
        _user_id(cfg, i): _plan(cfg, season, _user_rng(cfg.seed, i)).rates for i in range(cfg.users)
    }


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
