from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from model.labels import window_activity
from stream.core.events import Event, fact
from stream.core.fold import (
    CATEGORY_BITS,
    HALF_LIVES,
    UserState,
    decay,
    fold,
    fold_all,
    linear_count,
)
from stream.worker.state.store import UserRecord, decode_record, encode_record
from tests.factories import DAY, T0, as_event, click, order


def encode_state(state: UserState) -> bytes:
    """The state as the worker stores it (byte-exact)."""
    return encode_record(UserRecord(state=state))


def decode_state(data: bytes) -> UserState:
    return decode_record(data, None).state


CLICK_KINDS = ["page_view", "product_view", "search", "add_to_cart", "remove_from_cart"]


@st.composite
def user_events(draw: st.DrawFn, max_size: int = 40) -> list[Event]:
    n = draw(st.integers(min_value=1, max_value=max_size))
    out: list[Event] = []
    for _ in range(n):
        ts = T0 + draw(st.integers(min_value=0, max_value=200 * DAY))
        if draw(st.booleans()):
            kind = draw(
                st.sampled_from(
                    ["order_placed", "order_placed", "order_cancelled", "order_refunded"]
                )
            )
            total = draw(st.floats(min_value=0, max_value=5000, allow_nan=False)).__round__(2)
            out.append(as_event(order(user="u", ts=ts, total=total, kind=kind)))
        else:
            kind = draw(st.sampled_from(CLICK_KINDS))
            session = f"s{draw(st.integers(min_value=0, max_value=8))}"
            category = draw(st.sampled_from(["a", "b", "c", "d"]))
            out.append(
                as_event(click(user="u", ts=ts, kind=kind, session_id=session, category=category))
            )
    return out


def test_counts_and_sums_of_a_known_history() -> None:
    events = [
        as_event(click(ts=T0, kind="product_view", session_id="s1")),
        as_event(click(ts=T0 + 1000, kind="add_to_cart", session_id="s1")),
        as_event(order(ts=T0 + 2000, total=120.0)),
        as_event(click(ts=T0 + 5 * DAY, kind="product_view", session_id="s2")),
        as_event(order(ts=T0 + 6 * DAY, total=80.0, kind="order_refunded")),
    ]
    s = fold_all(events)
    assert (s.order_count, s.refund_count, s.cancel_count) == (1, 1, 0)
    assert s.total_spend == 120.0 and s.returned_spend == 80.0
    assert (s.product_views, s.cart_adds, s.events) == (2, 1, 5)
    assert s.session_count == 2
    assert s.first_seen == T0 and s.last_seen == T0 + 6 * DAY
    assert s.last_order_at == T0 + 2000
    # one order 6 days before last_seen, half-life 30 d
    assert math.isclose(s.decayed["orders_30d"], 2 ** (-(6 * DAY - 2000) / (30 * DAY)))


@given(user_events())
def test_fold_does_not_mutate_its_input(events: list[Event]) -> None:
    before = fold_all(events[:-1])
    snapshot = encode_state(before)
    fold(before, events[-1])
    assert encode_state(before) == snapshot


@settings(max_examples=200)
@given(user_events(), st.randoms(use_true_random=False))
def test_result_does_not_depend_on_arrival_order(events: list[Event], rnd) -> None:  # type: ignore[no-untyped-def]
    shuffled = list(events)
    rnd.shuffle(shuffled)
    a, b = fold_all(events), fold_all(shuffled)
    exact = (
        "first_seen",
        "last_seen",
        "last_order_at",
        "order_count",
        "cancel_count",
        "refund_count",
        "product_views",
        "cart_adds",
        "events",
        "categories",
    )
    for name in exact:
        assert getattr(a, name) == getattr(b, name), name
    assert math.isclose(a.total_spend, b.total_spend, rel_tol=1e-9, abs_tol=1e-6)
    for name in HALF_LIVES:
        if name == "sessions_30d":
            continue  # a session counts at its first-seen event, which order decides
        assert math.isclose(a.decayed[name], b.decayed[name], rel_tol=1e-9, abs_tol=1e-9), name


@given(user_events())
def test_fold_all_equals_step_by_step_fold(events: list[Event]) -> None:
    state: UserState | None = None
    for e in events:
        state = fold(state, e)
    assert state is not None
    assert encode_state(state) == encode_state(fold_all(events))


@given(user_events())
def test_state_codec_round_trips_exactly(events: list[Event]) -> None:
    state = fold_all(events)
    assert decode_state(encode_state(state)) == state


@given(user_events())
def test_decayed_counters_never_exceed_raw_counts(events: list[Event]) -> None:
    s = fold_all(events)
    assert s.decayed["orders_30d"] <= s.order_count + 1e-9
    assert s.decayed["orders_90d"] <= s.order_count + 1e-9
    assert s.decayed["orders_30d"] <= s.decayed["orders_90d"] + 1e-9
    assert s.decayed["views_30d"] <= s.product_views + 1e-9
    assert s.decayed["spend_30d"] <= s.total_spend + 1e-6


@given(st.integers(min_value=0, max_value=10**12), st.floats(min_value=1, max_value=365))
def test_decay_halves_at_the_half_life(value: int, half_life: float) -> None:
    assert math.isclose(decay(value, int(half_life * DAY), half_life), value / 2, rel_tol=1e-6)
    assert decay(value, -5, half_life) == value


def test_linear_count_is_close_for_small_sets() -> None:
    bitmap = 0
    import zlib

    for i in range(12):
        bitmap |= 1 << (zlib.crc32(f"category-{i}".encode()) % 64)
    assert abs(linear_count(bitmap, 64) - 12) <= 2


def test_sessions_are_counted_exactly_in_order_and_for_late_events_of_recent_sessions() -> None:
    events = []
    for k in range(30):
        for j in range(3):
            events.append(as_event(click(ts=T0 + k * DAY + j * 1000, session_id=f"s{k}")))
    # a late event of a session two sessions back is not a new session
    events.append(as_event(click(ts=T0 + 27 * DAY + 5000, session_id="s27")))
    assert fold_all(events).session_count == 30


@given(user_events())
def test_training_facts_fold_and_label_exactly_as_the_events_they_come_from(
    events: list[Event],
) -> None:
    # Training keeps compact facts (stream.core.events.fact) instead of the validated
    # models; the fold and the labels must not tell them apart.
    facts = [fact(e) for e in events]
    assert fold_all(facts) == fold_all(events)
    assert window_activity(facts) == window_activity(events)
    assert [f.user_id for f in facts] == [e.user_id for e in events]


@settings(max_examples=25)
@given(st.randoms(use_true_random=False))
def test_distinct_categories_is_the_linear_count_estimate(rnd: random.Random) -> None:
    for n in range(CATEGORY_BITS + 1):  # every bit count, at random positions
        bitmap = sum(1 << b for b in rnd.sample(range(CATEGORY_BITS), n))
        expected = round(linear_count(bitmap, CATEGORY_BITS))
        assert UserState(categories=bitmap).distinct_categories == expected
