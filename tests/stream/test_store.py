"""The Redis adapter against a real Redis."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.core.dedup import SeenEvents, admit, encode, order_digest
from stream.core.fold import HALF_LIVES, UserState, fold_all
from stream.redis_client import client_from_url
from stream.worker.state.keys import GROUPS
from stream.worker.state.store import (
    ConflictError,
    StateStore,
    StoreMismatch,
    UserRecord,
    UserWrite,
    decode_record,
    encode_record,
)
from tests.factories import DAY, T0, as_event, order

pytestmark = pytest.mark.integration


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_commit_then_load_round_trips_and_moves_counts_offsets_and_stream_time(
    redis_url: str, prefix: str
) -> None:
    async def scenario() -> None:
        store = StateStore.from_url(redis_url, prefix)
        try:
            loaded, st, _ = await store.load(["a", "b"])
            assert not loaded["a"].exists and st == 0
            rec = UserRecord(state=fold_all([as_event(order("a", T0, 10.0))]), segment="regular")
            rec.offsets["orders:0"] = 7
            await store.commit([UserWrite("a", rec, None)], {"orders:0": 7}, T0)
            loaded, st, _ = await store.load(["a"])
            assert loaded["a"].state.total_spend == 10.0 and loaded["a"].exists
            assert loaded["a"].offsets == {"orders:0": 7} and st == T0
            assert await store.segment_counts() == {"regular": 1}
            # a move between segments is -1 / +1, atomically with the state
            moved = loaded["a"]
            moved.segment = "high_value"
            await store.commit([UserWrite("a", moved, "regular")], {"orders:0": 9}, T0 - 5)
            assert await store.segment_counts() == {
                "high_value": 1
            }  # empty segments are not listed
            assert await store.members("high_value") == ["a"]
            assert await store.members("regular") == []
            assert await store.partition_offsets() == {"orders:0": 9}
            assert await store.stream_time() == T0  # stream time never goes back
            assert await store.scan_users() == ["a"]
        finally:
            await store.close()

    run(scenario())


def test_load_reads_a_batch_spread_over_many_buckets_in_argument_order(
    redis_url: str, prefix: str
) -> None:
    """The one-reply read: stored and unknown users interleaved, over hundreds of buckets."""

    async def scenario() -> None:
        store = StateStore.from_url(redis_url, prefix)
        try:
            stored = [f"u{i}" for i in range(400)]
            writes = []
            for i, uid in enumerate(stored):
                rec = UserRecord(state=fold_all([as_event(order(uid, T0 + i, float(i)))]))
                rec.partition = i % 4
                writes.append(UserWrite(uid, rec, None))
            times = {"orders:1": T0, "clickstream:2": T0 + 5}
            await store.commit(writes, {"orders:0": 1}, T0 + 399, partition_times=times)
            unknown = [f"new{i}" for i in range(400)]
            asked = [u for pair in zip(stored, unknown, strict=True) for u in pair]
            loaded, stream_time, ptimes = await store.load(asked)
            assert list(loaded) == asked
            assert [loaded[u].state.total_spend for u in stored] == [float(i) for i in range(400)]
            assert not any(loaded[u].exists for u in unknown)
            assert stream_time == T0 + 399 and ptimes == times
            assert len({store.bucket_key(u) for u in asked}) > 300
            assert await store.load([]) == ({}, T0 + 399, times)
        finally:
            await store.close()

    run(scenario())


def test_concurrent_writer_makes_the_whole_batch_fail_and_change_nothing(
    redis_url: str, prefix: str
) -> None:
    async def scenario() -> None:
        store = StateStore.from_url(redis_url, prefix)
        try:
            await store.commit([UserWrite("a", UserRecord(segment="regular"), None)], {}, T0)
            stale, _, _ = await store.load(["a", "b"])
            fresh, _, _ = await store.load(["a"])
            await store.commit([UserWrite("a", fresh["a"], "regular")], {}, T0)  # someone else
            stale["b"].segment = "potential"
            with pytest.raises(ConflictError):
                await store.commit(
                    [UserWrite("b", stale["b"], None), UserWrite("a", stale["a"], "regular")],
                    {"x:0": 1},
                    T0 + 1,
                )
            assert await store.get("b") is None
            assert await store.partition_offsets() == {}
            assert await store.stream_time() == T0
        finally:
            await store.close()

    run(scenario())


def test_members_page_through_every_shard_with_a_user_id_as_cursor(
    redis_url: str, prefix: str
) -> None:
    users = [f"user-{i:03d}" for i in range(230)]

    async def scenario() -> list[str]:
        store = StateStore.from_url(redis_url, prefix)
        try:
            await store.commit(
                [UserWrite(u, UserRecord(segment="regular"), None) for u in users], {}, T0
            )
            seen: list[str] = []
            after = ""
            while page := await store.members("regular", after=after, limit=17):
                seen += page
                after = page[-1]
            return seen
        finally:
            await store.close()

    seen = run(scenario())
    assert sorted(seen) == users and len(seen) == len(set(seen))


def test_schedule_lists_due_users_across_weeks_in_time_order(redis_url: str, prefix: str) -> None:
    async def scenario() -> None:
        store = StateStore.from_url(redis_url, prefix)
        try:
            writes = []
            for i, days in enumerate([1, 40, 3, 200, 15]):
                rec = UserRecord(segment="regular", partition=2, due=T0 + days * DAY)
                writes.append(UserWrite(f"u{i}", rec, None))
            await store.commit(writes, {}, T0)
            due = await store.due_for_reevaluation(2, T0 + 40 * DAY, 10)
            assert [u for u, _ in due] == ["u0", "u2", "u4", "u1"]
            assert await store.due_for_reevaluation(2, T0 + 40 * DAY, 2) == due[:2]
            assert await store.due_for_reevaluation(3, T0 + 400 * DAY, 10) == []
            # moving a user's step (and partition) moves its entry; erasing drops it
            (u1,) = (await store.load(["u1"]))[0].values()
            u1.due, u1.partition = T0 + 300 * DAY, 3
            (u3,) = (await store.load(["u3"]))[0].values()
            await store.commit(
                [
                    UserWrite("u1", u1, "regular", 2, T0 + 40 * DAY),
                    UserWrite("u3", u3, "regular", 2, T0 + 200 * DAY, erase=True),
                ],
                {},
                T0,
            )
            assert [u for u, _ in await store.due_for_reevaluation(2, T0 + 999 * DAY, 10)] == [
                "u0",
                "u2",
                "u4",
            ]
            assert [u for u, _ in await store.due_for_reevaluation(3, T0 + 999 * DAY, 10)] == ["u1"]
            assert await store.segment_counts() == {"regular": 4}
        finally:
            await store.close()

    run(scenario())


def test_stored_classes_are_bound_once_and_a_different_set_is_refused(
    redis_url: str, prefix: str
) -> None:
    async def scenario() -> None:
        store = StateStore.from_url(redis_url, prefix)
        try:
            await store.bind_classes(["a", "b"])
            await store.bind_classes(["a", "b"])
            with pytest.raises(StoreMismatch, match="SEGMENTER_REDIS_PREFIX"):
                await store.bind_classes(["b", "a"])
        finally:
            await store.close()

    run(scenario())


finite = st.floats(min_value=0, max_value=1e12, allow_nan=False)
counts = st.integers(min_value=0, max_value=2**32 - 1)
stamps = st.integers(min_value=0, max_value=2**62)


@given(
    state=st.builds(
        UserState,
        first_seen=stamps,
        last_seen=stamps,
        last_order_at=st.none() | stamps,
        first_order_at=st.none() | stamps,
        order_count=counts,
        cancel_count=counts,
        refund_count=counts,
        total_spend=finite,
        returned_spend=finite,
        product_views=counts,
        cart_adds=counts,
        events=counts,
        session_count=counts,
        recent_sessions=st.lists(st.integers(0, 2**32 - 1), max_size=4),
        categories=st.integers(0, 2**64 - 1),
        decayed=st.fixed_dictionaries({k: finite for k in HALF_LIVES}),
    ),
    segment=st.none() | st.sampled_from(["high_value", "at_risk"]),
    probs=st.lists(st.integers(0, 10_000), min_size=4, max_size=4),
    version=counts,
    offsets=st.dictionaries(
        st.tuples(st.sampled_from(["clickstream", "orders", "x" * 200]), st.integers(0, 65535)),
        st.integers(0, 2**62),
        max_size=3,
    ),
    orders=st.dictionaries(
        st.integers(0, 2**37 - 1),
        st.tuples(st.integers(0, 60_000), st.integers(1, 7)).map(lambda d: d[0] << 3 | d[1]),
        max_size=40,
    ),
    clicks=st.dictionaries(
        st.integers(0, 2**32 - 1), st.sets(st.integers(0, 2**32 - 1), min_size=1), max_size=5
    ),
    partition=st.integers(-1, 32767),
)
def test_binary_record_round_trips(  # type: ignore[no-untyped-def]
    state, segment, probs, version, offsets, orders, clicks, partition
) -> None:
    classes = ("high_value", "regular", "potential", "at_risk")
    rec = UserRecord(
        state=state,
        segment=segment,
        probabilities={c: p / 10_000 for c, p in zip(classes, probs, strict=True)},
        version=version,
        model_version="20261129T091233-abc",
        offsets={f"{t}:{p}": off for (t, p), off in offsets.items()},
        seen=SeenEvents(orders, clicks),
        scored_at=state.last_seen,
        due=state.last_seen + 1,
        partition=partition,
        rev=5,
    )
    assert decode_record(encode_record(rec), classes) == rec
    assert decode_record(encode_record(rec), None).probabilities is None
    # What codecs 2 and 3 wrote (rings of event-id digests after the offsets)
    # still reads; the rings cannot become order digests, so memory starts empty.
    head = encode_record(dataclasses.replace(rec, seen=SeenEvents()))[: -len(encode(SeenEvents()))]
    rings = bytes([2]) + bytes(12) + bytes([1]) + bytes(6)
    # Before codec 6 there was no first-order time: a buyer's first activity stands in.
    old_state = state.copy()
    old_state.first_order_at = state.first_seen if state.last_order_at is not None else None
    upgraded = dataclasses.replace(rec, state=old_state, seen=SeenEvents())
    assert decode_record(head[:4] + bytes([3]) + head[5:] + rings, classes) == upgraded
    assert decode_record(head[:4] + bytes([2]) + head[5:] + rings[:13], classes) == upgraded


def test_a_codec_6_record_dates_its_orders_by_the_users_last_order() -> None:
    # Codec 6 kept order ids without a day: read, they are dated the user's
    # last order, so they are remembered for a retention from then.
    events = [as_event(order("u1", T0 + d * DAY, 5.0, order_id=f"o{d}")) for d in (0, 9)]
    seen = SeenEvents()
    for e in events:
        assert admit(seen, e, 0, DAY)
    rec = UserRecord(state=fold_all(events), seen=seen, rev=3)
    new, digests = encode_record(rec), [order_digest("o0"), order_digest("o9")]
    legacy = len(digests).to_bytes(4, "little") + b"".join(
        ((d << 3) | 1).to_bytes(5, "little") for d in digests
    )
    # Same clicks part (none) after the orders in both layouts.
    old = new.replace(encode(seen)[:-2], legacy)
    old = old[:4] + bytes([6]) + old[5:]
    read = decode_record(old, None)
    last = (T0 + 9 * DAY) // DAY
    assert read.seen.orders == {d: last << 3 | 1 for d in digests}
    assert read.state == rec.state


def test_load_takes_thousands_of_users_in_few_buckets(redis_url: str, prefix: str) -> None:
    async def scenario() -> None:
        store = StateStore(client_from_url(redis_url), prefix, buckets=GROUPS)
        try:
            rec = UserRecord(state=fold_all([as_event(order("u9000", T0, 3.0))]))
            await store.commit([UserWrite("u9000", rec, None)], {}, T0)
            asked = [f"u{i}" for i in range(9001)]
            loaded, _, _ = await store.load(asked)
            assert [u for u in asked if loaded[u].exists] == ["u9000"]
        finally:
            await store.close()

    run(scenario())
