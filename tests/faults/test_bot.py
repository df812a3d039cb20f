"""A bot: 100,000 distinct product views by one user within one clock hour,
among 200 ordinary users who click and order around it.

Before the per-hour click memory was capped, its 65,536th click overflowed the
memory's encoding: every batch touching the bot failed, was split down to
single records and dead-lettered one by one, and its partition stalled for
everyone on it. Now the hour's clicks past the cap count without dedup (the
offline fold applies the same rule), nothing is dead-lettered and the cap's
metric says how many clicks were counted that way.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream.core.dedup import CLICK_MEMORY_PER_HOUR
from stream.core.events import HOUR_MS
from stream.devtools.embedded import free_port
from stream.settings import Settings
from tests.conftest import TopicReader, WorkerProcess
from tests.factories import click
from tests.faults.scenario import Sent, finish_and_account, history
from tests.helpers import produce

pytestmark = pytest.mark.integration

BOT_CLICKS = 100_000
RESENT = 50  # of the bot's first clicks (remembered) and of its last (not)


def metric(port: int, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def bot_traffic(settings: Settings) -> tuple[Sent, int]:
    """200 users' generated week, with the bot's clicks spread through it in one
    clock hour of event time; returns what to send and the bot's hour."""
    others = history(settings, users=200, days=7, seed=5)
    hour = (max(orjson.loads(v)["timestamp"] for _, _, v in others) // HOUR_MS) - 24
    key = b"bot-1"
    bot = [
        (
            settings.topic_clickstream,
            key,
            orjson.dumps(
                click(
                    "bot-1",
                    hour * HOUR_MS + i * HOUR_MS // BOT_CLICKS,
                    product_id=f"p{i}",
                    session_id="bot-session",
                )
            ),
        )
        for i in range(BOT_CLICKS)
    ]
    # Re-sends (a producer's retries, same ids and times): of the first clicks,
    # which the memory holds, and of the last, past the cap, which it cannot.
    bot += bot[:RESENT] + bot[-RESENT:]
    sent: Sent = []
    step = len(bot) // len(others) + 1
    for i, item in enumerate(others):
        sent += bot[i * step : (i + 1) * step]
        sent.append(item)
    sent += bot[len(others) * step :]
    return sent, hour


def test_a_bot_neither_stalls_its_partition_nor_loses_anyones_counts(
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
    reader_factory: Callable[[str], TopicReader],
) -> None:
    port = free_port()
    settings = settings_factory(metrics_port=port)
    sent, _ = bot_traffic(settings)
    worker = worker_factory(settings)
    worker.wait_ready()
    ends = produce(settings, sent, queue_buffering_max_messages=len(sent))

    ledger = finish_and_account(settings, sent, ends, worker, reader_factory, "a bot")
    # Everyone's state equals the offline fold of what they sent (the bot's
    # too: the same rule counts its clicks past the cap without dedup)...
    assert ledger.users == 201
    # ...nothing was dead-lettered...
    dlq = reader_factory(settings.topic_dlq)
    dlq.poll(2.0)
    assert dlq.values() == []
    assert metric(port, "segmenter_dead_letters_total") == 0
    # ...and the cap's metric counts the bot's clicks past it: the distinct
    # ones beyond the cap, and the re-sends of those (counted again).
    assert metric(port, "segmenter_click_memory_full_total") == (
        BOT_CLICKS - CLICK_MEMORY_PER_HOUR + RESENT
    )
    assert metric(port, "segmenter_events_total", outcome="duplicate") == RESENT
    assert metric(port, "segmenter_events_total", outcome="applied") == len(sent) - RESENT
