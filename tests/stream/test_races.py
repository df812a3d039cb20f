"""Races and replays around erasure: found in review, each pinned by a test."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
import pytest

from model.registry import load_current
from stream.settings import Settings
from stream.sinks import ConfluentSink, Outgoing
from stream.worker.app import pipeline_config
from stream.worker.pipeline import BatchProcessor, BatchResult
from stream.worker.state.store import StateStore, StoreMismatch
from tests.conftest import TopicReader, settings_env
from tests.factories import DAY, T0, click, order
from tests.helpers import feed, raw_records
from tests.stream.test_cli import segmenter

pytestmark = pytest.mark.integration


def test_a_replayed_batch_does_not_bring_back_a_user_retention_erased(
    settings_factory: Callable[..., Settings],
) -> None:
    """Worker B last committed long ago; worker A applies a batch, its sweep erases
    "gone", and A dies before Faust commits the offsets. B gets the batch again."""
    settings = settings_factory(retention_days=100)
    batch = raw_records(settings, [click("gone", T0), click("later", T0 + 500 * DAY)], start=1)

    async def scenario() -> BatchResult:
        store = StateStore.from_settings(settings)
        sink = ConfluentSink(settings.kafka_client_config())
        model = load_current(settings.model_dir)

        def worker() -> BatchProcessor:
            return BatchProcessor(store, sink, lambda: model, pipeline_config(settings))

        b, a = worker(), worker()
        try:
            await b.process(raw_records(settings, [click("early", T0 - DAY)]))
            assert (await a.process(batch)).applied == 2
            await a.reevaluate([0])  # erases "gone": 500 days idle > 100
            assert await store.get("gone") is None
            return await b.process(batch)
        finally:
            sink.close()
            await store.close()

    again = asyncio.run(scenario())
    # Judged against the partition's clock (not B's stale one): too late now.
    assert (again.applied, again.duplicates, again.dead_lettered) == (0, 1, 1)

    async def check() -> None:
        store = StateStore.from_settings(settings)
        try:
            assert await store.get("gone") is None
        finally:
            await store.close()

    asyncio.run(check())


def test_a_schedule_entry_left_by_an_expired_bucket_is_dropped_not_swept_forever(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory()
    asyncio.run(feed(settings, raw_records(settings, [order("back", T0), click("x", T0)])))

    async def expire_bucket() -> None:  # what the wall-clock backstop TTL does
        store = StateStore.from_settings(settings)
        try:
            await store._r.hdel(store.bucket_key("back"), "back")
        finally:
            await store.close()

    asyncio.run(expire_bucket())
    # The user comes back before any sweep: a new record, a new schedule entry,
    # and the old membership is dropped so the population stays exact.
    later = raw_records(settings, [click("back", T0 + 3 * DAY), click("x", T0 + 60 * DAY)], start=2)
    asyncio.run(feed(settings, later))

    async def sweep_twice() -> tuple[list[tuple[str, int]], dict[str, int]]:
        store = StateStore.from_settings(settings)
        sink = ConfluentSink(settings.kafka_client_config())
        model = load_current(settings.model_dir)
        proc = BatchProcessor(store, sink, lambda: model, pipeline_config(settings))
        try:
            await proc.reevaluate([0])
            second = await proc.reevaluate([0])
            assert second.records == 0 and second.users == 0  # nothing left due
            return (
                await store.due_for_reevaluation(0, T0 + 9999 * DAY, 100),
                await store.segment_counts(),
            )
        finally:
            sink.close()
            await store.close()

    due, counts = asyncio.run(sweep_twice())
    assert sorted(u for u, _ in due) == ["back", "x"]  # one entry each
    assert sum(counts.values()) == 2


class ForgetMidBatch:
    """A sink that erases ``user`` (as `segmenter forget` would) while the batch
    publishes its first change for them: between the batch's read and commit."""

    def __init__(self, settings: Settings, user: str) -> None:
        self._inner = ConfluentSink(settings.kafka_client_config())
        self._settings = settings
        self._user = user.encode()
        self.fired = False

    def publish(self, records: Sequence[Outgoing]) -> Awaitable[Any]:
        sent = self._inner.publish(records)
        if self.fired or not any(r.key == self._user and r.value is not None for r in records):
            return sent
        self.fired = True

        async def then_forget() -> Any:
            out = await sent
            store = StateStore.from_settings(self._settings)
            try:
                assert await store.forget(self._user.decode())
            finally:
                await store.close()
            return out

        return then_forget()

    def close(self) -> None:
        self._inner.close()


def test_a_user_erased_mid_batch_gets_a_tombstone_after_the_changes_that_did_not_commit(
    settings_factory: Callable[..., Settings], reader_factory: Callable[[str], TopicReader]
) -> None:
    settings = settings_factory()
    asyncio.run(feed(settings, raw_records(settings, [click("erin", T0)])))
    sink = ForgetMidBatch(settings, "erin")
    heavy = [order("erin", T0 + d * 1000, total=900.0) for d in range(1, 6)]
    try:
        result = asyncio.run(feed(settings, raw_records(settings, heavy, start=1), sink=sink))
    finally:
        sink.close()
    assert sink.fired and result.attempts == 2
    msgs = reader_factory(settings.topic_segments).wait_for(
        lambda m: any(x.value() is None for x in m) and orjson.loads(m[-1].value() or b"{}")
    )
    erin = [m.value() for m in msgs if m.key() == b"erin"]
    cut = len(erin) - 1 - erin[::-1].index(None)  # the last tombstone
    after = [orjson.loads(v) for v in erin[cut + 1 :]]
    # After the tombstone: the re-run's changes, from a fresh record, version 1 on.
    assert after and [c["version"] for c in after] == list(range(1, len(after) + 1))

    async def check() -> None:
        store = StateStore.from_settings(settings)
        try:
            rec = await store.get("erin")
            assert rec is not None and rec.state.order_count == 5 and rec.state.events == 5
            assert rec.version == after[-1]["version"]
        finally:
            await store.close()

    asyncio.run(check())


def test_state_stored_for_other_classes_stops_a_worker_at_start_up_and_a_batch_before_publishing(
    settings_factory: Callable[..., Settings], reader_factory: Callable[[str], TopicReader]
) -> None:
    settings = settings_factory()

    async def bind_other() -> None:
        store = StateStore.from_settings(settings)
        try:
            await store.bind_classes(["vip", "churned"])
        finally:
            await store.close()

    asyncio.run(bind_other())
    out = segmenter("worker", env=settings_env(settings), timeout=60)
    assert out.returncode != 0
    assert "SEGMENTER_REDIS_PREFIX" in out.stderr + out.stdout

    # A processor that got past start-up (Redis was down then) refuses before
    # publishing anything, and the error leaves the batch unapplied.
    with pytest.raises(StoreMismatch):
        asyncio.run(feed(settings, raw_records(settings, [order("u", T0, total=999.0)])))
    assert reader_factory(settings.topic_segments).poll(2.0) == []
