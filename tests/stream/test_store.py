"""The Redis adapter against a real Redis."""

from __future__ import annotations

import asyncio

import pytest

from stream.fold import fold_all
from stream.store import ConflictError, StateStore, UserRecord, UserWrite
from tests.factories import T0, as_event, order

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
            assert loaded["a"].state.total_spend == 10.0 and loaded["a"].rev == 1
            assert loaded["a"].offsets == {"orders:0": 7} and st == T0
            assert await store.segment_counts() == {"regular": 1}
            # a move between segments is -1 / +1, atomically with the state
            moved = loaded["a"]
            moved.segment = "high_value"
            await store.commit([UserWrite("a", moved, "regular")], {"orders:0": 9}, T0 - 5)
            assert await store.segment_counts() == {"regular": 0, "high_value": 1}
            assert await store.members("high_value") == ["a"]
            assert await store.members("regular") == []
            assert await store.partition_offsets() == {"orders:0": 9}
            assert await store.stream_time() == T0  # stream time never goes back
            assert await store.scan_users() == ["a"]
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
