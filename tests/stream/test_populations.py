"""Heterogeneous BTYD populations: determinism, wire contracts, and real-world shape."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.core.events import MAX_MONEY, ClickEvent, OrderEvent, Rejected, decode
from stream.training.generate import DAY_MS, GeneratedEvent
from stream.training.populations import (
    MAX_CATEGORIES,
    MIN_CATEGORIES,
    WEEKLY_SHAPE,
    PopulationConfig,
    _catalogue,
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
    session_start: dict[str, int] = {}
    for e in small:
        t, v = truth[e.key], e.value
        assert t["acquired_ms"] <= e.timestamp_ms, (v, t)
        if v["event_type"] in ("order_cancelled", "order_refunded"):
            # Follow-ups due after the customer left are dropped.
            assert e.timestamp_ms < t["alive_until_ms"], (v, t)
            continue
        if v["event_type"] == "page_view" or t["kind"] == "orders_only":
            session_start[e.key] = e.timestamp_ms
        # Every session starts while the customer is alive, and completes: a
        # BG/NBD customer leaves right after the start of their last purchase.
        start = session_start[e.key]
        assert start < t["alive_until_ms"] and e.timestamp_ms - start < DAY_MS, (v, t)


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
        {"categories": 0},
        {"share_frequent": 1.5},
        {"frequent_dropout_a": 0.0},
        {"browse_shape": 0.0},
        {"browse_per_day": -0.1},
        {"weekly_amplitude": 1.0},
        {"yearly_amplitude": -0.1},
        {"favourite_categories": 0.5},
    ],
)
def test_validate_rejects_impossible_configs(change: dict[str, object]) -> None:
    cfg = replace(SMALL, **change)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        cfg.validate()
    with pytest.raises(ValueError):
        list(generate_population(cfg))


# -- nothing leaks: browsing, catalogue -----------------------------------------


def _ranks(x: list[float]) -> np.ndarray:
    """Ranks with ties averaged (as Spearman's rho wants them)."""
    values = np.asarray(x, dtype=np.float64)
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=ranks) / counts)[inverse]


def _spearman(a: list[float], b: list[float]) -> float:
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


# Tracked buyers only, all acquired in the period and most staying: whoever
# was acquired before it is in a log only if they act in it, and that selection
# ties any two rates together (who shows up without buying must browse), as in
# real logs. Only fields every version of PopulationConfig has, so the tests
# also run against the generator before browsing had a rate of its own.
TRACKED = PopulationConfig(
    users=4000, days=365.0, seed=21, share_orders_only=0.0, share_click_only=0.0,
    share_existing=0.0, beta=300.0,
)  # fmt: skip


def test_browsing_is_drawn_independently_of_the_purchase_rate() -> None:
    truth = latent_rates(TRACKED)
    buyers = [t for t in truth.values() if t["kind"] == "buyer"]
    rho = _spearman([t["browse"] for t in buyers], [t["lambda"] for t in buyers])
    assert abs(rho) < 0.05, rho


