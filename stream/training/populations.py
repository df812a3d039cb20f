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
* **Order value:** Gamma-Gamma (Fader, Hardie & Lee 2005): ``nu ~ Gamma(q, gamma)``
  per user and each order's value ``~ Gamma(p, nu)`` (rate parametrisation).
* **Tracking:** some buyers leave no clickstream (offline, untracked, app
  without analytics); some visitors browse and never buy.
* **Acquisition:** part of the base predates the log (seen only once they next
  act); the rest arrive uniformly through the period, so tenure varies.

Events have the wire shapes of :mod:`stream.training.generate` (same :class:`GeneratedEvent`,
same catalog), are time-ordered, deterministic for a config, and lazy per user
merged with :func:`heapq.merge`, so memory follows users, not events.
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
    CATEGORIES,
    CURRENCY,
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    GeneratedEvent,
    _build_catalog,
    _diurnal_uniform,
    _next_session,
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
#: Redraws allowed for a pre-existing user who never shows up in the period.
_MAX_VISIBLE_TRIES: Final = 200
_POPULATION_TAG: Final = 3  # keeps sample_populations' stream apart from users'


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
    #: Browsing sessions per purchase, lognormal per user (median, log-sd), plus
    #: a Gamma base rate (mean per day, shape) that does not scale with buying.
    sessions_per_purchase: float = 4.0
    sessions_per_purchase_sigma: float = 0.8
    base_browse_per_day: float = 0.02
    base_browse_shape: float = 0.5
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

    @property
    def end_ms(self) -> int:
        """Exclusive upper bound of every timestamp."""
        return self.start_ms + int(self.days * DAY_MS)

    @property
    def mean_order_value(self) -> float:
        """E[order value] under Gamma-Gamma: p * gamma / (q - 1)."""
        return self.p * self.gamma / (self.q - 1.0)

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
        for name in ("sessions_per_purchase_sigma", "base_browse_per_day"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"{name} must be finite and >= 0, got {getattr(self, name)}")
        for name in _SHARES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.share_orders_only + self.share_click_only > 1.0:
            raise ValueError("share_orders_only + share_click_only must be <= 1")


_POSITIVE: Final = ("r", "alpha", "s", "beta", "p", "q", "gamma", "sessions_per_purchase",
                    "base_browse_shape", "views_per_session", "lines_per_order")  # fmt: skip
_SHARES: Final = ("share_existing", "share_orders_only", "share_click_only", "search_p", "cart_p",
                  "remove_p", "checkout_abandon_p", "return_p", "cancel_share")  # fmt: skip

# Ground truth of one user. Rates are per day: "lambda" purchases while alive
# (0 for click-only visitors), "browse" sessions while alive (0 for orders-only
# customers). "acquired_ms" is the period start for customers acquired before
# it; "alive_until_ms" may lie past the end. Functional form: "lambda" is a keyword.
LatentRates = TypedDict("LatentRates", {
    "kind": Kind, "lambda": float, "mu": float, "nu": float, "browse": float,
    "acquired_ms": int, "alive_until_ms": int,
})  # fmt: skip


def _after(rng: random.Random, t: int, rate_per_day: float) -> float:
    """Next event of a diurnally thinned Poisson process at ``rate_per_day`` after ``t``."""
    if rate_per_day <= 0.0:
        return math.inf
    # _next_session adds a 30-minute cooldown first: negligible against days,
    # and it keeps two sessions of one user from starting on top of each other.
    return _next_session(rng, t, DAY_MS / rate_per_day)


