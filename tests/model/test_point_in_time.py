"""Offline training data and the live worker agree; exported files round-trip."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest

from model.features import vector
from model.training.dataset import Examples, build_examples, sort_events
from model.training.sources import decode_records
from stream.core.fold import DAY_MS
from stream.settings import Settings
from stream.training.export import export_records, read_export
from stream.training.replay import replay_topics
from stream.worker.state.store import StateStore
from tests.conftest import WorkerProcess
from tests.faults.scenario import history
from tests.helpers import produce, wait_applied

pytestmark = pytest.mark.integration


def test_offline_features_at_t_equal_what_the_worker_holds_after_streaming_up_to_t(
    settings_factory: Callable[..., Settings], worker_factory: Callable[[Settings], WorkerProcess]
) -> None:
    settings = settings_factory()
    sent = history(settings, users=80, days=90, seed=8)
    first = decode_records(
        sent, clickstream_topic=settings.topic_clickstream, orders_topic=settings.topic_orders
    ).events
    cutoff = min(e.timestamp for e in first) + 60 * DAY_MS
    upto = [r for r, e in zip(sent, first, strict=True) if e.timestamp <= cutoff]
    # At-least-once delivery: a producer retry re-sends its last few records
    # under new offsets. The worker skips them by event_id; training must too.
    delivered: list[tuple[str, bytes | None, bytes]] = []
    for i, record in enumerate(upto, 1):
        delivered.append(record)
        if i % 50 == 0:
            delivered += upto[i - 5 : i]
    assert len(delivered) > len(upto)
    decoded = decode_records(
        delivered, clickstream_topic=settings.topic_clickstream, orders_topic=settings.topic_orders
    )
    events = sort_events(decoded.events)
    assert len(events) == len(upto) < len(decoded.events)

    worker = worker_factory(settings)
    worker.wait_ready()
    wait_applied(settings, produce(settings, delivered), worker)
    offline = build_examples(events, [cutoff], horizon_ms=30 * DAY_MS)

    async def live_vectors() -> dict[str, np.ndarray]:
        store = StateStore.from_settings(settings)
        try:
            out = {}
            for user in offline.users:
                rec = await store.get(user)
                assert rec is not None, user
                out[user] = vector(rec.state, cutoff)
            return out
        finally:
            await store.close()

    live = asyncio.run(live_vectors())
    assert len(live) == len(offline.users) > 50
    for row, user in zip(offline.x, offline.users, strict=True):
        np.testing.assert_allclose(live[user], row, rtol=1e-9, atol=1e-12, err_msg=user)
    assert worker.stop() == 0


def test_export_then_train_from_the_file_gives_the_same_examples_as_the_topics(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory()
    sent = history(settings, users=60, days=150, seed=9)
    produce(settings, sent)
    topics = list(settings.input_topics)

    def examples(records: Iterable[tuple[str, bytes | None, bytes | None]]) -> Examples:
        events = sort_events(
            decode_records(
                records,
                clickstream_topic=settings.topic_clickstream,
                orders_topic=settings.topic_orders,
            ).events
        )
        cutoffs = [events[0].timestamp + d * DAY_MS for d in (40, 60, 80)]
        return build_examples(events, cutoffs, horizon_ms=30 * DAY_MS)

    from_topics = examples(replay_topics(settings.kafka_client_config(), topics))
    for suffix in ("jsonl", "parquet"):
        out = tmp_path / f"events.{suffix}"
        result = export_records(
            replay_topics(settings.kafka_client_config(), topics), out, since_ms=None, until_ms=None
        )
        assert result.written == len(sent) and result.invalid == 0
        from_file = examples(read_export(out))
        assert from_file.users == from_topics.users
        np.testing.assert_array_equal(from_file.x, from_topics.x)
        np.testing.assert_array_equal(from_file.y, from_topics.y)
