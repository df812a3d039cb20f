"""The deduplication rule (stream.core.dedup): properties over arbitrary streams of re-sends."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core import dedup
from stream.core.dedup import HOUR_MS, SeenEvents, admit, admitted
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
    oldest = min((h for h, _ in seen.clicks), default=latest // HOUR_MS)
    assert latest - oldest * HOUR_MS <= (hours + 1) * HOUR_MS
    assert len(seen.clicks) <= 4 * (hours + 2)


def test_orders_are_remembered_for_the_users_whole_life() -> None:
    seen, latest = SeenEvents(), 0
    first = as_event(order(ts=T0, order_id="A"))
    assert admit(seen, first, latest, WINDOW)
    for day in range(1, 400):  # a year of clicks and orders in between
        for e in (click(ts=T0 + day * DAY), order(ts=T0 + day * DAY)):
            assert admit(seen, as_event(e), latest, WINDOW)
            latest = T0 + day * DAY
    assert not admit(seen, first, latest, WINDOW)
    cancel = as_event(order(ts=T0 + 401 * DAY, order_id="A", kind="order_cancelled"))
    assert admit(seen, cancel, latest, WINDOW)
    assert not admit(seen, cancel, latest, WINDOW)
    # Five bytes per order, whatever happened to it; the year's clicks are gone.
    assert len(seen.orders) == 400 and len(seen.clicks) <= 2
