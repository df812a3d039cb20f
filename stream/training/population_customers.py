"""Who each customer is: their kind, latent rates, and purchase and dropout plan.

Drawn up front, from the first draws of the user's own random stream, so the
ground truth (:func:`stream.training.populations.latent_rates`) is known
without generating any event; :mod:`stream.training.population_sessions` then
plays it out.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Final, Literal, TypedDict

from stream.training.generate import DAY_MS
from stream.training.population_config import _SESSION_COOLDOWN_MS, PopulationConfig
from stream.training.population_seasons import _after, _Season, _seasonal_uniform

Kind = Literal["buyer", "orders_only", "click_only"]

#: A customer buying more than daily is a reseller or a bot, not a shopper, and
#: the Gamma tail would otherwise spend most of the event budget on one user.
MAX_PURCHASES_PER_DAY: Final = 1.0
MAX_SESSIONS_PER_DAY: Final = 4.0
#: A BG/NBD buyer's purchases are drawn up to this far past the end, at most.
_FAR_MS: Final = 100 * 365 * DAY_MS
#: Redraws allowed for a pre-existing user who never shows up in the period.
_MAX_VISIBLE_TRIES: Final = 200


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
