"""Heterogeneous BTYD populations: determinism, wire contracts, and real-world shape."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import replace
from typing import Literal

import pytest

from stream.core.events import MAX_MONEY, ClickEvent, OrderEvent, Rejected, decode
from stream.training.generate import DAY_MS, GeneratedEvent
from stream.training.populations import (
    PopulationConfig,
    generate_population,
    latent_rates,
    sample_populations,
)
from stream.training.produce import encode_generated

CLICK_KEYS = {"event_id", "event_type", "user_id", "session_id", "timestamp"}
PRODUCT_KEYS = {"product_id", "category", "price"}
PRODUCT_CLICKS = {"product_view", "add_to_cart", "remove_from_cart"}
ORDER_KEYS = {"event_id", "event_type", "user_id", "order_id", "timestamp", "total"}
ORDER_KEYS |= {"currency", "items"}
ITEM_KEYS = {"product_id", "category", "quantity", "unit_price"}

# Small, with every kind of user and plenty of returns, to check contracts fast.
SMALL = PopulationConfig(
    users=300, days=120.0, seed=7, share_orders_only=0.25, share_click_only=0.25, return_p=0.2
)


@pytest.fixture(scope="module")
def small() -> list[GeneratedEvent]:
    return list(generate_population(SMALL))


@pytest.fixture(scope="module")
def big_config() -> PopulationConfig:
    (cfg,) = sample_populations(seed=0, n=1, users=2000, days=365.0)
    return cfg


@pytest.fixture(scope="module")
def big(big_config: PopulationConfig) -> list[GeneratedEvent]:
    return list(generate_population(big_config))


def _kind(topic: str, cfg: PopulationConfig) -> Literal["clickstream", "orders"]:
    assert topic in (cfg.clickstream_topic, cfg.orders_topic), topic
    return "clickstream" if topic == cfg.clickstream_topic else "orders"


def _placed(events: list[GeneratedEvent]) -> list[GeneratedEvent]:
    return [e for e in events if e.value["event_type"] == "order_placed"]


# -- determinism and order ----------------------------------------------------


def test_same_config_gives_identical_events(small: list[GeneratedEvent]) -> None:
    assert len(small) > 1000, "a 300-user, 120-day population must be busy"
    assert list(generate_population(SMALL)) == small
    assert latent_rates(SMALL) == latent_rates(SMALL)


def test_other_seed_gives_other_events_and_ids(small: list[GeneratedEvent]) -> None:
    other = list(generate_population(replace(SMALL, seed=8)))
    assert [e.value for e in other] != [e.value for e in small]
    assert {e.value["event_id"] for e in other}.isdisjoint(e.value["event_id"] for e in small)
    assert {e.key for e in other}.isdisjoint(e.key for e in small)


def test_events_are_time_ordered_inside_the_period(small: list[GeneratedEvent]) -> None:
    stamps = [e.timestamp_ms for e in small]
    assert stamps == sorted(stamps)
    assert SMALL.start_ms <= stamps[0] and stamps[-1] < SMALL.end_ms


def test_a_users_history_does_not_depend_on_the_user_count() -> None:
    few = list(generate_population(replace(SMALL, users=40)))
    many = list(generate_population(replace(SMALL, users=120)))
    first_40 = {f"p{SMALL.seed}-u{i:06d}" for i in range(40)}
    assert few == [e for e in many if e.key in first_40]


# -- wire contracts -----------------------------------------------------------


def test_every_event_passes_decode(small: list[GeneratedEvent]) -> None:
    now_ms = SMALL.end_ms + 365 * DAY_MS
    for topic, key, value in encode_generated(small):
        decoded = decode(_kind(topic, SMALL), key, value, now_ms=now_ms)
        assert not isinstance(decoded, Rejected), (decoded, value)
        expected = ClickEvent if topic == SMALL.clickstream_topic else OrderEvent
        assert isinstance(decoded, expected)


def test_every_big_population_order_passes_decode(
    big: list[GeneratedEvent], big_config: PopulationConfig
) -> None:
    # The big population's money comes from a sampled vertical, not the defaults.
    now_ms = big_config.end_ms + 365 * DAY_MS
    orders = [e for e in big if e.topic == big_config.orders_topic]
    for _topic, key, value in encode_generated(orders):
        decoded = decode("orders", key, value, now_ms=now_ms)
        assert not isinstance(decoded, Rejected), (decoded, value)


def test_event_shapes_match_stream_generate(small: list[GeneratedEvent]) -> None:
    for e in small:
        v = e.value
        assert e.key == v["user_id"] and e.timestamp_ms == v["timestamp"]
        assert v["user_id"].startswith(f"p{SMALL.seed}-u")
        if e.topic == SMALL.clickstream_topic:
            product = v["event_type"] in PRODUCT_CLICKS
            assert set(v) == (CLICK_KEYS | PRODUCT_KEYS if product else CLICK_KEYS), v
        else:
            assert set(v) == ORDER_KEYS, v
            assert v["currency"] == "EUR" and v["items"]
            assert all(set(i) == ITEM_KEYS and i["quantity"] >= 1 for i in v["items"])
    ids = [e.value["event_id"] for e in small]
    assert len(set(ids)) == len(ids)


def test_order_totals_equal_the_sum_of_their_items(
    small: list[GeneratedEvent], big: list[GeneratedEvent]
) -> None:
    orders = [e.value for e in small + big if e.topic == "orders"]
    assert {v["event_type"] for v in orders} == {
        "order_placed",
        "order_cancelled",
        "order_refunded",
    }
    for v in orders:
        items_sum = sum(i["quantity"] * i["unit_price"] for i in v["items"])
        assert abs(v["total"] - items_sum) <= 0.01, v
        assert 0.5 <= v["total"] <= MAX_MONEY and round(v["total"], 2) == v["total"]


def test_population_ids_do_not_collide() -> None:
    configs = sample_populations(seed=3, n=3, users=30, days=30.0)
    seen: set[str] = set()
    for cfg in configs:
        ids = {e.value["event_id"] for e in generate_population(cfg)}
        assert ids and seen.isdisjoint(ids)
        seen |= ids


# -- kinds of users -----------------------------------------------------------


def test_orders_only_users_never_click_and_click_only_users_never_buy(
    small: list[GeneratedEvent],
) -> None:
    truth = latent_rates(SMALL)
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    for e in small:
        by_kind[truth[e.key]["kind"]][e.topic] += 1
    assert by_kind["orders_only"]["orders"] > 0 and by_kind["orders_only"]["clickstream"] == 0
    assert by_kind["click_only"]["clickstream"] > 0 and by_kind["click_only"]["orders"] == 0
    assert by_kind["buyer"]["clickstream"] > 0 and by_kind["buyer"]["orders"] > 0
    assert {t["lambda"] for t in truth.values() if t["kind"] == "click_only"} == {0.0}
    assert {t["browse"] for t in truth.values() if t["kind"] == "orders_only"} == {0.0}


def test_tracked_orders_follow_views_carts_and_checkout_in_their_session(
    small: list[GeneratedEvent],
) -> None:
    truth = latent_rates(SMALL)
    session: dict[str, list[dict[str, object]]] = defaultdict(list)
    checked = 0
    for e in small:
        v = e.value
        if e.topic == SMALL.clickstream_topic:
            current = session[e.key]
            if current and current[-1]["session_id"] != v["session_id"]:
                current.clear()
            current.append(v)
        elif v["event_type"] == "order_placed" and truth[e.key]["kind"] == "buyer":
            clicks = session[e.key]
            assert clicks and clicks[-1]["event_type"] == "checkout_start", clicks[-3:]
            viewed = {c["product_id"] for c in clicks if c["event_type"] == "product_view"}
            carted = {c["product_id"] for c in clicks if c["event_type"] == "add_to_cart"}
            ordered = {i["product_id"] for i in v["items"]}
            assert ordered <= viewed and ordered <= carted
            checked += 1
    assert checked > 50


def test_nobody_acts_after_dropping_out_or_before_being_acquired(
    small: list[GeneratedEvent],
) -> None:
    truth = latent_rates(SMALL)
    for e in small:
        t = truth[e.key]
        assert t["acquired_ms"] <= e.timestamp_ms < t["alive_until_ms"], (e.value, t)


# -- heterogeneity: the shape of real customer bases ------------------------


def test_spend_concentrates_and_order_counts_are_overdispersed(
    big: list[GeneratedEvent],
) -> None:
    spend: dict[str, float] = defaultdict(float)
    orders: Counter[str] = Counter()
    for e in _placed(big):
        spend[e.key] += e.value["total"]
        orders[e.key] += 1
    assert len(spend) >= 500, "a 2000-user population must have hundreds of buyers"
    ranked = sorted(spend.values(), reverse=True)
    top = ranked[: len(ranked) // 5]
    assert sum(top) >= 0.5 * sum(ranked), sum(top) / sum(ranked)
    counts = list(orders.values())
    # Poisson counts have variance == mean, and among buyers (zero-truncated)
    # even less; Gamma-mixed rates, staggered arrival and dropout push it above.
    assert statistics.pvariance(counts) >= 1.5 * statistics.mean(counts)


def test_spend_concentrates_in_every_vertical() -> None:
    # Low-frequency verticals (electronics) are mostly one-time buyers, so
    # there the concentration comes from order values alone; it must still hold.
    for cfg in sample_populations(seed=0, n=4, users=800, days=365.0):
        spend: dict[str, float] = defaultdict(float)
        for e in _placed(list(generate_population(cfg))):
            spend[e.key] += e.value["total"]
        ranked = sorted(spend.values(), reverse=True)
        share = sum(ranked[: len(ranked) // 5]) / sum(ranked)
        assert share >= 0.5, (cfg.label, share)


def test_order_counts_follow_the_latent_purchase_rate(
    big: list[GeneratedEvent], big_config: PopulationConfig
) -> None:
    truth = latent_rates(big_config)
    orders = Counter(e.key for e in _placed(big))
    buying = [u for u, t in truth.items() if t["kind"] != "click_only"]
    median = statistics.median(truth[u]["lambda"] for u in buying)
    high = [orders[u] for u in buying if truth[u]["lambda"] > median]
    low = [orders[u] for u in buying if truth[u]["lambda"] <= median]
    assert statistics.mean(high) > 2 * statistics.mean(low)


# -- sampling populations -----------------------------------------------------


def test_sample_populations_gives_distinct_plausible_configs() -> None:
    configs = sample_populations(seed=0, n=4, users=1500, days=365.0)
    assert configs == sample_populations(seed=0, n=4, users=1500, days=365.0)
    assert len(set(configs)) == 4 and len({c.seed for c in configs}) == 4
    assert len({c.label.split("/")[0] for c in configs}) == 4, "all four verticals"
    assert any(c.share_orders_only >= 0.5 for c in configs)
    for c in configs:
        c.validate()
        assert (c.users, c.days) == (1500, 365.0)
        assert 10.0 <= c.mean_order_value <= 300.0
        assert 0.0 <= c.share_orders_only <= 0.6 and 0.0 < c.share_click_only <= 0.5
    assert sample_populations(seed=1, n=4, users=1500, days=365.0) != configs


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_every_sample_of_two_or_more_has_an_orders_only_dominated_population(n: int) -> None:
    for seed in range(5):
        configs = sample_populations(seed=seed, n=n, users=10, days=10.0)
        assert len(configs) == n
        assert any(c.share_orders_only >= 0.5 for c in configs)


@pytest.mark.parametrize(
    "change",
    [
        {"users": -1},
        {"days": 0.0},
        {"seed": -1},
        {"start_ms": 0},
        {"q": 1.0},
        {"r": 0.0},
        {"alpha": float("inf")},
        {"share_orders_only": 0.7, "share_click_only": 0.4},
        {"return_p": 1.5},
        {"orders_topic": "clickstream"},
    ],
)
def test_validate_rejects_impossible_configs(change: dict[str, object]) -> None:
    cfg = replace(SMALL, **change)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        cfg.validate()
    with pytest.raises(ValueError):
        list(generate_population(cfg))
