"""Compaction, observed on Apache Kafka (Tansu's memory engine never compacts).

The worker's batch processor and sink publish segment changes (and per-segment
and audience events);
`segmenter forget` erases one user. Once Kafka's cleaner has run, a new
subscriber reading every output topic from the beginning finds exactly the
latest message of each live user, and nothing at all of the erased one: neither
their values nor, after delete.retention.ms, their tombstone.

Kafka cleans only closed segments, and rolls a segment only when a record is
appended after segment.ms. So while waiting, the test appends a tombstone for
the key ``~roll`` (which no user has) to every partition: it closes the segment
before it, and is itself removed by a later pass. A subscriber drops such keys
like any tombstoned one.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
)

from model.registry import load_current
from stream.settings import Settings
from stream.sinks import ConfluentSink
from stream.topics import ensure_audience_topic, ensure_segment_topics
from stream.worker.app import pipeline_config
from stream.worker.pipeline import BatchProcessor
from stream.worker.rules.audiences import parse
from stream.worker.state.store import StateStore
from tests.conftest import settings_env
from tests.factories import DAY, T0, click, order
from tests.helpers import raw_records
from tests.stream.test_cli import segmenter
from tests.stream.test_e2e import scripted

pytestmark = [pytest.mark.integration, pytest.mark.brokers("kafka")]

ROLL_KEY = b"~roll"

#: Cleaning within seconds instead of days. Set on the topics the service
#: created (compacted, by stream/topics.py), as an operator would alter them.
FAST = {
    "segment.ms": "500",
    "min.cleanable.dirty.ratio": "0.01",
    "delete.retention.ms": "500",
    "min.compaction.lag.ms": "0",
}

BIG_RECENT = """\
audiences:
  - name: big_recent
    when: 'spend_90d >= 500.0 && days_since_last_order <= 14.0'
"""


def read_all(bootstrap: str, topic: str) -> list[Any]:
    """Every record of ``topic`` from the beginning to the end, as a new subscriber sees it."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"fresh-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, -2) for p in parts])
        done: set[int] = set()
        out: list[Any] = []
        deadline = time.monotonic() + 30
        while len(done) < len(parts):
            assert time.monotonic() < deadline, f"{topic}: no end in sight"
            for msg in consumer.consume(500, timeout=0.5):
                err = msg.error()
                if err is not None and err.code() == KafkaError._PARTITION_EOF:
                    done.add(msg.partition() or 0)
                elif err is not None:
                    raise AssertionError(str(err))
                else:
                    out.append(msg)
        return out
    finally:
        consumer.close()


def latest(messages: list[Any]) -> dict[bytes, bytes | None]:
    by_key: dict[bytes, bytes | None] = {}
    for msg in messages:
        by_key[msg.key()] = msg.value()
    return by_key


def test_a_new_subscriber_after_cleaning_gets_the_latest_per_live_user_and_nothing_erased(
    prefix: str, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory(
        segment_topics=True, segment_topic_template=f"segments-{prefix}.{{segment}}"
    )
    per_segment = ensure_segment_topics(settings, load_current(settings.model_dir).classes)
    ensure_audience_topic(settings)
    outputs = [settings.topic_segments, *per_segment, settings.topic_audiences]
    admin = AdminClient(settings.kafka_client_config())

    model = load_current(settings.model_dir)
    audiences = parse(BIG_RECENT, "audiences.yaml", model.classes)

    async def publish(values: list[dict[str, Any]], start: int) -> None:
        """One batch through the worker's processor and its sink (no Faust)."""
        store = StateStore.from_settings(settings)
        sink = ConfluentSink(settings.kafka_client_config())
        proc = BatchProcessor(
            store, sink, lambda: model, pipeline_config(settings, audiences=audiences)
        )
        try:
            await proc.process(raw_records(settings, values, start))
        finally:
            sink.close()
            await store.close()

    # The e2e script (a whale, a browser), bob, and erin, who enters the
    # audience with two big orders.
    erin = [order("erin", T0 + DAY, total=300.0), order("erin", T0 + 2 * DAY, total=300.0)]
    bob = [click("bob", T0), order("bob", T0 + DAY, total=40.0)]
    events = sorted(scripted() + erin + bob + [click("erin", T0)], key=lambda v: v["timestamp"])
    asyncio.run(publish(events, 0))
    # Bob is erased and comes back: values, a tombstone and a value under one key.
    assert segmenter("forget", "bob", env=settings_env(settings)).returncode == 0
    asyncio.run(publish([order("bob", int(time.time() * 1000), total=25.0)], len(events)))
    before = read_all(settings.bootstrap_servers, settings.topic_segments)
    assert {b"whale", b"browser", b"erin", b"bob"} <= {m.key() for m in before}
    bobs = [m.value() is None for m in before if m.key() == b"bob"]
    assert bobs[-2:] == [True, False] and len(bobs) >= 3, bobs
    wanted = {k: v for k, v in latest(before).items() if k != b"erin"}
    entered = [m for t in outputs for m in read_all(settings.bootstrap_servers, t)]
    assert {m.topic() for m in entered if m.key() == b"erin"} >= {
        settings.topic_segments,
        settings.topic_audiences,
    }

    # Only now: what was published so far stays as it was, for `before`.
    resources = [
        ConfigResource(
            "topic",
            topic,
            incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
                for k, v in FAST.items()
            ],
        )
        for topic in outputs
    ]
    for fut in admin.incremental_alter_configs(resources).values():
        fut.result(15)

    out = segmenter("forget", "erin", env=settings_env(settings))
    assert out.returncode == 0, out.stderr

    roller = Producer({"bootstrap.servers": settings.bootstrap_servers})
    deadline = time.monotonic() + 90
    while True:
        time.sleep(1.0)  # past segment.ms and delete.retention.ms
        for topic in outputs:
            for p in admin.list_topics(topic, timeout=10).topics[topic].partitions:
                roller.produce(topic, key=ROLL_KEY, value=None, partition=p)
        assert roller.flush(15) == 0
        now = {t: read_all(settings.bootstrap_servers, t) for t in outputs}
        users = [m for m in now[settings.topic_segments] if m.key() != ROLL_KEY]
        # Exactly one message per live user, the latest; nothing of erin anywhere.
        compacted = sorted(m.key() for m in users) == sorted(wanted) and latest(users) == wanted
        erased = not any(m.key() == b"erin" for msgs in now.values() for m in msgs)
        if compacted and erased:
            break
        assert time.monotonic() < deadline, (
            f"not cleaned in 90 s: {len(users)} user messages for {len(wanted)} live users; "
            f"erin still on {[t for t, ms in now.items() if any(m.key() == b'erin' for m in ms)]}"
        )
    # What a subscriber materialises: the whale's last change is high_value.
    assert orjson.loads(wanted[b"whale"] or b"")["segment"] == "high_value"
