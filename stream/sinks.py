"""A confluent-kafka producer behind the pipeline's ``Sink`` interface.

Delivery: each ``send`` resolves when the broker acknowledged the record
(acks=all, idempotent producer), or fails with the delivery error. Used by the
tools that publish outside a Faust worker (tests, `segmenter forget`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaException, Producer


def produce_waiting(
    producer: Producer,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    *,
    headers: list[tuple[str, str | bytes | None]] | None = None,
    on_delivery: Callable[[Any, Any], None] | None = None,
) -> None:
    """``producer.produce``, waiting while librdkafka's local queue is full
    (back-pressure) instead of failing with ``BufferError``."""
    while True:
        try:
            producer.produce(topic, key=key, value=value, headers=headers, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.05)  # let librdkafka deliver some, then try again


class ConfluentSink:
    def __init__(self, kafka_config: dict[str, Any], **overrides: Any) -> None:
        self._producer = Producer(
            {
                **kafka_config,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 2,
                **overrides,
            }
        )
        self._stop = threading.Event()
        # librdkafka only runs delivery callbacks inside poll(): a small thread
        # keeps polling so awaiting a send never depends on the caller polling.
        self._poller = threading.Thread(target=self._poll, name="sink-poller", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def delivered(err: Any, msg: Any) -> None:
            def resolve() -> None:
                if fut.done():
                    return
                if err is not None:
                    fut.set_exception(KafkaException(err))
                else:
                    fut.set_result((msg.partition(), msg.offset()))

            loop.call_soon_threadsafe(resolve)

        kafka_headers: list[tuple[str, str | bytes | None]] | None = list(headers) or None
        produce_waiting(
            self._producer, topic, key, value, headers=kafka_headers, on_delivery=delivered
        )
        return fut

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.flush(timeout_s)
        self._stop.set()
        self._poller.join(timeout_s)
