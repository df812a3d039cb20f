"""The synthetic source: determinism, the wire contracts, and separable latent types."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.core.events import DAY_MS
from stream.training.generate import (
    LATENT_TYPES,
    GeneratedEvent,
    GeneratorConfig,
    _build_catalog,
    _cumulative,
    _UserSim,
    generate,
    generate_events,
    latent_types,
)

CLICK_TYPES = {
    "page_view",
    "product_view",
    "search",
    "add_to_cart",
    "remove_from_cart",
    "checkout_start",
}
PRODUCT_CLICKS = {"product_view", "add_to_cart", "remove_from_cart"}
ORDER_TYPES = {"order_placed", "order_cancelled", "order_refunded"}
CLICK_KEYS = {"event_id", "event_type", "user_id", "session_id", "timestamp"}
PRODUCT_KEYS = {"product_id", "category", "price"}
ORDER_KEYS = {
    "event_id",
    "event_type",
    "user_id",
    "order_id",
    "timestamp",
    "total",
    "currency",
    "items",
}
ITEM_KEYS = {"product_id", "category", "quantity", "unit_price"}

# Big enough for every type to show its behaviour, small enough to build in ~0.3 s.
CONFIG = GeneratorConfig(users=400, days=180.0, seed=11)


@pytest.fixture(scope="module")
def events() -> list[GeneratedEvent]:
    return generate_events(CONFIG)


@pytest.fixture(scope="module")
def types() -> dict[str, str]:
    return latent_types(CONFIG)


def _is_float(x: Any) -> bool:
    return type(x) is float


def _is_int(x: Any) -> bool:
    # bool is an int subclass, and a bool timestamp or quantity is a bug.
    return type(x) is int


def assert_contract(event: GeneratedEvent, config: GeneratorConfig) -> None:
    v = event.value
    assert event.key == v["user_id"]
    assert event.timestamp_ms == v["timestamp"]
    assert isinstance(v["event_id"], str) and v["event_id"]
    assert isinstance(v["user_id"], str) and v["user_id"]
    assert _is_int(v["timestamp"])
    if v["event_type"] in CLICK_TYPES:
        assert event.topic == config.clickstream_topic
        expected = CLICK_KEYS | PRODUCT_KEYS if v["event_type"] in PRODUCT_CLICKS else CLICK_KEYS
        assert set(v) == expected, v
        assert isinstance(v["session_id"], str) and v["session_id"]
        if v["event_type"] in PRODUCT_CLICKS:
            assert isinstance(v["product_id"], str) and v["product_id"]
            assert isinstance(v["category"], str) and v["category"]
            assert _is_float(v["price"]) and v["price"] > 0
    else:
        assert v["event_type"] in ORDER_TYPES, v
        assert event.topic == config.orders_topic
        assert set(v) == ORDER_KEYS, v
        assert isinstance(v["order_id"], str) and v["order_id"]
        assert v["currency"] == "EUR"
        assert _is_float(v["total"]) and v["total"] >= 0
        assert round(v["total"], 2) == v["total"]
        assert isinstance(v["items"], list) and v["items"]
        for item in v["items"]:
            assert set(item) == ITEM_KEYS, item
            assert isinstance(item["product_id"], str) and item["product_id"]
            assert isinstance(item["category"], str) and item["category"]
            assert _is_int(item["quantity"]) and item["quantity"] >= 1
            assert _is_float(item["unit_price"]) and item["unit_price"] > 0
        if v["event_type"] == "order_placed":
            expected_total = round(sum(i["quantity"] * i["unit_price"] for i in v["items"]), 2)
            assert v["total"] == pytest.approx(expected_total, abs=1e-9)


def assert_stream_invariants(events: list[GeneratedEvent], config: GeneratorConfig) -> None:
    stamps = [e.timestamp_ms for e in events]
    assert stamps == sorted(stamps)
    assert all(config.start_ms <= t < config.start_ms + int(config.days * DAY_MS) for t in stamps)
    ids = [e.value["event_id"] for e in events]
    assert len(set(ids)) == len(ids)
    for event in events:
        assert_contract(event, config)


# -- determinism ------------------------------------------------------------


def test_same_seed_gives_identical_events() -> None:
    config = GeneratorConfig(users=60, days=60.0, seed=3)
    first = generate_events(config)
    assert first, "a 60-user config must produce events"
    assert generate_events(config) == first
    assert latent_types(config) == latent_types(config)


def test_different_seed_gives_different_events() -> None:
    a = generate_events(GeneratorConfig(users=60, days=60.0, seed=3))
    b = generate_events(GeneratorConfig(users=60, days=60.0, seed=4))
    assert [e.value for e in a] != [e.value for e in b]
    assert {e.value["event_id"] for e in a}.isdisjoint(e.value["event_id"] for e in b)


def test_a_users_history_does_not_depend_on_the_other_users() -> None:
    small = GeneratorConfig(users=30, days=90.0, seed=5)
    large = GeneratorConfig(users=90, days=90.0, seed=5)
    kept = set(latent_types(small))
    assert [e for e in generate(large) if e.key in kept] == generate_events(small)
    big_types = latent_types(large)
    assert latent_types(small) == {u: big_types[u] for u in kept}


def test_generate_is_lazy_and_matches_the_list(events: list[GeneratedEvent]) -> None:
    stream = generate(CONFIG)
    head = [next(stream) for _ in range(100)]
    assert head == events[:100]


# -- stream invariants and contracts ------------------------------------------


def test_stream_invariants(events: list[GeneratedEvent]) -> None:
    assert len(events) > 10_000
    assert_stream_invariants(events, CONFIG)
    assert {e.value["event_type"] for e in events} == CLICK_TYPES | ORDER_TYPES


def test_values_are_json_round_trippable(events: list[GeneratedEvent]) -> None:
    for event in events[:5000]:
        assert orjson.loads(orjson.dumps(event.value)) == event.value


def test_user_ids_and_topics() -> None:
    config = GeneratorConfig(
        users=12, days=30.0, seed=1, clickstream_topic="clicks", orders_topic="buys"
    )
    assert list(latent_types(config)) == [f"u{i:06d}" for i in range(12)]
    evs = generate_events(config)
    assert {e.key for e in evs} <= set(latent_types(config))
    assert {e.topic for e in evs} <= {"clicks", "buys"}
    assert_stream_invariants(evs, config)


def test_catalog_prices_are_stable(events: list[GeneratedEvent]) -> None:
    seen: dict[str, tuple[str, float]] = {}
    for event in events:
        v = event.value
        rows = v.get("items", [v] if "product_id" in v else [])
        for row in rows:
            price = row.get("price", row.get("unit_price"))
            assert seen.setdefault(row["product_id"], (row["category"], price)) == (
                row["category"],
                price,
            )
    catalog = _build_catalog(CONFIG.seed)
    assert len(catalog.products) == 500
    assert len({p.category for p in catalog.products}) == 12
    assert all(
        seen[p.product_id] == (p.category, p.price)
        for p in catalog.products
        if p.product_id in seen
    )


def test_sessions_are_well_formed(events: list[GeneratedEvent]) -> None:
    sessions: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        if event.topic == CONFIG.clickstream_topic:
            sessions[event.value["session_id"]].append(event.value)
    for sid, clicks in sessions.items():
        assert len({c["user_id"] for c in clicks}) == 1, sid
        assert clicks[0]["event_type"] == "page_view", sid
        views = sum(c["event_type"] == "product_view" for c in clicks)
        assert 2 <= views <= 15, sid
        assert len({c["category"] for c in clicks if c["event_type"] == "product_view"}) <= 3
        span = clicks[-1]["timestamp"] - clicks[0]["timestamp"]
        assert span < 4 * 3_600_000, sid


def test_orders_follow_checkout_of_carted_items(events: list[GeneratedEvent]) -> None:
    last_checkout: dict[str, int] = {}
    carted: dict[str, set[str]] = defaultdict(set)
    for event in events:
        v = event.value
        if v["event_type"] == "checkout_start":
            last_checkout[v["user_id"]] = v["timestamp"]
        elif v["event_type"] == "add_to_cart":
            carted[v["user_id"]].add(v["product_id"])
        elif v["event_type"] == "order_placed":
            checkout = last_checkout.get(v["user_id"])
            assert checkout is not None and 0 <= v["timestamp"] - checkout <= 60_000
            assert {i["product_id"] for i in v["items"]} <= carted[v["user_id"]]


def test_cancellations_and_refunds_reference_an_earlier_order(
    events: list[GeneratedEvent],
) -> None:
    placed: dict[str, dict[str, Any]] = {}
    followed: set[str] = set()
    n_placed = 0
    for event in events:
        v = event.value
        if v["event_type"] == "order_placed":
            assert v["order_id"] not in placed, "order ids are unique"
            placed[v["order_id"]] = v
            n_placed += 1
        elif v["event_type"] in ("order_cancelled", "order_refunded"):
            original = placed.get(v["order_id"])
            assert original is not None, "references an order placed before it"
            assert original["user_id"] == v["user_id"]
            assert original["total"] == v["total"]
            assert original["items"] == v["items"]
            lag = v["timestamp"] - original["timestamp"]
            if v["event_type"] == "order_cancelled":
                assert 0 < lag <= 12 * 3_600_000
            else:
                assert DAY_MS <= lag <= 20 * DAY_MS
            assert v["order_id"] not in followed, "at most one follow-up per order"
            followed.add(v["order_id"])
    assert n_placed > 1000
    # ~3% of orders, minus the few whose follow-up would land after the end.
    assert 0.01 < len(followed) / n_placed < 0.06


# -- latent types ---------------------------------------------------------------


def test_latent_mix_is_respected() -> None:
    counts = Counter(latent_types(GeneratorConfig(users=4000, seed=2)).values())
    assert set(counts) == set(LATENT_TYPES)
    expected = {"whale": 0.05, "regular": 0.30, "window_shopper": 0.35, "churner": 0.30}
    for latent, share in expected.items():
        assert counts[latent] / 4000 == pytest.approx(share, abs=0.03)
    only = latent_types(GeneratorConfig(users=50, mix={"whale": 0.0, "churner": 2.0}))
    assert set(only.values()) == {"churner"}


def _per_user(events: list[GeneratedEvent]) -> dict[str, dict[str, Any]]:
    stats: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"spend": 0.0, "orders": 0, "totals": [], "sessions": set(), "last": 0}
    )
    for event in events:
        v = event.value
        s = stats[event.key]
        s["last"] = event.timestamp_ms
        if "session_id" in v:
            s["sessions"].add(v["session_id"])
        if v["event_type"] == "order_placed":
            s["spend"] += v["total"]
            s["orders"] += 1
            s["totals"].append(v["total"])
    return stats


def test_latent_types_separate_by_behaviour(
    events: list[GeneratedEvent], types: dict[str, str]
) -> None:
    stats = _per_user(events)
    assert set(stats) == set(types), "every user has at least one event"
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for user, latent in types.items():
        by_type[latent].append(stats[user])
    assert all(by_type[t] for t in LATENT_TYPES)

    def mean_spend(latent: str) -> float:
        return statistics.mean(s["spend"] for s in by_type[latent])

    assert mean_spend("whale") > 5 * mean_spend("regular")
    assert mean_spend("regular") > 3 * mean_spend("window_shopper")

    def totals(latent: str) -> list[float]:
        return [t for s in by_type[latent] for t in s["totals"]]

    assert 200 <= statistics.median(totals("whale")) <= 2000
    assert 20 <= statistics.median(totals("regular")) <= 150

    def conversion(latent: str) -> float:
        orders = sum(s["orders"] for s in by_type[latent])
        return orders / sum(len(s["sessions"]) for s in by_type[latent])

    assert conversion("window_shopper") < 0.03
    assert 0.3 <= conversion("regular") <= 0.5
    assert conversion("whale") > 0.6

    def sessions_per_user(latent: str) -> float:
        return statistics.mean(len(s["sessions"]) for s in by_type[latent])

    assert sessions_per_user("whale") > sessions_per_user("window_shopper")
    assert sessions_per_user("window_shopper") > sessions_per_user("regular")


def test_churners_go_silent(events: list[GeneratedEvent], types: dict[str, str]) -> None:
    stats = _per_user(events)
    period = CONFIG.days * DAY_MS
    churn_bound = CONFIG.start_ms + 0.6 * period

    churners = [u for u, t in types.items() if t == "churner"]
    assert all(stats[u]["last"] < churn_bound for u in churners)
    stayers = [u for u, t in types.items() if t in ("whale", "regular", "window_shopper")]
    late = sum(stats[u]["last"] >= churn_bound for u in stayers)
    assert late / len(stayers) > 0.95

    # The exact churn point is private ground truth; nothing reaches past it.
    catalog = _build_catalog(CONFIG.seed)
    for index, user in enumerate(types):
        if types[user] == "churner":
            sim = _UserSim(CONFIG, catalog, _cumulative(CONFIG.mix), index, user)
            assert sim.latent == "churner"
            assert stats[user]["last"] < sim.end_ms < CONFIG.start_ms + int(CONFIG.days * DAY_MS)


# -- scale and edge cases ---------------------------------------------------------


def test_two_thousand_users_make_plenty_of_events() -> None:
    n = sum(1 for _ in generate(GeneratorConfig(users=2000, days=180.0, seed=0)))
    assert n > 20_000


def test_no_users_no_events() -> None:
    config = GeneratorConfig(users=0)
    assert generate_events(config) == []
    assert latent_types(config) == {}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"users": -1},
        {"days": 0.0},
        {"days": float("inf")},
        {"seed": -1},
        {"mix": {"whale": 1.0, "vip": 1.0}},
        {"mix": {"whale": -1.0, "regular": 2.0}},
        {"mix": {"whale": 0.0}},
        {"mix": {"whale": float("nan")}},
    ],
)
def test_invalid_config_is_refused(kwargs: dict[str, Any]) -> None:
    config = GeneratorConfig(**kwargs)
    with pytest.raises(ValueError):
        generate_events(config)
    with pytest.raises(ValueError):
        latent_types(config)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    users=st.integers(min_value=0, max_value=12),
    days=st.floats(min_value=0.01, max_value=40.0),
    seed=st.integers(min_value=0, max_value=2**40),
    start_ms=st.integers(min_value=946_684_800_000, max_value=4_102_444_800_000),
)
def test_invariants_hold_for_any_config(users: int, days: float, seed: int, start_ms: int) -> None:
    config = GeneratorConfig(users=users, days=days, seed=seed, start_ms=start_ms)
    evs = generate_events(config)
    assert_stream_invariants(evs, config)
    assert {e.key for e in evs} <= set(latent_types(config))
