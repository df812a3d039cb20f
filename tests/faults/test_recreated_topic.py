"""An input topic deleted and recreated under the same name: its offsets start at
0 again, and the users' offset marks from the old topic must not swallow the
new topic's records as redeliveries (they were counted as ``duplicate``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from stream.settings import Settings
from stream.topics import ensure_topics
from tests.conftest import TopicReader, WorkerProcess
from tests.factories import DAY, T0, click
from tests.faults.accounting import account
from tests.helpers import as_items, produce, wait_applied

pytestmark = pytest.mark.integration

USERS = 10


def clicks(day: int, per_user: int) -> list[dict[str, Any]]:
    return [
        click(f"r{u}", T0 + day * DAY + u * 60_000 + i * 1000)
        for u in range(USERS)
        for i in range(per_user)
    ]


def recreate(settings: Settings, topic: str) -> None:
    admin = AdminClient(settings.kafka_client_config())
    admin.delete_topics([topic])[topic].result(15)
    deadline = time.monotonic() + 30
    while topic in admin.list_topics(timeout=10).topics:
        assert time.monotonic() < deadline, f"{topic} not deleted"
        time.sleep(0.2)
    while topic not in ensure_topics(settings):
        assert time.monotonic() < deadline, f"{topic} not recreated"
        time.sleep(0.2)


@pytest.mark.brokers("tansu", "kafka")
def test_a_recreated_input_topic_starts_fresh(
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
    reader_factory: Callable[[str], TopicReader],
) -> None:
    settings = settings_factory(topic_partitions=1)
    old = as_items(settings, clicks(0, 6))
    first = worker_factory(settings)
    first.wait_ready()
    wait_applied(settings, produce(settings, old), first)
    assert first.stop() == 0

    # Recreated while no worker runs; its records are numbered from 0 again,
    # below every user's mark from the old topic.
    recreate(settings, settings.topic_clickstream)
    new = as_items(settings, clicks(1, 3))
    ends = produce(settings, new)
    assert max(ends.values()) < len(old) - 1

    second = worker_factory(settings)
    second.wait_ready()
    wait_applied(settings, ends, second)
    reader = reader_factory(settings.topic_segments)
    reader.poll(2.0)
    ledger = account(settings, old + new, reader.values())
    assert ledger.lost == 0 and ledger.duplicates == 0, ledger.table()
    assert ledger.state_mismatches == [] and ledger.applied == len(old + new)
    assert f"topic {settings.topic_clickstream} was recreated" in second.log()