def test_browsing_views_do_not_tell_how_often_a_customer_buys() -> None:
    # Customers acquired early who stay to the end: similar exposure, so rates
    # over it compare. (Per *active day* would not: browsing days and buying
    # days share that denominator and move against each other with any generator.)
    truth = latent_rates(TRACKED)
    early = TRACKED.start_ms + 100 * DAY_MS
    exposure = {
        u: (TRACKED.end_ms - t["acquired_ms"]) / DAY_MS
        for u, t in truth.items()
        if t["acquired_ms"] < early and t["alive_until_ms"] >= TRACKED.end_ms
    }
    orders: Counter[str] = Counter()
    views_in: dict[str, Counter[str]] = defaultdict(Counter)  # user -> session -> views
    bought_in: dict[str, set[str]] = defaultdict(set)
    current: dict[str, str] = {}
    for e in generate_population(TRACKED):
        if e.key not in exposure:
            continue
        v = e.value
        if e.topic == TRACKED.clickstream_topic:
            current[e.key] = v["session_id"]
            if v["event_type"] == "product_view":
                views_in[e.key][v["session_id"]] += 1
        elif v["event_type"] == "order_placed":
            orders[e.key] += 1
            bought_in[e.key].add(current[e.key])
    users = sorted(exposure)
    # Repeat orders: the first is the acquisition itself.
    repeat = [(orders[u] - 1) / exposure[u] for u in users]
    assert len(users) >= 500 and sum(r > 0 for r in repeat) >= 200
    # Product views of the sessions that did not end in an order: browsing.
    browsing = [
        sum(n for s, n in views_in[u].items() if s not in bought_in[u]) / exposure[u] for u in users
    ]
    rho = _spearman(browsing, repeat)
    assert abs(rho) < 0.1, rho


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**31 - 1))
def test_catalogue_size_is_drawn_within_bounds_for_any_seed(seed: int) -> None:
    size = PopulationConfig(seed=seed).catalogue_size
    assert MIN_CATEGORIES <= size <= MAX_CATEGORIES
    assert size == PopulationConfig(seed=seed).catalogue_size  # deterministic
    for cfg in sample_populations(seed=seed, n=2, users=10, days=10.0):
        assert cfg.categories is not None
        assert MIN_CATEGORIES <= cfg.catalogue_size == cfg.categories <= MAX_CATEGORIES


def test_catalogue_sizes_vary_log_uniformly() -> None:
    sizes = [PopulationConfig(seed=seed).catalogue_size for seed in range(400)]
    sizes += [c.catalogue_size for c in sample_populations(seed=0, n=400, users=10, days=10.0)]
    assert min(sizes) < 15 and max(sizes) > 1500
    # Log-uniform: the median is near the geometric mean (141), not 1005.
    assert 80 <= statistics.median(sizes) <= 250
    assert len(set(sizes)) > 300


def test_events_use_the_populations_own_catalogue(
    big: list[GeneratedEvent], big_config: PopulationConfig
) -> None:
    catalogue = _catalogue(big_config)
    assert catalogue.size == big_config.catalogue_size
    known = {p.product_id: (p.category, p.price) for g in catalogue.by_category for p in g}
    assert len({c for c, _ in known.values()}) == catalogue.size
    for e in big[:20_000]:
        v = e.value
        for row in v.get("items", [v] if "product_id" in v else []):
            assert known[row["product_id"]] == (
                row["category"],
                row.get("price", row.get("unit_price")),
            )


def _within_cells_spearman(cells: dict[Any, list[tuple[float, float]]]) -> float:
    """Spearman's rho within each cell (of 20 or more), pooled: the rest held fixed."""
    za: list[float] = []
    zb: list[float] = []
    for pairs in cells.values():
        a, b = _ranks([x for x, _ in pairs]), _ranks([y for _, y in pairs])
        if len(pairs) >= 20 and a.std() > 0 and b.std() > 0:
            za += ((a - a.mean()) / a.std()).tolist()
            zb += ((b - b.mean()) / b.std()).tolist()
    assert len(za) >= 1000
    return float(np.mean(np.array(za) * np.array(zb)))


def _orders_lines_categories_spend(cfg: PopulationConfig) -> dict[str, tuple[int, int, int, float]]:
    """user -> (orders, order lines, distinct categories ordered, spend)."""
    orders: Counter[str] = Counter()
    lines: Counter[str] = Counter()
    cats: dict[str, set[str]] = defaultdict(set)
    spend: Counter[str] = Counter()
    for e in _placed(list(generate_population(cfg))):
        orders[e.key] += 1
        lines[e.key] += len(e.value["items"])
        cats[e.key] |= {i["category"] for i in e.value["items"]}
        spend[e.key] += e.value["total"]
    return {u: (orders[u], lines[u], len(cats[u]), spend[u]) for u in orders}


ORDERS_ONLY = replace(
    SMALL, users=3000, days=365.0, share_orders_only=1.0, share_click_only=0.0, return_p=0.05
)


