"""End to end: a real `segmenter worker` process, the real broker, real Redis.

Scripted events go in with confluent-kafka; a real consumer of
customer-segments checks what comes out.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from stream.settings import Settings
from tests.conftest import TopicReader, WorkerProcess
from tests.factories import DAY, T0, click, order
from tests.helpers import as_items, produce, snapshot, wait_applied, wait_committed

pytestmark = pytest.mark.integration


def scripted() -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for d in range(0, 84, 4):  # a big spender, every few days
        ts = T0 + d * DAY
        events += [
            click("whale", ts, "page_view", session_id=f"w{d}"),
            click("whale", ts + 10_000, session_id=f"w{d}"),
            click("whale", ts + 20_000, "add_to_cart", session_id=f"w{d}"),
            order("whale", ts + 60_000, total=1500.0),
        ]
    for d in range(0, 84, 3):  # browses a lot, never buys
        ts = T0 + d * DAY + 3_600_000
        events += [
            click("browser", ts, "page_view", session_id=f"b{d}"),
            click("browser", ts + 5_000, session_id=f"b{d}"),
            click("browser", ts + 9_000, "add_to_cart", session_id=f"b{d}"),
        ]
    events.sort(key=lambda v: v["timestamp"])
    return events


@pytest.mark.brokers("tansu", "kafka")
def test_worker_publishes_changes_dead_letters_bad_input_and_replays_idempotently(
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
    reader_factory: Callable[[str], TopicReader],
) -> None:
    settings = settings_factory()
    segments = reader_factory(settings.topic_segments)
    dlq = reader_factory(settings.topic_dlq)
    worker = worker_factory(settings)
    worker.wait_ready()

    # Wave 1: the scripted history, plus one malformed record.
    items = as_items(settings, scripted())
    items.append(
        (settings.topic_orders, b"whale", b'{"event_id": "x", "event_type": "order_placed"')
    )
    ends = produce(settings, items)
    wait_applied(settings, ends, worker)

    # Wave 2: a late, quiet user whose second visit changes nothing.
    last = T0 + 84 * DAY
    quiet = [
        click("quiet", last, "page_view", session_id="q1"),
        click("quiet", last + 1000, session_id="q1"),
    ]
    wait_applied(settings, produce(settings, as_items(settings, quiet)), worker)
    more = [click("quiet", last + 2000, "page_view", session_id="q1")]
    wait_applied(settings, produce(settings, as_items(settings, more)), worker)

    changes = segments.wait_for(
        lambda m: {"whale", "browser", "quiet"} <= {x.key().decode() for x in m}
    )
    segments.poll(2.0)  # anything late would show up now
    by_user: dict[str, list[dict[str, Any]]] = {}
    for msg in changes:
        value = orjson.loads(msg.value())
        assert msg.key().decode() == value["user_id"]
        assert set(value) >= {
            "user_id",
            "segment",
            "previous_segment",
            "probabilities",
            "model_version",
            "event_time",
            "emitted_at",
            "version",
        }
        by_user.setdefault(value["user_id"], []).append(value)

    assert by_user["whale"][-1]["segment"] == "high_value"
    assert all(c["segment"] != "high_value" for c in by_user["browser"])
    assert len(by_user["quiet"]) == 1, "a user whose segment did not change gets no message"
    for user, chain in by_user.items():
        assert chain[0]["previous_segment"] is None, user
        for before, after in itertools.pairwise(chain):
            assert after["previous_segment"] == before["segment"] != after["segment"], user
            assert after["version"] == before["version"] + 1

    bad = dlq.wait_for(lambda m: len(m) >= 1)
    assert len(bad) == 1
    headers = dict(bad[0].headers())
    assert headers["x-dlq-reason"] == b"invalid_json"
    assert bad[0].value() == items[-1][2]

    # Replay: a second consumer group reads every topic from offset 0 into the
    # same Redis state. Nothing may change, and nothing new is published.
    before = asyncio.run(snapshot(settings))
    assert worker.stop() == 0
    replay = settings_factory(group_id=settings.group_id + "-replay")
    replayer = worker_factory(replay)
    replayer.wait_ready()
    wait_committed(replay, ends, replayer)
    assert asyncio.run(snapshot(settings)) == before
    n_before = len(segments.messages)
    segments.poll(2.0)
    assert len(segments.messages) == n_before
    assert replayer.stop() == 0
