"""Producing events to the input topics (for `segmenter produce`, the demo and tests).

Delivery: at-least-once, idempotent producer (acks=all), keyed by user_id so
one user's events stay in order on one partition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import KafkaException, Producer

from stream.sinks import new_producer, produce_waiting
from stream.training.generate import GeneratedEvent


def make_producer(kafka_config: dict[str, Any], **overrides: Any) -> Producer:
    """A producer from ``Settings.kafka_client_config()`` (servers and security).

    Partitioned like Java clients (:func:`stream.sinks.new_producer`).
    """
    conf = {
        **kafka_config,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
        "batch.num.messages": 10000,
        "compression.type": "none",
        **overrides,
    }
    return new_producer(conf)


def produce(
    producer: Producer,
    records: Iterable[tuple[str, bytes | None, bytes | None]],
    on_sent: Callable[[int], None] | None = None,
) -> int:
    """Send ``(topic, key, value)`` records; flush; raise if any delivery failed."""
    errors: list[str] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(f"{msg.topic()}: {err}")

    n = 0
    try:
        for topic, key, value in records:
            produce_waiting(producer, topic, key, value, on_delivery=delivered)
            n += 1
            if n % 1000 == 0:
                producer.poll(0)
                if on_sent:
                    on_sent(1000)
    except BaseException:
        # A bad record further on: what was read before it is delivered, not
        # left in librdkafka's queue to vanish with the process.
        producer.flush(60)
        raise
    remaining = producer.flush(60)
    if on_sent:
        on_sent(n % 1000)
    if remaining:
        raise KafkaException(f"{remaining} messages still undelivered after 60 s")
    if errors:
        raise KafkaException(f"{len(errors)} deliveries failed, first: {errors[0]}")
    return n


def encode_generated(events: Iterable[GeneratedEvent]) -> Iterator[tuple[str, bytes, bytes]]:
    for e in events:
        yield e.topic, e.key.encode(), orjson.dumps(e.value)


def write_jsonl(path: Path, events: Iterable[GeneratedEvent]) -> int:
    n = 0
    with path.open("wb") as fh:
        for e in events:
            fh.write(orjson.dumps({"topic": e.topic, "key": e.key, "value": e.value}))
            fh.write(b"\n")
            n += 1
    return n