@pytest.mark.parametrize("categories", [MIN_CATEGORIES, 300, MAX_CATEGORIES])
def test_distinct_categories_follow_orders_and_lines_not_value(categories: int) -> None:
    users = _orders_lines_categories_spend(replace(ORDERS_ONLY, categories=categories))
    # At the same number of orders and order lines, spending more buys no more
    # (and no fewer) categories.
    cells: dict[Any, list[tuple[float, float]]] = defaultdict(list)
    for n_orders, n_lines, n_cats, spend in users.values():
        cells[n_orders, n_lines].append((n_cats, spend))
    rho = _within_cells_spearman(cells)
    assert abs(rho) < 0.1, rho


def test_the_catalogue_sets_how_far_the_same_lines_spread() -> None:
    small_shop = _orders_lines_categories_spend(replace(ORDERS_ONLY, categories=MIN_CATEGORIES))
    big_shop = _orders_lines_categories_spend(replace(ORDERS_ONLY, categories=MAX_CATEGORIES))

    def mean_distinct(shop: dict[str, tuple[int, int, int, float]]) -> float:
        return statistics.mean(c for _, n, c, _ in shop.values() if n >= 10)

    assert mean_distinct(big_shop) > 1.3 * mean_distinct(small_shop)
    assert max(c for _, _, c, _ in small_shop.values()) <= MIN_CATEGORIES


# -- what training must see: frequent buyers who stop, seasons ------------------


def _frequent_then_silent(events: list[GeneratedEvent], end_ms: int) -> tuple[set[str], int]:
    """Customers with 4 orders within 30 days, then silent for the last 90; buyers."""
    orders: dict[str, list[int]] = defaultdict(list)
    last: dict[str, int] = {}
    for e in events:
        last[e.key] = e.timestamp_ms
        if e.value["event_type"] == "order_placed":
            orders[e.key].append(e.timestamp_ms)
    stopped = {
        u
        for u, ts in orders.items()
        if any(ts[i + 3] - ts[i] <= 30 * DAY_MS for i in range(len(ts) - 3))
        and end_ms - last[u] >= 90 * DAY_MS
    }
    return stopped, len(orders)


# Every version of PopulationConfig has these fields (see TRACKED).
DEFAULT = PopulationConfig(users=2000, days=365.0, seed=3)


def test_enough_frequent_buyers_stop_and_stay_silent() -> None:
    stopped, buyers = _frequent_then_silent(list(generate_population(DEFAULT)), DEFAULT.end_ms)
    # 10% of buying customers are drawn frequent; about half of those buy 4
    # times in a month and then leave early enough to be silent for 90 days.
    assert len(stopped) >= 0.03 * buyers, (len(stopped), buyers)


def test_frequent_buyers_drop_out_after_a_purchase() -> None:
    truth = latent_rates(DEFAULT)
    buying = [t for t in truth.values() if t["kind"] != "click_only"]
    frequent = [t for t in buying if t["frequent"]]
    assert len(frequent) / len(buying) == pytest.approx(DEFAULT.share_frequent, abs=0.025)
    assert not any(t["frequent"] for t in truth.values() if t["kind"] == "click_only")
    # Several times a month, with a per-purchase dropout probability.
    assert 2.5 <= statistics.median(t["lambda"] * 365 / 12 for t in frequent) <= 6.0
    assert all(0 < t["dropout_p"] < 1 and t["mu"] == t["lambda"] * t["dropout_p"] for t in frequent)
    assert not any(t["dropout_p"] for t in buying if not t["frequent"])
    # Those who leave in the period do so right after an order (BG/NBD), and
    # most leave: the silence after frequent buying is the usual outcome.
    left = {u for u, t in truth.items() if t["frequent"] and t["alive_until_ms"] < DEFAULT.end_ms}
    assert len(left) >= 0.6 * len(frequent)
    last_order: dict[str, int] = {}
    for e in _placed(list(generate_population(replace(DEFAULT, users=600)))):
        last_order[e.key] = e.timestamp_ms
    checked = [u for u in left if u in last_order]
    assert len(checked) >= 20
    after_death = [last_order[u] - truth[u]["alive_until_ms"] for u in checked]
    assert sum(-1 <= d < 3_600_000 for d in after_death) >= 0.9 * len(checked)


