"""The worker's cache of the records it committed (stream.worker.state.record_cache).

A cached record must be exactly what Redis would give back, and never be
trusted over Redis: a record anyone else wrote, or erased, is read from Redis.
The worker's output with and without the cache is compared in
tests/stream/test_pipeline.py (the batch-cut property)."""

from __future__ import annotations

import asyncio
import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream import metrics
from stream.core.dedup import SeenEvents
from stream.core.fold import UserState, fold_all
from stream.worker.state.record_cache import MAX_STORED_BYTES, RecordCache
from stream.worker.state.record_codec import as_stored, next_rev
from stream.worker.state.store import (
    StateStore,
    UserRecord,
    UserWrite,
    decode_record,
    encode_record,
)
from tests.factories import DAY, T0, as_event, click, order

CLASSES = ("high_value", "regular", "potential", "at_risk")


def _reads(outcome: str) -> float:
    return metrics.STATE_CACHE_READS.labels(outcome)._value.get()


@given(
    spends=st.lists(st.floats(0.01, 5_000), min_size=1, max_size=6),
    clicks=st.integers(0, 6),
    probs=st.none() | st.lists(st.floats(0, 1), min_size=4, max_size=4),
    past_cap=st.integers(0, 50),
    rev=st.integers(0, 2**32 - 1),
    segment=st.none() | st.sampled_from(CLASSES),
    audiences=st.lists(st.sampled_from(["vip", "lapsed", "cart-é"]), unique=True).map(sorted),
    erased_at=st.sampled_from([0, T0 - DAY]),
    version=st.integers(0, 2**32 - 1),
)
def test_a_record_kept_is_what_decoding_its_stored_bytes_gives(
    spends: list[float],
    clicks: int,
    probs: list[float] | None,
    past_cap: int,
    rev: int,
    segment: str | None,
    audiences: list[str],
    erased_at: int,
    version: int,
) -> None:
    events = [as_event(order("u", T0 + i * DAY, s)) for i, s in enumerate(spends)]
    events += [as_event(click("u", T0 + i * 3_600_000)) for i in range(clicks)]
    rec = UserRecord(
        state=fold_all(sorted(events, key=lambda e: e.timestamp)),
        segment=segment,
        probabilities=None if probs is None else dict(zip(CLASSES, probs, strict=True)),
        seen=SeenEvents({1: 8 | 1, 9: 16 | 2}, {5: {7}, 3: {1, 2}}, past_cap=past_cap),
        offsets={"orders:3": 17, "clickstream:3": 5},
        rev=rev,
        version=version,
        model_version="20261207T000000-abc",
        audiences=tuple(audiences),
        audience_version=version,
        erased_at=erased_at,
    )
    stored = next_rev(rev)
    expected = decode_record(encode_record(rec, rev=stored), CLASSES)
    as_stored(rec, stored)
    assert rec == expected
    assert rec.seen.past_cap == expected.seen.past_cap == 0  # not compared by ==
    assert encode_record(rec) == encode_record(expected)


def test_the_cache_keeps_the_most_recently_committed_small_records_and_drops_erased_users() -> None:
    cache = RecordCache(2)
    a, b, c = UserRecord(), UserRecord(), UserRecord()
    cache.keep([("a", a, 1, 300), ("b", b, 1, 300)])
    cache.keep([("c", c, 1, 300)])
    assert len(cache) == 2
    assert cache.take(["a", "b", "c"]) == {"b": b, "c": c}
    assert len(cache) == 0  # taken out: a failing batch leaves nothing behind
    cache.keep([("a", a, 3, 300)])
    cache.keep([("a", a, 0, 0)])  # erased
    assert cache.take(["a"]) == {}
    cache.keep([("a", a, 3, MAX_STORED_BYTES + 1)])  # a bot's click memory: from Redis
    assert len(cache) == 0
    off = RecordCache(0)
    off.keep([("a", a, 1, 300)])
    assert len(off) == 0


@pytest.mark.integration
def test_a_batch_reads_its_committed_users_from_the_cache_and_the_rest_from_redis(
    redis_url: str, prefix: str
) -> None:
    async def scenario() -> None:
        store = StateStore.from_url(redis_url, prefix, cache_users=100)
        try:
            rec = UserRecord(state=fold_all([as_event(order("a", T0, 10.0))]), segment="regular")
            await store.commit([UserWrite("a", rec, None)], {"orders:0": 7}, T0)
            hits, misses = _reads("hit"), _reads("miss")
            loaded, stream_time, _ = await store.load(["a", "b"])
            assert (_reads("hit") - hits, _reads("miss") - misses) == (1, 1)
            assert loaded["a"] is rec and stream_time == T0
            assert loaded["a"] == await store.get("a")
            assert not loaded["b"].exists
            # Taken out while the batch holds it: a second read goes to Redis.
            again, _, _ = await store.load(["a"])
            assert again["a"] is not rec and again["a"] == rec
        finally:
            await store.close()

    asyncio.run(scenario())


@pytest.mark.integration
def test_reads_with_the_cache_empty_count_as_misses_and_the_apis_not_at_all(
    redis_url: str, prefix: str
) -> None:
    """After a rebalance the cache is empty: the hit rate must show it, not go quiet."""

    async def scenario() -> None:
        store = StateStore.from_url(redis_url, prefix, cache_users=100)
        try:
            hits, misses = _reads("hit"), _reads("miss")
            await store.load(["a", "b"])
            assert (_reads("hit") - hits, _reads("miss") - misses) == (0, 2)
            await store.load(["a"], cached=False)  # the read API's
            assert (_reads("hit") - hits, _reads("miss") - misses) == (0, 2)
        finally:
            await store.close()

    asyncio.run(scenario())