def _plan(cfg: PopulationConfig, rng: random.Random) -> tuple[LatentRates, float, float]:
    """Ground truth and first purchase / browse time (inf: never); the user's first draws."""
    u = rng.random()
    kind: Kind = "buyer"
    if u < cfg.share_orders_only:
        kind = "orders_only"
    elif u < cfg.share_orders_only + cfg.share_click_only:
        kind = "click_only"
    period = cfg.end_ms - cfg.start_ms
    for _ in range(_MAX_VISIBLE_TRIES):
        lam = min(rng.gammavariate(cfg.r, 1.0 / cfg.alpha), MAX_PURCHASES_PER_DAY)
        # A zero draw (possible in floating point for tiny shapes) would mean
        # an endless life or an infinite order value: floor it.
        mu = max(rng.gammavariate(cfg.s, 1.0 / cfg.beta), 1e-9)
        nu = max(rng.gammavariate(cfg.q, 1.0 / cfg.gamma), 1e-9)
        spp = rng.lognormvariate(
            math.log(cfg.sessions_per_purchase), cfg.sessions_per_purchase_sigma
        )
        base = 0.0
        if cfg.base_browse_per_day > 0:
            shape = cfg.base_browse_shape
            base = rng.gammavariate(shape, cfg.base_browse_per_day / shape)
        # Browsing follows buying intensity (engaged buyers browse more), and
        # click-only visitors browse like the buyers they could have been.
        browse = 0.0 if kind == "orders_only" else min(lam * spp + base, MAX_SESSIONS_PER_DAY)
        buy = 0.0 if kind == "click_only" else lam
        existing = rng.random() < cfg.share_existing
        # Memoryless lifetimes: an existing customer alive at the start has an
        # Exp(mu) remainder, exactly like a new one.
        acquired = cfg.start_ms if existing else _diurnal_uniform(rng, cfg.start_ms, period - 1)
        alive_until = acquired + min(int(rng.expovariate(mu) * DAY_MS), 1000 * 365 * DAY_MS)
        if existing:
            start = cfg.start_ms - 30 * MINUTE_MS  # cancels _next_session's cooldown
            first_buy, first_browse = _after(rng, start, buy), _after(rng, start, browse)
        elif kind == "click_only":
            first_buy, first_browse = math.inf, float(acquired)
        else:
            # Pareto/NBD's trial purchase at time 0 is the acquisition.
            first_buy, first_browse = float(acquired), _after(rng, acquired, browse)
        # Only users who act within the period are in a log, so an existing
        # customer who would not is redrawn: a real log's base is selected so.
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
    }
    return rates, first_buy, first_browse


def _user_id(cfg: PopulationConfig, index: int) -> str:
    return f"p{cfg.seed}-u{index:0{max(6, len(str(cfg.users)))}d}"


def latent_rates(cfg: PopulationConfig) -> dict[str, LatentRates]:
    """user_id -> ground truth for ``cfg``, without generating any event."""
    cfg.validate()
    return {_user_id(cfg, i): _plan(cfg, _user_rng(cfg.seed, i))[0] for i in range(cfg.users)}


@dataclass(frozen=True, slots=True)
class _Shelf:
    """The catalog sorted by price, per category and overall, to fill a budget."""

    by_category: tuple[tuple[_Product, ...], ...]
    category_prices: tuple[tuple[float, ...], ...]
    everything: tuple[_Product, ...]
    prices: tuple[float, ...]


def _shelf(seed: int) -> _Shelf:
    catalog = _build_catalog(seed)
    by_cat = tuple(tuple(sorted(g, key=attrgetter("price"))) for g in catalog.by_category)
    everything = tuple(sorted(catalog.products, key=attrgetter("price")))
    by_cat_prices = tuple(tuple(p.price for p in g) for g in by_cat)
    return _Shelf(by_cat, by_cat_prices, everything, tuple(p.price for p in everything))


def _poisson(rng: random.Random, mean: float) -> int:
    # Knuth's method: the means used here are small (views, lines).
    limit, k, prod = math.exp(-mean), 0, rng.random()
    while prod > limit:
        k += 1
        prod *= rng.random()
    return k


