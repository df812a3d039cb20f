"""The clock of a partition number across its input topics (stream.core.clock).

The property tests pin the rule; the integration test feeds a real Redis and
broker the interleaving that once published a steady buyer `at_risk` while
their later orders were still unread (a flaky live test found it: the
clickstream partition had run 60 days of event time ahead of the orders one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from model.registry import load_current
from stream.core.clock import partition_clocks, partition_of, two_topic_clock
from stream.core.events import iso
from stream.settings import Settings
from stream.sinks import ConfluentSink
from stream.worker.app import pipeline_config
from stream.worker.pipeline import BatchProcessor
from stream.worker.records import RawRecord
from stream.worker.state.store import StateStore
from tests.factories import DAY, T0, click, order

TPS = [f"{topic}:{p}" for topic in ("clickstream", "orders") for p in range(3)]
times_st = st.dictionaries(st.sampled_from(TPS), st.integers(0, 10**13))
unread_st = st.sets(st.sampled_from(TPS))


@given(times_st)
def test_with_nothing_unread_the_clock_is_the_largest_time_applied(times: dict[str, int]) -> None:
    clocks = partition_clocks(times, ())
    for p in {partition_of(tp) for tp in times}:
        assert clocks[p] == max(t for tp, t in times.items() if partition_of(tp) == p)
    assert set(clocks) == {partition_of(tp) for tp in times}


@given(times_st, unread_st)
def test_the_clock_never_passes_a_topic_partition_with_records_to_read(
    times: dict[str, int], unread: set[str]
) -> None:
    clocks = partition_clocks(times, unread)
    for tp in unread:
        if partition_of(tp) in clocks:
            assert clocks[partition_of(tp)] <= times.get(tp, 0)
    for p, t in clocks.items():
        assert t <= max(v for tp, v in times.items() if partition_of(tp) == p)


@given(times_st, unread_st, st.sampled_from(TPS), st.integers(0, 10**12))
def test_applying_more_never_moves_the_clock_back(
    times: dict[str, int], unread: set[str], tp: str, later: int
) -> None:
    before = partition_clocks(times, unread)
    after = partition_clocks({**times, tp: times.get(tp, 0) + later}, unread)
    for p, t in before.items():
        assert after[p] >= t
    # ... nor does reading a topic-partition to its end.
    drained = partition_clocks(times, unread - {tp})
    for p, t in before.items():
        assert drained[p] >= t


@given(st.integers(0, 10**13), st.integers(0, 10**13), st.booleans(), st.integers(0, 3))
def test_the_two_topic_form_is_the_general_rule(
    own: int, other: int, other_unread: bool, p: int
) -> None:
    # The worker asks the reduced form before every event of a partition read
    # from two topics; it must agree with the rule the sweep uses.
    mine, theirs = f"clickstream:{p}", f"orders:{p}"
    unread = {mine, theirs} if other_unread else {mine}
    general = partition_clocks({mine: own, theirs: other}, unread)[p]
    assert two_topic_clock(own, other, other_unread) == general


def _records(topic: str, values: list[dict[str, Any]]) -> list[RawRecord]:
    return [
        RawRecord(topic, 0, i, v["user_id"].encode(), orjson.dumps(v)) for i, v in enumerate(values)
    ]


@pytest.mark.integration
def test_a_buyer_is_not_judged_inactive_while_their_orders_wait_behind_the_clickstream(
    settings_factory: Callable[..., Settings],
) -> None:
    """Ten orders over 90 days; the clickstream of partition 0 is read to day 120
    while only the first four orders are: nothing may call the buyer inactive
    before their last order, and at_risk comes only after it."""
    settings = settings_factory()
    orders = [order("buyer", T0 + d * DAY, 500.0) for d in range(0, 100, 10)]
    clicks = [click(f"other-{d}", T0 + d * DAY, "page_view") for d in range(0, 121, 3)]
    order_records = _records(settings.topic_orders, orders)
    click_records = _records(settings.topic_clickstream, clicks)
    ends = {
        f"{settings.topic_orders}:0": len(orders),
        f"{settings.topic_clickstream}:0": len(clicks),
    }

    async def scenario() -> list[dict[str, Any]]:
        store = StateStore.from_settings(settings)
        sink = ConfluentSink(settings.kafka_client_config())
        model = load_current(settings.model_dir)
        proc = BatchProcessor(
            store, sink, lambda: model, pipeline_config(settings), highwater=ends.get
        )
        try:
            changes = []
            # The whole clickstream and four orders, then a sweep; then the rest.
            first = await proc.process([*click_records, *order_records[:4]])
            changes += first.changes + (await proc.reevaluate([0])).changes
            second = await proc.process(order_records[4:])
            changes += second.changes + (await proc.reevaluate([0])).changes
            return [c for c in changes if c["user_id"] == "buyer"]
        finally:
            sink.close()
            await store.close()

    path = asyncio.run(scenario())
    last_order = orders[-1]["timestamp"]
    steps = [(c["segment"], c["trigger"], c["event_time"]) for c in path]
    assert path, "the buyer was never published"
    for change in path:
        if change["trigger"] == "inactivity":
            at = change["event_time"]
            assert at > iso(last_order), steps
    assert path[-1]["segment"] == "at_risk", steps  # the stream went 30 days past it