@pytest.mark.integration
def test_a_record_someone_else_wrote_since_is_read_from_redis(redis_url: str, prefix: str) -> None:
    async def scenario() -> None:
        ours = StateStore.from_url(redis_url, prefix, cache_users=100)
        other = StateStore.from_url(redis_url, prefix)  # the next owner, in a rebalance
        try:
            await ours.commit([UserWrite("a", UserRecord(segment="regular"), None)], {}, T0)
            theirs, _, _ = await other.load(["a"])
            theirs["a"].segment = "high_value"
            await other.commit([UserWrite("a", theirs["a"], "regular")], {}, T0)
            hits, misses = _reads("hit"), _reads("miss")
            fresh, _, _ = await ours.load(["a"])
            assert (_reads("hit") - hits, _reads("miss") - misses) == (0, 1)
            assert fresh["a"].segment == "high_value"
            assert fresh["a"] == await ours.get("a")
            await ours.commit([UserWrite("a", fresh["a"], "high_value")], {}, T0)
            again, _, _ = await ours.load(["a"])
            assert again["a"] is fresh["a"] and again["a"].rev == (await ours.get("a")).rev  # type: ignore[union-attr]
        finally:
            await ours.close()
            await other.close()

    asyncio.run(scenario())


@pytest.mark.integration
def test_a_user_erased_elsewhere_is_not_brought_back_from_the_cache(
    redis_url: str, prefix: str
) -> None:
    async def scenario() -> None:
        key = b"k" * 32
        ours = StateStore.from_url(redis_url, prefix, erasure_key=key, cache_users=100)
        other = StateStore.from_url(redis_url, prefix, erasure_key=key)  # `segmenter forget`
        try:
            state = fold_all([as_event(order("a", T0, 10.0))])
            await ours.commit([UserWrite("a", UserRecord(state=state), None)], {}, T0)
            assert await other.forget("a", now_ms=T0 + DAY, keep_ms=30 * DAY)
            loaded, _, _ = await ours.load(["a"])
            assert not loaded["a"].exists and loaded["a"].erased_at == T0 + DAY
        finally:
            await ours.close()
            await other.close()

    asyncio.run(scenario())


@pytest.mark.integration
def test_a_read_outside_batches_leaves_the_cache_alone(redis_url: str, prefix: str) -> None:
    async def scenario() -> None:
        store = StateStore.from_url(redis_url, prefix, cache_users=100)
        try:
            rec = UserRecord(state=fold_all([as_event(order("a", T0, 10.0))]))
            await store.commit([UserWrite("a", rec, None)], {}, T0)
            api, _, _ = await store.load(["a"], cached=False)  # the read API's
            assert api["a"] is not rec and api["a"] == rec
            batch, _, _ = await store.load(["a"])
            assert batch["a"] is rec
        finally:
            await store.close()

    asyncio.run(scenario())


@pytest.mark.integration
def test_erasing_through_the_store_drops_the_cached_record(redis_url: str, prefix: str) -> None:
    async def scenario() -> None:
        store = StateStore.from_url(redis_url, prefix, cache_users=100)
        try:
            rec = UserRecord(state=fold_all([as_event(order("a", T0, 10.0))]))
            await store.commit([UserWrite("a", copy.deepcopy(rec), None)], {}, T0)
            assert await store.forget("a")
            loaded, _, _ = await store.load(["a"])
            assert not loaded["a"].exists
        finally:
            await store.close()

    asyncio.run(scenario())


def test_the_record_layout_is_byte_for_byte_what_earlier_releases_wrote() -> None:
    """The encoder is tuned for speed (memoised strings, cached packers); the bytes
    it writes are a stored format and must not move (hex from the encoder before)."""
    s = UserState(
        first_seen=1_700_000_000_000,
        last_seen=1_700_086_400_000,
        last_order_at=1_700_086_400_000,
        first_order_at=1_700_000_000_000,
        order_count=3,
        total_spend=129.5,
        events=11,
        session_count=2,
        recent_sessions=[7, 4_000_000_000],
        categories=0b1011,
    )
    s.decayed = {k: 0.5 * i for i, k in enumerate(s.decayed)}
    rec = UserRecord(
        state=s,
        segment="regular",
        probabilities=dict(zip(CLASSES, [0.1234, 0.5, 0.3766, 0.0], strict=True)),
        version=4,
        model_version="20261207T000000-abc",
        offsets={"orders:3": 17, "clickstream:12": 90_000},
        seen=SeenEvents({123: (19_675 << 3) | 1}, {472_000: {5, 9}}),
        scored_at=1_700_086_400_000,
        due=1_702_678_400_000,
        partition=3,
        rev=77,
        erased_at=1_600_000_000_000,
        audiences=("lapsed", "vip"),
        audience_version=2,
    )
    golden = bytes.fromhex(
        "4d000000070068e5cf8b01000000c40bd58b01000000c40bd58b0100000300000000000000000000000000000000306040000000000000000000000000000000000b000000020000000b000000000000000000000000000000000000000000e03f000000000000f03f000000000000f83f0000000000000040000000000000044000000000000008400400000000c40bd58b010000008c8a6f8c0100000300020700000000286bee07726567756c6172133230323631323037543030303030302d61626304d2048813b60e000002066f7264657273030011000000000000000b636c69636b73747265616d0c00905f01000000000001000000db4c0000d90300000000000100c03307000200050000000900000002066c617073656403766970020000000068e5cf8b01000000806e8774010000"
    )
    assert encode_record(rec) == encode_record(rec) == golden  # twice: memoised the same
    assert decode_record(golden, CLASSES) == rec
