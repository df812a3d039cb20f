"""The deduplication rule (stream.core.dedup): properties over arbitrary streams of re-sends."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core import dedup
from stream.core.dedup import CLICK_MEMORY_PER_HOUR, HOUR_MS, SeenEvents, admit, admitted
from stream.core.events import Event
from tests.factories import DAY, T0, as_event, click, order

WINDOW = 24 * HOUR_MS


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Event], list[Event]]:
    """One user's distinct events in time order, and the same with re-sends mixed in.

    A re-send repeats an earlier event (same ids and timestamp) somewhere
    later, after any number of newer events; clicks are re-sent within the
    window (measured from the newest event at the time of the re-send).
    """
    n = draw(st.integers(min_value=1, max_value=40))
    gaps = draw(st.lists(st.integers(0, 3 * DAY), min_size=n, max_size=n))
    events: list[Event] = []
    ts = T0
    for i, gap in enumerate(gaps):
        ts += gap
        kind = draw(st.sampled_from(["order_placed", "order_refunded", "product_view"]))
        if kind == "product_view":
            events.append(as_event(click(ts=ts, kind=kind)))
        else:
            events.append(as_event(order(ts=ts, kind=kind, order_id=f"o{i // 2}")))
    # Distinct by the rule: an order id holds one event per type.
    keys = set()
    distinct = []
    for e in events:
        key = (e.event_type, getattr(e, "order_id", e.event_id))
        if key not in keys:
            keys.add(key)
            distinct.append(e)
    delivered = list(distinct)
    for _ in range(draw(st.integers(0, 20))):
        original = draw(st.sampled_from(distinct))
        first = delivered.index(original)
        at = draw(st.integers(first + 1, len(delivered)))
        newest = max(e.timestamp for e in delivered[:at])
        if original.event_type == "product_view" and newest - original.timestamp > WINDOW:
            continue
        delivered.insert(at, original)
    return distinct, delivered


@settings(max_examples=300, deadline=None)
@given(streams())
def test_every_re_send_within_the_rule_is_dropped_and_nothing_else(
    pair: tuple[list[Event], list[Event]],
) -> None:
    distinct, delivered = pair
    kept = list(admitted(delivered, lambda e: e.user_id, WINDOW))
    assert kept == distinct


@settings(max_examples=200, deadline=None)
@given(streams())
def test_the_memory_survives_its_encoding_at_every_step(
    pair: tuple[list[Event], list[Event]],
) -> None:
    # The worker stores the memory between batches: a round trip through the
    # record bytes after any event must decide the rest of the stream the same way.
    _, delivered = pair
    seen, latest = SeenEvents(), 0
    for event in delivered:
        copy, end = dedup.decode(b"xy" + dedup.encode(seen), 2)
        assert copy == seen and end == 2 + len(dedup.encode(seen))
        assert len(dedup.encode(seen)) == seen.encoded_size()
        assert admit(copy, event, latest, WINDOW) == admit(seen, event, latest, WINDOW)
        assert copy == seen
        latest = max(latest, event.timestamp)


@given(st.integers(0, 60), st.integers(1, 200))
def test_clicks_are_forgotten_once_the_window_has_passed(hours: int, n: int) -> None:
    seen, latest = SeenEvents(), 0
    for i in range(n):
        event = as_event(click(ts=T0 + i * HOUR_MS // 4))
        assert admit(seen, event, latest, hours * HOUR_MS)
        latest = max(latest, event.timestamp)
    # What is kept covers the window and at most an hour more: memory is
    # bounded by the click rate, not by the user's history.
    oldest = min(seen.clicks, default=latest // HOUR_MS)
    assert latest - oldest * HOUR_MS <= (hours + 1) * HOUR_MS
    assert sum(map(len, seen.clicks.values())) <= 4 * (hours + 2)


def test_orders_are_remembered_for_the_retention() -> None:
    seen, latest = SeenEvents(), 0
    first = as_event(order(ts=T0, order_id="A"))
    assert admit(seen, first, latest, WINDOW, 400 * DAY)
    for day in range(1, 400):  # a year of clicks and orders in between
        for e in (click(ts=T0 + day * DAY), order(ts=T0 + day * DAY)):
            assert admit(seen, as_event(e), latest, WINDOW, 400 * DAY)
            latest = T0 + day * DAY
    assert not admit(seen, first, latest, WINDOW, 400 * DAY)
    cancel = as_event(order(ts=T0 + 399 * DAY, order_id="A", kind="order_cancelled"))
    assert admit(seen, cancel, latest, WINDOW, 400 * DAY)
    assert not admit(seen, cancel, latest, WINDOW, 400 * DAY)
    # Seven bytes per order, whatever happened to it; the year's clicks are gone.
    assert len(seen.orders) == 400 and len(seen.clicks) <= 2
    assert seen.encoded_size() == 4 + 4 + 7 * 400 + 2 + sum(
        6 + 4 * len(d) for d in seen.clicks.values()
    )
    # A month later "A" (newest day 399 by its cancellation) is still held;
    # the orders of the first weeks are gone.
    later = as_event(order(ts=T0 + 430 * DAY))
    assert admit(seen, later, latest, WINDOW, 400 * DAY)
    assert len(seen.orders) == 372 and not admit(seen, cancel, latest, WINDOW, 400 * DAY)
    assert min(v >> 3 for v in seen.orders.values()) == (T0 + 30 * DAY) // DAY


@dataclass(frozen=True)
class Ev:
    """What the rule reads of an event: thousands per example, without pydantic."""

    event_id: str
    event_type: str
    timestamp: int
    order_id: str = ""
    user_id: str = "u1"


@st.composite
def bot_hours(draw: st.DrawFn) -> list[Ev]:
    """A bot's clicks over one or two clock hours, more than the per-hour memory
    holds in some hour, each click id distinct, with re-sends of earlier ones."""
    cap = CLICK_MEMORY_PER_HOUR
    counts = draw(st.lists(st.integers(cap - 3, cap + 150), min_size=1, max_size=2))
    clicks = [
        Ev(f"bot-{h}-{i:06d}", "product_view", T0 + h * HOUR_MS + i * 1000 // (cap + 150))
        for h, n in enumerate(counts)
        for i in range(n)
    ]
    # Interleave the hours (arrival order need not be time order).
    order_of = draw(st.permutations(range(len(clicks)))) if len(counts) > 1 else None
    delivered = [clicks[i] for i in order_of] if order_of else list(clicks)
    for _ in range(draw(st.integers(0, 30))):
        at = draw(st.integers(1, len(delivered)))
        delivered.insert(at, draw(st.sampled_from(delivered[:at])))
    return delivered


@settings(max_examples=25, deadline=None)
@given(bot_hours())
def test_click_memory_is_capped_per_hour_and_past_the_cap_clicks_count(
    delivered: list[Ev],
) -> None:
    seen, kept = SeenEvents(), []
    for event in delivered:
        if admit(seen, event, 0, WINDOW):
            kept.append(event)
    # What the rule must do, spelled out: per hour, the first CLICK_MEMORY_PER_HOUR
    # distinct clicks are remembered; a re-send of one of those is dropped, and
    # everything else is counted (a re-send of an unremembered click too).
    remembered: dict[int, list[str]] = {}
    for e in delivered:
        ids = remembered.setdefault(e.timestamp // HOUR_MS, [])
        if e.event_id not in ids and len(ids) < CLICK_MEMORY_PER_HOUR:
            ids.append(e.event_id)
    held = {i for ids in remembered.values() for i in ids}
    firsts: set[str] = set()
    expected = []
    for e in delivered:
        if e.event_id not in held or e.event_id not in firsts:
            expected.append(e)
        firsts.add(e.event_id)
    assert kept == expected
    assert all(len(d) <= CLICK_MEMORY_PER_HOUR for d in seen.clicks.values())
    assert seen.past_cap == sum(e.event_id not in held for e in delivered)
    # The cap holds the count within its two bytes: the memory still encodes.
    assert dedup.decode(dedup.encode(seen))[0] == seen
    # Training's form counts the same events.
    assert list(admitted(delivered, lambda e: e.user_id, WINDOW)) == kept


@st.composite
def order_histories(draw: st.DrawFn) -> tuple[int, list[Ev]]:
    """A retention in days and one user's orders over a longer time, with re-sends
    of any earlier event (original id, type and timestamp) at any later point."""
    days = draw(st.integers(1, 20))
    delivered: list[Ev] = []
    ts = T0
    for i in range(draw(st.integers(1, 60))):
        ts += draw(st.integers(0, 3 * DAY))
        kind = draw(st.sampled_from(["order_placed", "order_cancelled", "order_refunded"]))
        oid = f"o{draw(st.integers(0, i))}"
        if all((e.event_type, e.order_id) != (kind, oid) for e in delivered):
            delivered.append(Ev(f"e{i}", kind, ts, oid))
        if delivered and draw(st.booleans()):
            delivered.append(draw(st.sampled_from(delivered)))
    return days, delivered


@settings(max_examples=300, deadline=None)
@given(order_histories())
def test_order_memory_runs_back_a_retention_from_the_newest_order(
    case: tuple[int, list[Ev]],
) -> None:
    days, delivered = case
    memory = days * DAY
    seen, newest, counted, kept = SeenEvents(), 0, set(), []
    for e in delivered:
        first = (e.event_type, e.order_id) not in counted
        newest = max(newest, e.timestamp)
        horizon = ((newest // DAY) * DAY - memory) // DAY
        if admit(seen, e, 0, WINDOW, memory):
            kept.append(e)
            # Counted: a new event, or a re-send older than the memory, which the
            # worker never folds: it is older than the lateness bound
            # (SEGMENTER_RETENTION_DAYS too) before the partition's stream time,
            # which is at least the user's newest order.
            assert first or (e.timestamp // DAY < horizon and e.timestamp < newest - memory)
        else:
            assert not first and e.timestamp // DAY >= horizon
        counted.add((e.event_type, e.order_id))
        # Nothing older than the memory is held.
        assert all(v >> 3 >= horizon for v in seen.orders.values())
        assert dedup.decode(dedup.encode(seen))[0] == seen
        assert len(dedup.encode(seen)) == seen.encoded_size()
    assert list(admitted(delivered, lambda e: e.user_id, WINDOW, memory)) == kept


def test_orders_of_older_records_are_dated_on_read() -> None:
    # Codecs 4 and 6 kept orders as 5 bytes with no day: they are read as of
    # the day the caller gives (the user's last order), so kept a retention on.
    digest = dedup.order_digest("A")
    old = (1).to_bytes(4, "little") + ((digest << 3) | 5).to_bytes(5, "little") + bytes(2)
    seen, end = dedup.decode(b"xy" + old, 2, undated_orders_day=19_000)
    assert end == 2 + len(old) and seen.orders == {digest: 19_000 << 3 | 5}
    refund = Ev("r", "order_refunded", 19_000 * DAY, "A")
    assert not admit(seen, refund, 0, WINDOW, 30 * DAY)


def test_a_bot_hour_past_65535_clicks_is_counted_and_its_memory_stays_small() -> None:
    # The hour's count has two bytes in the encoding: uncapped, click 65,536
    # made every write of this user fail.
    seen = SeenEvents()
    clicks = [Ev(f"b{i}", "product_view", T0 + i * 40) for i in range(70_000)]
    assert all(admit(seen, e, 0, WINDOW) for e in clicks)
    assert seen.past_cap == 70_000 - CLICK_MEMORY_PER_HOUR
    assert len(dedup.encode(seen)) == seen.encoded_size() <= 4 + 2 + 6 + 4 * 2048
    assert not admit(seen, clicks[0], 0, WINDOW)  # the first ones are still remembered
    assert admit(seen, clicks[-1], 0, WINDOW)  # past the cap: counted again
