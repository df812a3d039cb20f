"""The batch processor against a real Redis and a real broker (no Faust)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.registry import load_current
from stream.settings import Settings
from stream.sinks import ConfluentSink
from stream.worker.app import pipeline_config
from stream.worker.pipeline import BatchProcessor
from stream.worker.records import RawRecord
from stream.worker.state.store import StateStore, encode_record
from tests.conftest import TopicReader
from tests.factories import DAY, T0, click, order
from tests.helpers import raw_records

pytestmark = pytest.mark.integration
NOW = T0 + 400 * DAY


async def run_batches(  # type: ignore[no-untyped-def]
    settings: Settings, batches: list[list[RawRecord]], cache: bool = False
):
    store = StateStore.from_settings(settings, cache=cache)
    sink = ConfluentSink(settings.kafka_client_config())
    model = load_current(settings.model_dir)
    proc = BatchProcessor(
        store, sink, lambda: model, pipeline_config(settings), clock_ms=lambda: NOW
    )
    try:
        results = [await proc.process(b) for b in batches]
        users = sorted(await store.scan_users())
        # rev=0: the revision counts commits, which depend on the batching
        snapshot = {u: encode_record(await store.get(u), rev=0) for u in users}  # type: ignore[arg-type]
        return results, snapshot, await store.segment_counts()
    finally:
        sink.close()
        await store.close()


def big_spender(user: str) -> list[dict]:  # type: ignore[type-arg]
    events = []
    for d in range(0, 90, 6):
        ts = T0 + d * DAY
        events += [
            click(user, ts, "page_view"),
            click(user, ts + 1000),
            click(user, ts + 2000, "add_to_cart"),
        ]
        events.append(order(user, ts + 3000, total=900.0))
    return events


def test_redelivered_batch_is_a_no_op_for_state(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory()
    batch = raw_records(settings, [*big_spender("whale"), click("browser", T0 + 80 * DAY)])
    (first, again), _snapshot, counts = asyncio.run(run_batches(settings, [batch, batch]))
    assert first.applied == len(batch) and first.duplicates == 0
    assert again.applied == 0 and again.duplicates == len(batch)
    assert again.changes == []
    assert sum(counts.values()) == 2


@pytest.mark.parametrize("burst_of", ["orders", "clicks"])
def test_a_resent_event_is_recognised_after_a_burst_of_either_topic(
    settings_factory: Callable[..., Settings], burst_of: str
) -> None:
    """The two topics are read at different paces: a fetch can apply many of a
    user's orders between a click and its re-send, and the other way round
    (once found by a flaky fault test, when the memory was a ring of 8)."""
    settings = settings_factory()
    if burst_of == "orders":
        event = click("u", T0 + 1000)
        burst = [order("u", T0 + 2000 + i, total=10.0) for i in range(40)]
    else:
        event = order("u", T0 + 1000, total=10.0)
        burst = [click("u", T0 + 2000 + i) for i in range(40)]
    first = raw_records(settings, [event, *burst])
    resent = raw_records(settings, [event], start=100)
    (_, again), snapshot, _ = asyncio.run(run_batches(settings, [first, resent]))
    assert (again.applied, again.duplicates) == (0, 1)
    from stream.worker.state.store import decode_record

    assert decode_record(snapshot["u"], None).state.events == 1 + len(burst)


def test_re_sent_orders_are_recognised_after_any_number_of_newer_events(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory()
    values = big_spender("whale")
    orders = [v for v in values if v["event_type"].startswith("order_")]
    assert len(orders) >= 10 and len(values) > 3 * len(orders)
    once = raw_records(settings, values)
    # A producer re-sends every order of the user's history under new
    # offsets, after all their newer events, and clicks of the last hours.
    last = max(v["timestamp"] for v in values)
    recent_clicks = [
        v for v in values if "order_id" not in v and v["timestamp"] > last - 20 * 3_600_000
    ]
    again = orders + recent_clicks
    resent = raw_records(settings, again, start=len(values))
    (_, second), with_dupes, _ = asyncio.run(run_batches(settings, [once, resent]))
    assert second.applied == 0 and second.duplicates == len(again)

    clean = settings_factory(redis_prefix=settings.redis_prefix + "-clean")
    _, without, _ = asyncio.run(run_batches(clean, [once]))
    # identical features; only the offset marks differ (they moved past the resend)
    from stream.worker.state.store import decode_record

    a, b = decode_record(with_dupes["whale"], None), decode_record(without["whale"], None)
    assert a.state == b.state and a.segment == b.segment and a.version == b.version
    assert a.state.order_count == sum(v["event_type"] == "order_placed" for v in values)
    asyncio.run(_drop(clean))


async def _drop(settings: Settings) -> None:
    store = StateStore.from_settings(settings)
    await store.delete_prefix()
    await store.close()


def test_bad_records_go_to_the_dlq_with_reason_and_original_bytes(
    settings_factory: Callable[..., Settings], reader_factory: Callable[[str], TopicReader]
) -> None:
    settings = settings_factory()
    good = raw_records(settings, [click("u1", T0)])
    bad = [
        RawRecord(settings.topic_clickstream, 1, 5, b"u2", b"{not json"),
        RawRecord(settings.topic_orders, 2, 9, b"u3", orjson.dumps(order("u3", T0, total=-5))),
        RawRecord(settings.topic_orders, 2, 10, b"other", orjson.dumps(order("u4", T0))),
    ]
    (result,), snapshot, _ = asyncio.run(run_batches(settings, [good + bad]))
    assert result.applied == 1 and result.dead_lettered == 3
    assert list(snapshot) == ["u1"]
    msgs = reader_factory(settings.topic_dlq).wait_for(lambda m: len(m) >= 3)
    by_offset = {int(dict(m.headers())["x-source-offset"]): m for m in msgs}
    assert by_offset[5].value() == b"{not json" and by_offset[5].key() == b"u2"
    reasons = {o: dict(m.headers())["x-dlq-reason"].decode() for o, m in by_offset.items()}
    assert reasons == {5: "invalid_json", 9: "schema", 10: "key_mismatch"}
    assert dict(by_offset[9].headers())["x-source-topic"].decode() == settings.topic_orders


def test_changes_are_published_only_when_the_segment_changes(
    settings_factory: Callable[..., Settings], reader_factory: Callable[[str], TopicReader]
) -> None:
    settings = settings_factory()
    history = big_spender("whale")
    batches = [raw_records(settings, [v], start=i) for i, v in enumerate(history)]
    results, _snapshot, _ = asyncio.run(run_batches(settings, batches))
    changes = [c for r in results for c in r.changes]
    assert changes, "a first assignment is always a change"
    assert changes[0]["previous_segment"] is None
    for before, after in itertools.pairwise(changes):
        assert after["previous_segment"] == before["segment"] != after["segment"]
        assert after["version"] == before["version"] + 1
    assert changes[-1]["segment"] == "high_value"
    published = reader_factory(settings.topic_segments).wait_for(lambda m: len(m) >= len(changes))
    assert [orjson.loads(m.value()) for m in published] == changes


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cuts=st.sets(st.integers(min_value=1, max_value=200), max_size=30), cached=st.booleans())
def test_changes_and_state_do_not_depend_on_where_batches_are_cut(
    settings_factory: Callable[..., Settings], cuts: set[int], cached: bool
) -> None:
    """Every event is scored in order, so a crash-and-replay that cuts the stream
    differently re-publishes the very same changes (same version, same content).
    The cut-up run reads its users back from the worker's cache of what it
    committed (``cached``) or from Redis: the same either way."""
    base = settings_factory()
    history = sorted(
        big_spender("whale")
        + big_spender("crab")[::3]
        + [click("drifter", T0 + d * DAY, "page_view") for d in range(0, 200, 9)],
        key=lambda v: v["timestamp"],
    )
    all_records = raw_records(base, history)
    bounds = [0, *sorted(c for c in cuts if c < len(all_records)), len(all_records)]
    cut_up = [all_records[a:b] for a, b in itertools.pairwise(bounds)]

    def strip(results):  # type: ignore[no-untyped-def]
        # per user, in version order: the order across users is the batch's business
        changes = sorted(
            (c for r in results for c in r.changes), key=lambda c: (c["user_id"], c["version"])
        )
        return [{k: v for k, v in c.items() if k != "emitted_at"} for c in changes]

    one = settings_factory(redis_prefix=f"{base.redis_prefix}-one")
    many = settings_factory(redis_prefix=f"{base.redis_prefix}-many-{len(bounds)}")
    whole, snap_whole, counts_whole = asyncio.run(run_batches(one, [all_records]))
    pieces, snap_pieces, counts_pieces = asyncio.run(run_batches(many, cut_up, cached))
    try:
        assert strip(pieces) == strip(whole)
        assert snap_pieces == snap_whole and counts_pieces == counts_whole
    finally:
        asyncio.run(_drop(one))
        asyncio.run(_drop(many))
