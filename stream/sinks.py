"""A confluent-kafka producer behind the pipeline's ``Sink`` interface.

Delivery: ``publish`` (many records) and ``send`` (one) resolve when the
broker acknowledged (acks=all, idempotent producer), or fail with the
delivery error. The worker publishes through it, and so do the tools that
publish outside a worker (tests, `segmenter forget`).

Partitioning: every confluent-kafka producer of the project is made by
:func:`new_producer`, which partitions by murmur2 of the key, as Java clients do.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from confluent_kafka import KafkaException, Producer

#: librdkafka's Java-compatible partitioner: ``toPositive(murmur2(key)) % partitions``,
#: as Java's DefaultPartitioner (and aiokafka's, which Faust uses); null keys go
#: to a random partition. librdkafka's default (``consistent_random``, CRC32)
#: would put a key on another partition than a Java producer does: a user's
#: events from Java producers and from ours would not be co-partitioned, and one
#: key's records from different clients would sit on partitions that compaction
#: (and a `forget` tombstone) cannot reach across.
PARTITIONER = "murmur2_random"


def producer_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with the project's partitioner; refuses another one.

    A contract rather than a default: keyed topics are shared with other
    clients, so no caller may quietly pick a different placement.
    """
    given = config.get("partitioner", PARTITIONER)
    if given != PARTITIONER:
        raise ValueError(f"partitioner={given!r}: producers must use {PARTITIONER!r}")
    return {**config, "partitioner": PARTITIONER}


def new_producer(config: Mapping[str, Any]) -> Producer:
    """The one place the project makes a confluent-kafka ``Producer``."""
    return Producer(producer_config(config))


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


class Outgoing(NamedTuple):
    """One record to publish."""

    topic: str
    key: bytes | None
    value: bytes | None  # None: a tombstone
    headers: Sequence[tuple[str, bytes]] = ()


class ConfluentSink:
    """librdkafka's producer (idempotent, acks=all) behind the pipeline's ``Sink``.

    Why librdkafka and not the Faust app's aiokafka producer: encoding,
    batching and the produce protocol then run in librdkafka's own threads,
    off the event loop (``segmenter bench`` measured awaiting each Faust
    ``Topic.send`` at a fifth of the worker's time). Records keep the order
    of ``produce`` calls per partition, retries included (idempotence), so a
    user's changes reach their partition in version order.
    """

    def __init__(self, kafka_config: dict[str, Any], **overrides: Any) -> None:
        self._config = {
            **kafka_config,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            **overrides,
        }
        self._producer = new_producer(self._config)
        #: Set when a delivery failed with a fatal error: an idempotent
        #: producer is then unusable for good, so the next publish replaces it.
        self._broken = False
        self._stop = threading.Event()
        # librdkafka only runs delivery callbacks inside poll(): a small thread
        # keeps polling so awaiting a send never depends on the caller polling.
        self._poller = threading.Thread(target=self._poll, name="sink-poller", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def publish(self, records: Sequence[Outgoing]) -> asyncio.Future[None]:
        """Produce ``records`` in order; the future resolves once the broker has every one.

        It fails with the first delivery error. One wake-up of the event loop
        per call, not one per record: the delivery callbacks only count down.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if not records:
            fut.set_result(None)
            return fut
        if self._broken:
            # Whatever the old one still held failed with it; the caller
            # re-runs its batch, so nothing is lost by starting afresh.
            self._producer = new_producer(self._config)
            self._broken = False
        pending = [len(records)]
        errors: list[Any] = []
        lock = threading.Lock()

        def finish() -> None:
            if not fut.done():
                if errors:
                    fut.set_exception(KafkaException(errors[0]))
                else:
                    fut.set_result(None)

        def delivered(err: Any, msg: Any) -> None:
            # librdkafka calls this from whichever thread polls: the poller,
            # or the producing thread when produce_waiting polls for room.
            with lock:
                if err is not None:
                    errors.append(err)
                    if err.fatal():
                        self._broken = True
                pending[0] -= 1
                done = pending[0] == 0
            if done:
                loop.call_soon_threadsafe(finish)

        for rec in records:
            produce_waiting(
                self._producer,
                rec.topic,
                rec.key,
                rec.value,
                headers=list(rec.headers) if rec.headers else None,
                on_delivery=delivered,
            )
        return fut

    def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future[Any]:
        """One record; resolves to its (partition, offset) once the broker has it."""
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
