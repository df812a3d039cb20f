"""Deterministic synthetic clickstream and orders, with a known latent type per user.

Pure: no faust, no redis, no Kafka client. ``segmenter generate``, the demo,
training and the benchmarks all read from :func:`generate`, so the same config
gives the same events on every run (no wall clock, no global random state).

Design choices the callers rely on:

* **Per-user randomness.** Each user draws from their own stream, seeded from
  ``(seed, user index)``. A user's history therefore does not change when the
  user count changes, and :func:`latent_types` can recover the ground truth
  without generating a single event.
* **Lazy, time-ordered.** Each user's events are produced session by session
  (with a small heap for cancellations and refunds that land later), and the
  users are merged with :func:`heapq.merge`. Memory stays proportional to the
  number of users, not events, so millions of events can be streamed to a file.
* **Separable types.** Whales, regulars, window shoppers and churners differ in
  session rate, basket value, conversion and lifetime, so a classifier fed with
  a user's past has something real to learn.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Final

import numpy as np

from stream.core.events import DAY_MS, HOUR_MS

LATENT_TYPES: tuple[str, ...] = ("whale", "regular", "window_shopper", "churner")

MINUTE_MS: Final = 60_000

#: Category and the median price (EUR) of its products. Medians span two orders
#: of magnitude so that basket value says something about what a user browses.
CATEGORIES: Final[tuple[tuple[str, float], ...]] = (
    ("electronics", 140.0),
    ("jewelry", 170.0),
    ("home", 60.0),
    ("sports", 50.0),
    ("fashion", 45.0),
    ("automotive", 40.0),
    ("garden", 35.0),
    ("toys", 25.0),
    ("beauty", 20.0),
    ("pet_supplies", 18.0),
    ("books", 14.0),
    ("grocery", 7.0),
)
N_PRODUCTS: Final = 500
CURRENCY: Final = "EUR"

#: Relative session intensity per UTC hour (a European audience: quiet nights,
#: an evening peak). Sessions are thinned by it, which keeps them a Poisson
#: process, just not a homogeneous one.
_HOUR_WEIGHTS: Final[tuple[float, ...]] = (
    0.15, 0.08, 0.05, 0.04, 0.04, 0.06, 0.15, 0.30, 0.45, 0.55, 0.60, 0.65,
    0.70, 0.65, 0.60, 0.60, 0.65, 0.75, 0.90, 1.00, 1.00, 0.90, 0.60, 0.30,
)  # fmt: skip
_MEAN_HOUR_WEIGHT: Final = sum(_HOUR_WEIGHTS) / len(_HOUR_WEIGHTS)

#: Users start within this leading fraction of the period, so tenure differs.
_START_FRACTION: Final = 0.4
#: Churners go quiet at a uniform point in this range of the period.
_CHURN_FRACTION: Final = (0.15, 0.60)
#: A churner is active for at least this fraction of the period before churning.
_MIN_CHURNER_ACTIVE: Final = 0.10
#: Share of placed orders later cancelled or refunded, and the cancel share of those.
_RETURN_P: Final = 0.03
_CANCEL_SHARE: Final = 0.4
#: Quiet time after a session before the next may start, so sessions never overlap.
_SESSION_COOLDOWN_MS: Final = 30 * MINUTE_MS

# Domain tags in the seed sequences keep the catalog stream and the per-user
# streams apart: SeedSequence pads short entropy with zeros, so [seed] and
# [seed, 0] would otherwise be the same stream.
_CATALOG_TAG: Final = 1
_USER_TAG: Final = 2


@dataclass(frozen=True, slots=True)
class GeneratedEvent:
    """One record to produce: topic, partition key (the user id), JSON value, timestamp."""

    topic: str
    key: str
    value: dict[str, Any]
    timestamp_ms: int


def _default_mix() -> dict[str, float]:
    return {"whale": 0.05, "regular": 0.30, "window_shopper": 0.35, "churner": 0.30}


@dataclass(frozen=True)
class GeneratorConfig:
    users: int = 1000
    days: float = 180.0
    start_ms: int = 1_704_067_200_000  # 2024-01-01T00:00:00Z
    seed: int = 0
    clickstream_topic: str = "clickstream"
    orders_topic: str = "orders"
    #: Share of each latent type; normalised, missing types get none.
    mix: Mapping[str, float] = field(default_factory=_default_mix)

    @property
    def end_ms(self) -> int:
        """Exclusive upper bound of every timestamp."""
        return self.start_ms + int(self.days * DAY_MS)

    def validate(self) -> None:
        if self.users < 0:
            raise ValueError(f"users must be >= 0, got {self.users}")
        if not (self.days > 0 and math.isfinite(self.days)):
            raise ValueError(f"days must be > 0, got {self.days}")
        if self.seed < 0:
            # numpy seed sequences refuse negative entropy; say so in our terms.
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        unknown = set(self.mix) - set(LATENT_TYPES)
        if unknown:
            raise ValueError(f"unknown latent types in mix: {sorted(unknown)}")
        if any(not (w >= 0 and math.isfinite(w)) for w in self.mix.values()):
            raise ValueError("mix weights must be finite and >= 0")
        if self.users and not sum(self.mix.values()) > 0:
            raise ValueError("mix weights must not all be zero")


@dataclass(frozen=True, slots=True)
class _Behaviour:
    #: Per-user mean days between sessions is drawn uniformly from this range.
    gap_days: tuple[float, float]
    search_p: float
    #: Product views per session, inclusive range.
    views: tuple[int, int]
    #: Chance that a viewed product is added to the cart.
    cart_p: float
    #: Chance that an added product is taken out again.
    remove_p: float
    #: Chance that a session ends in an order.
    buy_p: float
    #: Chance that a session without an order still reaches checkout.
    abandon_checkout_p: float
    #: Weights for quantity 1, 2, 3, ... of each ordered product.
    quantity_weights: tuple[float, ...]
    #: Price (EUR) the user is most drawn to, and how far (in log space) they
    #: stray from it. A preferred price band rather than "cheap"/"expensive"
    #: keeps e.g. regulars' baskets mid-sized instead of full of groceries.
    price_target: float
    price_spread: float

    @property
    def taste(self) -> tuple[float, float]:
        return (self.price_target, self.price_spread)


_REGULAR = _Behaviour(
    gap_days=(7.0, 14.0),
    search_p=0.6,
    views=(2, 7),
    cart_p=0.3,
    remove_p=0.1,
    buy_p=0.4,
    abandon_checkout_p=0.05,
    quantity_weights=(0.85, 0.15),
    price_target=30.0,
    price_spread=0.8,
)

_BEHAVIOUR: Final[dict[str, _Behaviour]] = {
    "whale": _Behaviour(
        gap_days=(3.0, 6.0),
        search_p=0.5,
        views=(4, 12),
        cart_p=0.5,
        remove_p=0.08,
        buy_p=0.8,
        abandon_checkout_p=0.05,
        quantity_weights=(0.55, 0.3, 0.15),
        price_target=300.0,
        price_spread=1.0,
    ),
    "regular": _REGULAR,
    "window_shopper": _Behaviour(
        gap_days=(5.0, 10.0),
        search_p=0.5,
        views=(6, 15),
        cart_p=0.4,
        remove_p=0.35,
        buy_p=0.015,
        abandon_checkout_p=0.15,
        quantity_weights=(1.0,),
        price_target=60.0,
        price_spread=1.2,
    ),
    # Until they leave, churners are indistinguishable from regulars by design:
    # only the stop itself tells them apart.
    "churner": _REGULAR,
}


@dataclass(frozen=True, slots=True)
class _Product:
    product_id: str
    category: str
    price: float


@dataclass(frozen=True, slots=True)
class _Catalog:
    products: tuple[_Product, ...]
    #: Products of each category, indexed like CATEGORIES.
    by_category: tuple[tuple[_Product, ...], ...]
    #: taste -> per category cumulative pick weights (for random.choices).
    cum_weights: Mapping[tuple[float, float], tuple[tuple[float, ...], ...]]
    #: taste -> per category base affinity (how well the category fits the taste).
    category_bias: Mapping[tuple[float, float], tuple[float, ...]]


def _build_catalog(seed: int) -> _Catalog:
    rng = np.random.default_rng([seed, _CATALOG_TAG])
    n_cat = len(CATEGORIES)
    # Round-robin then shuffle: every category gets ~N/12 products, in random order.
    cats = rng.permutation(np.arange(N_PRODUCTS) % n_cat)
    medians = np.array([m for _, m in CATEGORIES])
    prices = np.round(medians[cats] * rng.lognormal(0.0, 0.6, N_PRODUCTS), 2)
    prices = np.maximum(prices, 0.99)
    width = len(str(N_PRODUCTS))
    products = tuple(
        _Product(f"p{i:0{width}d}", CATEGORIES[int(c)][0], float(p))
        for i, (c, p) in enumerate(zip(cats, prices, strict=True))
    )
    by_category = tuple(tuple(p for p in products if p.category == name) for name, _ in CATEGORIES)
    cum_weights: dict[tuple[float, float], tuple[tuple[float, ...], ...]] = {}
    category_bias: dict[tuple[float, float], tuple[float, ...]] = {}
    for target, spread in {b.taste for b in _BEHAVIOUR.values()}:
        groups = [np.array([p.price for p in group], dtype=np.float64) for group in by_category]
        fits = [np.exp(-0.5 * (np.log(g / target) / spread) ** 2) for g in groups]
        taste = (target, spread)
        cum_weights[taste] = tuple(tuple(np.cumsum(f).tolist()) for f in fits)
        # Category affinity follows the mean fit but is floored, so that a whale
        # still buys books sometimes, just expensive ones.
        best = max(float(f.mean()) for f in fits)
        category_bias[taste] = tuple(max(float(f.mean()) / best, 0.05) for f in fits)
    return _Catalog(products, by_category, cum_weights, category_bias)


def _user_rng(seed: int, index: int) -> random.Random:
    # numpy seeds the stream (well-mixed sub-seeding); the stdlib generator
    # draws from it because scalar draws are several times cheaper there.
    words = np.random.SeedSequence([seed, _USER_TAG, index]).generate_state(4)
    # Assembled arithmetically, not via tobytes(), so byte order cannot matter.
    return random.Random(sum(int(w) << (32 * i) for i, w in enumerate(words)))


def _cumulative(weights: Mapping[str, float]) -> tuple[float, ...]:
    total = sum(weights.get(t, 0.0) for t in LATENT_TYPES)
    acc = 0.0
    out = []
    for t in LATENT_TYPES:
        acc += weights.get(t, 0.0) / total
        out.append(acc)
    # Float rounding can leave the last edge a hair under 1.0; pin every edge
    # from the last weighted type on, so a draw near 1.0 still lands on it.
    last = max(i for i, t in enumerate(LATENT_TYPES) if weights.get(t, 0.0) > 0)
    return tuple(out[:last]) + (1.0,) * (len(out) - last)


def _pick_type(rng: random.Random, cum_mix: Sequence[float]) -> str:
    # Always the user's first draw, so latent_types() can replay it alone.
    # A zero-weight type repeats the previous edge and is never picked.
    u = rng.random()
    return next(t for t, edge in zip(LATENT_TYPES, cum_mix, strict=True) if u < edge)


def _user_id(index: int, width: int) -> str:
    return f"u{index:0{width}d}"


def _id_width(users: int) -> int:
    return max(6, len(str(users)))


def latent_types(config: GeneratorConfig) -> dict[str, str]:
    """user_id -> latent type, the ground truth the generator used for ``config``."""
    config.validate()
    cum_mix = _cumulative(config.mix) if config.users else ()
    width = _id_width(config.users)
    return {
        _user_id(i, width): _pick_type(_user_rng(config.seed, i), cum_mix)
        for i in range(config.users)
    }


def generate(config: GeneratorConfig) -> Iterator[GeneratedEvent]:
    """Yields all events of all users in non-decreasing timestamp order.

    Ties are broken by user index, then by the user's own event order.
    """
    config.validate()
    if config.users == 0:
        return iter(())
    catalog = _build_catalog(config.seed)
    cum_mix = _cumulative(config.mix)
    width = _id_width(config.users)
    streams = [
        _UserSim(config, catalog, cum_mix, i, _user_id(i, width)).events()
        for i in range(config.users)
    ]
    # merge() breaks key ties by iterable position, i.e. by user index, and
    # keeps each user's own order: exactly the documented tie order.
    return heapq.merge(*streams, key=attrgetter("timestamp_ms"))


def generate_events(config: GeneratorConfig) -> list[GeneratedEvent]:
    """All events of ``config`` as a list (convenience for tests and small runs)."""
    return list(generate(config))


class _UserSim:
    """One user's life: plan (type, start, end) up front, then sessions lazily."""

    def __init__(
        self,
        config: GeneratorConfig,
        catalog: _Catalog,
        cum_mix: Sequence[float],
        index: int,
        user_id: str,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.index = index
        self.user_id = user_id
        self.rng = rng = _user_rng(config.seed, index)
        self.latent = _pick_type(rng, cum_mix)
        self.behaviour = b = _BEHAVIOUR[self.latent]
        period = config.end_ms - config.start_ms

        start_hi = _START_FRACTION
        self.end_ms = config.end_ms
        if self.latent == "churner":
            churn = rng.uniform(*_CHURN_FRACTION)
            self.end_ms = config.start_ms + int(churn * period)
            start_hi = min(start_hi, churn - _MIN_CHURNER_ACTIVE)
        self.first_session_ms = _diurnal_uniform(rng, config.start_ms, int(start_hi * period))
        self.mean_gap_ms = rng.uniform(*b.gap_days) * DAY_MS

        # Personal taste: a few favourite categories (gamma weights are spiky),
        # nudged towards price levels that fit the type.
        bias = catalog.category_bias[b.taste]
        affinity = [rng.gammavariate(0.5, 1.0) * w for w in bias]
        acc = 0.0
        cum_affinity = []
        for w in affinity:
            acc += w
            cum_affinity.append(acc)
        self.cum_affinity = cum_affinity
        self.cum_prices = catalog.cum_weights[b.taste]

        self.seq = 0
        self.order_seq = 0
        #: Cancellations and refunds due later: (timestamp, seq, event).
        self.pending: list[tuple[int, int, GeneratedEvent]] = []

    # -- ids and records -------------------------------------------------

    def _event_id(self) -> str:
        self.seq += 1
        return f"e{self.config.seed:x}-{self.index}-{self.seq}"

    def _click(
        self, ts: int, event_type: str, session_id: str, product: _Product | None = None
    ) -> GeneratedEvent:
        value: dict[str, Any] = {
            "event_id": self._event_id(),
            "event_type": event_type,
            "user_id": self.user_id,
            "session_id": session_id,
            "timestamp": ts,
        }
        if product is not None:
            value["product_id"] = product.product_id
            value["category"] = product.category
            value["price"] = product.price
        return GeneratedEvent(self.config.clickstream_topic, self.user_id, value, ts)

    def _order(
        self, ts: int, event_type: str, order_id: str, total: float, items: list[dict[str, Any]]
    ) -> GeneratedEvent:
        value: dict[str, Any] = {
            "event_id": self._event_id(),
            "event_type": event_type,
            "user_id": self.user_id,
            "order_id": order_id,
            "timestamp": ts,
            "total": total,
            "currency": CURRENCY,
            "items": items,
        }
        return GeneratedEvent(self.config.orders_topic, self.user_id, value, ts)

    # -- simulation ------------------------------------------------------

    def events(self) -> Iterator[GeneratedEvent]:
        end = self.end_ms
        pending = self.pending
        for event in self._session_events():
            ts = event.timestamp_ms
            if ts >= end:
                # Past the churn point (or the period): nothing more. Follow-ups
                # due after the end are dropped too, so "stopped" means silent.
                break
            while pending and pending[0][0] <= ts:
                yield heapq.heappop(pending)[2]
            yield event
        while pending and pending[0][0] < end:
            yield heapq.heappop(pending)[2]

    def _session_events(self) -> Iterator[GeneratedEvent]:
        # Whole sessions are built before they are yielded, so any follow-up an
        # order schedules is already in the pending heap when events() needs it.
        t = self.first_session_ms
        k = 0
        while t < self.end_ms:
            session = self._session(t, f"s{self.index}-{k}")
            k += 1
            yield from session
            t = _next_session(self.rng, session[-1].timestamp_ms, self.mean_gap_ms)

    def _pick_product(self, categories: Sequence[int]) -> _Product:
        rng = self.rng
        cat = categories[0] if len(categories) == 1 else rng.choice(categories)
        group = self.catalog.by_category[cat]
        return rng.choices(group, cum_weights=self.cum_prices[cat])[0]

    def _session(self, t: int, session_id: str) -> list[GeneratedEvent]:
        rng = self.rng
        b = self.behaviour
        out = [self._click(t, "page_view", session_id)]
        if rng.random() < b.search_p:
            t += _think_ms(rng)
            out.append(self._click(t, "search", session_id))

        n_cats = rng.choices((1, 2, 3), cum_weights=(0.5, 0.85, 1.0))[0]
        cats = rng.choices(range(len(CATEGORIES)), cum_weights=self.cum_affinity, k=n_cats)
        cart: list[_Product] = []
        last_viewed: _Product | None = None
        for _ in range(rng.randint(*b.views)):
            t += _think_ms(rng)
            last_viewed = product = self._pick_product(cats)
            out.append(self._click(t, "product_view", session_id, product))
            if rng.random() < b.cart_p:
                t += _think_ms(rng)
                out.append(self._click(t, "add_to_cart", session_id, product))
                cart.append(product)
            if cart and rng.random() < b.remove_p:
                t += _think_ms(rng)
                removed = cart.pop(rng.randrange(len(cart)))
                out.append(self._click(t, "remove_from_cart", session_id, removed))

        buys = rng.random() < b.buy_p
        if buys and not cart and last_viewed is not None:
            # A buyer who added nothing still adds what they looked at last:
            # every ordered product passes through the cart.
            t += _think_ms(rng)
            out.append(self._click(t, "add_to_cart", session_id, last_viewed))
            cart.append(last_viewed)
        if cart and (buys or rng.random() < b.abandon_checkout_p):
            t += _think_ms(rng)
            out.append(self._click(t, "checkout_start", session_id))
            if buys:
                t += rng.randint(2_000, 15_000)
                out.append(self._place_order(t, cart))
        return out

    def _place_order(self, t: int, cart: list[_Product]) -> GeneratedEvent:
        rng = self.rng
        b = self.behaviour
        quantities: dict[_Product, int] = {}
        qty_values = range(1, len(b.quantity_weights) + 1)
        for product in cart:
            q = rng.choices(qty_values, weights=b.quantity_weights)[0]
            quantities[product] = quantities.get(product, 0) + q
        items = [
            {
                "product_id": p.product_id,
                "category": p.category,
                "quantity": q,
                "unit_price": p.price,
            }
            for p, q in quantities.items()
        ]
        total = round(sum(q * p.price for p, q in quantities.items()), 2)
        order_id = f"o{self.index}-{self.order_seq}"
        self.order_seq += 1
        placed = self._order(t, "order_placed", order_id, total, items)

        if rng.random() < _RETURN_P:
            if rng.random() < _CANCEL_SHARE:
                kind, at = "order_cancelled", t + rng.randint(10 * MINUTE_MS, 12 * HOUR_MS)
            else:
                kind, at = "order_refunded", t + rng.randint(DAY_MS, 20 * DAY_MS)
            # Dropped rather than clamped when past the user's end: a churner's
            # silence must hold, and clamping would pile refunds up at the end.
            if at < self.end_ms:
                follow = self._order(at, kind, order_id, total, [dict(i) for i in items])
                heapq.heappush(self.pending, (at, self.seq, follow))
        return placed


def _think_ms(rng: random.Random) -> int:
    """Time between two clicks: seconds to a few minutes, median ~25 s."""
    return min(max(int(rng.lognormvariate(10.1, 0.8)), 2_000), 10 * MINUTE_MS)


def _accept_hour(rng: random.Random, t: int) -> bool:
    return rng.random() < _HOUR_WEIGHTS[(t // HOUR_MS) % 24]


def _diurnal_uniform(rng: random.Random, lo: int, span: int) -> int:
    """A time in ``[lo, lo + span]`` with the diurnal profile (rejection sampling)."""
    while True:
        t = lo + rng.randint(0, max(span, 0))
        if _accept_hour(rng, t):
            return t


def _next_session(rng: random.Random, last_ms: int, mean_gap_ms: float) -> int:
    """Next session start: thinned Poisson process with mean gap ``mean_gap_ms``."""
    # Candidates come faster than sessions by 1/mean weight, so after thinning
    # the mean gap is the requested one.
    rate = 1.0 / (mean_gap_ms * _MEAN_HOUR_WEIGHT)
    t = last_ms + _SESSION_COOLDOWN_MS
    while True:
        t += int(rng.expovariate(rate)) + 1
        if _accept_hour(rng, t):
            return t
