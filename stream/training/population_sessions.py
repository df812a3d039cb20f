"""One customer's events: their purchase and browsing sessions, orders and returns, in time order.

Plays out a customer's plan (:mod:`stream.training.population_customers`)
lazily, one session at a time, so :func:`stream.training.populations.generate_population`
can merge every customer's stream with memory that follows users, not events.
"""

from __future__ import annotations

import heapq
import math
import random
from bisect import bisect_right
from collections.abc import Iterator
from typing import Any

from stream.training.generate import (
    CURRENCY,
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    GeneratedEvent,
    _Product,
    _think_ms,
    _user_rng,
)
from stream.training.population_catalogue import _Catalogue
from stream.training.population_config import (
    _SESSION_COOLDOWN_MS,
    MAX_ORDER_VALUE,
    MIN_ORDER_VALUE,
    PopulationConfig,
)
from stream.training.population_customers import _plan, _user_id
from stream.training.population_seasons import _after, _Season


def _poisson(rng: random.Random, mean: float) -> int:
    # Knuth's method: the means used here are small (views, lines, favourites).
    limit, k, prod = math.exp(-mean), 0, rng.random()
    while prod > limit:
        k += 1
        prod *= rng.random()
    return k


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