class _UserSim:
    """One user's life: plan up front, then sessions lazily, in time order."""

    def __init__(self, cfg: PopulationConfig, shelf: _Shelf, index: int) -> None:
        self.cfg = cfg
        self.shelf = shelf
        self.user_id = _user_id(cfg, index)
        self.rng = rng = _user_rng(cfg.seed, index)
        self.rates, self.first_buy, self.first_browse = _plan(cfg, rng)
        # A few favourite categories (Gamma(0.5) weights are spiky).
        acc, self.cum_affinity = 0.0, []
        for _ in CATEGORIES:
            acc += rng.gammavariate(0.5, 1.0)
            self.cum_affinity.append(acc)
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
        return self.rng.choices(range(len(CATEGORIES)), cum_weights=self.cum_affinity)[0]

    def _for_budget(self, budget: float) -> _Product:
        """A product of a favourite category priced at most ``budget``, if it has one."""
        cat = self._category()
        goods, prices = self.shelf.by_category[cat], self.shelf.category_prices[cat]
        if prices[0] > 2.0 * budget:
            # Nothing in the category fits (a €3 line in jewelry): the budget wins
            # over taste, else small orders would all be inflated to one item.
            goods, prices = self.shelf.everything, self.shelf.prices
        i = max(bisect_right(prices, budget) - 1, 0)
        # One of the few products just under budget, for variety.
        return goods[max(i - self.rng.randrange(min(8, i + 1)), 0)]

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
            product = self._for_budget(budget)
            # Quantities fill the line's budget, so the total tracks the drawn
            # Gamma-Gamma value while prices stay the catalog's.
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
            product = rng.choice(self.shelf.by_category[self._category()])
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
        rng, pending, end = self.rng, self.pending, self.end_ms
        next_buy, next_browse = self.first_buy, self.first_browse
        free_at = 0  # sessions never overlap: the next starts after the last ends
        while min(next_buy, next_browse) < end:
            buys = next_buy <= next_browse
            nominal = int(next_buy if buys else next_browse)
            # Drawn from the nominal time, not the shifted start, so rates hold.
            if buys:
                next_buy = _after(rng, nominal, self.rates["lambda"])
            else:
                next_browse = _after(rng, nominal, self.rates["browse"])
            start = max(nominal, free_at)
            if start >= end:
                continue
            session = self._session(start, buys)
            free_at = session[-1].timestamp_ms + 30 * MINUTE_MS
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
    shelf = _shelf(cfg.seed)
    streams = [_UserSim(cfg, shelf, i).events() for i in range(cfg.users)]
    # merge() breaks timestamp ties by user index and keeps each user's order.
    return heapq.merge(*streams, key=attrgetter("timestamp_ms"))


# Ranges (lo, hi) every population draws from; verticals below override or add
# to them. Fields in _LOG_SCALE vary by ratios and are drawn log-uniformly.
_COMMON: Final[dict[str, tuple[float, float]]] = {
    "q": (2.2, 5.0),  # CDNOW 3.74; per-customer mean value CV 1/sqrt(q-2)
    "share_existing": (0.2, 0.7),
    "share_click_only": (0.1, 0.5),  # most sites convert a minority of known visitors
    "sessions_per_purchase": (2.0, 8.0),
    "sessions_per_purchase_sigma": (0.5, 1.0),
    "base_browse_per_day": (0.005, 0.03),  # one visit a month to one a fortnight
    "views_per_session": (2.0, 6.0),
    "cart_p": (0.05, 0.2),
    "checkout_abandon_p": (0.02, 0.1),
}
_LOG_SCALE: Final = {
    "orders_per_year",
    "beta",
    "aov",
    "sessions_per_purchase",
    "base_browse_per_day",
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
    # Replenishment (coffee, pet food): frequent, cheap, loyal; reorders need
    # little browsing, which also keeps these, the busiest, populations small.
    "consumables": {"r": (0.6, 1.5), "orders_per_year": (4.0, 12.0), "s": (0.5, 1.2),
                    "beta": (120, 360), "aov": (10, 40), "p": (6, 12),
                    "lines_per_order": (3, 8), "return_p": (0.01, 0.04),
                    "sessions_per_purchase": (1.0, 3.0)},
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
    layer); the others have 0-35% orders-only buyers.
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
        # 31 bits from the seed sequence: population tags, and so user and event
        # ids, do not collide across populations or sample_populations calls.
        tag = int(seq.generate_state(1)[0]) >> 1
        label = name + ("/orders-only-heavy" if k in offline else "")
        cfg = replace(PopulationConfig(users=users, days=days, seed=tag, label=label), **drawn)
        cfg.validate()
        out.append(cfg)
    return out
