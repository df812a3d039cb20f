"""Replay input topics from Kafka into memory, for training (read-only, no group commit).

Reads every partition by manual assignment until librdkafka reports partition
EOF (not ``get_watermark_offsets``, which under-reports on Tansu). Events are
filtered on their *own* timestamps: Tansu answers offsets-for-times by broker
append time, so the broker cannot be trusted to cut an event-time range.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, KafkaError, TopicPartition

OFFSET_BEGINNING = -2


def replay_topics(
    kafka_config: dict[str, Any],
    topics: list[str],
    *,
    since_ms: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    idle_timeout_s: float = 60.0,
) -> Iterator[tuple[str, bytes | None, bytes | None]]:
    """``(topic, key, value)`` of the records now in ``topics`` (see :func:`replay_records`)."""
    for topic, key, value, _, _ in replay_records(
        kafka_config,
        topics,
        since_ms=since_ms,
        on_progress=on_progress,
        idle_timeout_s=idle_timeout_s,
    ):
        yield topic, key, value


def replay_records(
    kafka_config: dict[str, Any],
    topics: list[str],
    *,
    since_ms: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    idle_timeout_s: float = 60.0,
) -> Iterator[tuple[str, bytes | None, bytes | None, int, int]]:
    """Yield ``(topic, key, value, partition, offset)`` of the records now in ``topics``.

    With ``since_ms``, each partition starts at the offset the broker gives
    for that time (offsets-for-times) instead of offset 0. That is only a
    lower bound to skip what is surely too old: Tansu answers by append time
    and returns 0 for history, and a record's Kafka timestamp is not its event
    time, so callers still filter on each event's own timestamp.

    Records are yielded as they arrive, so a caller that writes them out holds
    none of them. The replay fails only when the broker has given nothing (no
    record, no end of partition) for ``idle_timeout_s``: a long replay that
    keeps moving is never cut short.
    """
    consumer = Consumer(
        {
            **kafka_config,
            "group.id": f"segmenter-replay-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        known = consumer.list_topics(timeout=10).topics
        _refuse_missing(topics, known)
        parts = []
        for topic in topics:
            meta = known[topic]
            if meta.error is not None:
                raise RuntimeError(f"cannot replay {topic}: {meta.error}")
            parts += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions]
        if since_ms is not None:
            wanted = [TopicPartition(p.topic, p.partition, since_ms) for p in parts]
            found = consumer.offsets_for_times(wanted, timeout=10)
            # -1: no record that late in this partition, so nothing to read there.
            parts = [
                p if p.offset >= 0 else TopicPartition(p.topic, p.partition, OFFSET_END)
                for p in found
            ]
        consumer.assign(parts)
        pending = {(p.topic, p.partition) for p in parts}

        last_progress = time.monotonic()
        while pending:
            if time.monotonic() - last_progress > idle_timeout_s:
                raise TimeoutError(
                    f"replay: nothing from the broker for {idle_timeout_s:g} s; "
                    f"not at the end of {sorted(pending)}"
                )
            batch = consumer.consume(1000, timeout=0.5)
            if batch:
                last_progress = time.monotonic()
            n = 0
            for msg in batch:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard((msg.topic(), msg.partition()))
                        continue
                    raise RuntimeError(f"replay failed: {err}")
                n += 1
                yield (
                    str(msg.topic()),
                    msg.key(),
                    msg.value(),
                    msg.partition() or 0,
                    msg.offset() or 0,
                )
            if on_progress and n:
                on_progress(n)
    finally:
        consumer.close()


def _refuse_missing(topics: list[str], known: Any) -> None:
    missing = [t for t in topics if t not in known]
    if missing:
        raise RuntimeError(f"no such topic: {', '.join(missing)}")


def check_topics(kafka_config: dict[str, Any], topics: list[str]) -> None:
    """Raise RuntimeError naming any of ``topics`` the broker does not have."""
    from confluent_kafka.admin import AdminClient

    _refuse_missing(topics, AdminClient(kafka_config).list_topics(timeout=10).topics)