@pytest.mark.parametrize("amplitude", [0.0, 0.3])
def test_weekly_seasonality_follows_the_configured_amplitude(amplitude: float) -> None:
    # 52 whole weeks from a Monday (2024-01-01), no yearly swing.
    cfg = replace(SMALL, users=3000, days=364.0, weekly_amplitude=amplitude, yearly_amplitude=0.0)
    truth = latent_rates(cfg)
    by_day: Counter[int] = Counter()
    for e in generate_population(cfg):
        v = e.value
        starts = v["event_type"] == "page_view" or (
            truth[e.key]["kind"] == "orders_only" and v["event_type"] == "order_placed"
        )
        if starts:
            by_day[(e.timestamp_ms // DAY_MS + 3) % 7] += 1  # 0: Monday
    mean = sum(by_day.values()) / 7
    assert mean > 2500
    for day, shape in enumerate(WEEKLY_SHAPE):
        assert by_day[day] / mean == pytest.approx(1.0 + amplitude * shape, abs=0.05), day
    if amplitude:
        # Monday against Saturday: (1 + a) / (1 - a).
        assert by_day[0] / by_day[5] == pytest.approx((1 + amplitude) / (1 - amplitude), rel=0.1)


def test_yearly_seasonality_peaks_on_the_configured_day() -> None:
    cfg = replace(
        SMALL, users=1500, days=365.0, share_existing=1.0, weekly_amplitude=0.0,
        yearly_amplitude=0.4, yearly_peak_day=334.0,
    )  # fmt: skip
    truth = latent_rates(cfg)
    # Customers there all year have constant rates: only the season moves them.
    stay = {u for u, t in truth.items() if t["alive_until_ms"] >= cfg.end_ms}
    day_of_year = Counter(
        (e.timestamp_ms - cfg.start_ms) // DAY_MS
        for e in generate_population(cfg)
        if e.key in stay and e.value["event_type"] in ("page_view", "order_placed")
    )

    def around(day: int) -> int:
        return sum(day_of_year[d] for d in range(day - 15, day + 15))

    # December 1st against June 1st, half a year away (2024-01-01 is day 0 of
    # the period): about (1 + 0.4) / (1 - 0.4), averaged over 30 days.
    ratio = around(335) / around(152)
    assert 1.8 < ratio < 2.8, ratio


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(min_value=0, max_value=2**31 - 1),
    users=st.integers(min_value=0, max_value=15),
    days=st.floats(min_value=0.5, max_value=60.0),
    categories=st.one_of(st.none(), st.integers(min_value=1, max_value=3000)),
    weekly=st.floats(min_value=0.0, max_value=0.9),
    yearly=st.floats(min_value=0.0, max_value=0.9),
    frequent=st.floats(min_value=0.0, max_value=1.0),
)
def test_any_config_is_deterministic_and_in_order(
    seed: int,
    users: int,
    days: float,
    categories: int | None,
    weekly: float,
    yearly: float,
    frequent: float,
) -> None:
    cfg = replace(
        SMALL, seed=seed, users=users, days=days, categories=categories,
        weekly_amplitude=weekly, yearly_amplitude=yearly, share_frequent=frequent,
    )  # fmt: skip
    events = list(generate_population(cfg))
    assert list(generate_population(cfg)) == events
    assert latent_rates(cfg) == latent_rates(cfg)
    stamps = [e.timestamp_ms for e in events]
    assert stamps == sorted(stamps)
    assert all(cfg.start_ms <= t < cfg.end_ms for t in stamps)
    ids = [e.value["event_id"] for e in events]
    assert len(set(ids)) == len(ids)
