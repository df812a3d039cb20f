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

from confluent_kafka import KafkaError, KafkaException, Producer

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
    (back-pressure) instead of failing with ``BufferError``. For tools that
    own their thread; on an event loop, use :func:`produce_awaiting`."""
    while True:
        try:
            producer.produce(topic, key=key, value=value, headers=headers, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.05)  # let librdkafka deliver some, then try again


async def produce_awaiting(
    producer: Producer,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    *,
    headers: list[tuple[str, str | bytes | None]] | None = None,
    on_delivery: Callable[[Any, Any], None] | None = None,
    given_up: Callable[[], bool] = lambda: False,
) -> bool:
    """``producer.produce`` from the event loop: while the local queue is full,
    *await* (someone else polls: :class:`ConfluentSink`'s poller thread).

    Spinning here would block the loop for a whole broker outage: no
    heartbeats, a rebalance, a restart. False, with nothing produced, once
    ``given_up()`` says the attempt has failed meanwhile.
    """
    while not given_up():
        try:
            producer.produce(topic, key=key, value=value, headers=headers, on_delivery=on_delivery)
            return True
        except BufferError:
            await asyncio.sleep(0.05)
    return False


#: How long a publish waits for the broker's acknowledgement before it is reported as slow.
SLOW_PUBLISH_S = 5.0


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
        #: Told every SLOW_PUBLISH_S that a publish waits for the broker, with
        #: the seconds waited: a topic deleted, a broker away, show as a stall
        #: long before librdkafka's message timeout fails the attempt.
        self.on_slow: Callable[[float], None] | None = None
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

    async def publish(self, records: Sequence[Outgoing]) -> None:
        """Produce ``records`` in order; return once the broker has every one.

        It fails with the first delivery error; then whatever of this attempt
        is still in librdkafka's queue is purged, not left to go out later
        behind the caller's re-run. One wake-up of the event loop per call,
        not one per record: the delivery callbacks only count down.
        """
        if not records:
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if self._broken:
            # Whatever the old one still held failed with it; the caller
            # re-runs its batch, so nothing is lost by starting afresh.
            self._producer = new_producer(self._config)
            self._broken = False
        producer = self._producer
        pending = [0]  # produced and not yet reported
        produced_all = [False]
        errors: list[Any] = []
        lock = threading.Lock()

        def finish() -> None:
            if not fut.done():
                if errors:
                    fut.set_exception(KafkaException(errors[0]))
                else:
                    fut.set_result(None)

        def delivered(err: Any, msg: Any) -> None:
            # librdkafka calls this from the poller thread.
            with lock:
                if err is not None:
                    errors.append(err)
                    if err.fatal():
                        self._broken = True
                pending[0] -= 1
                done = pending[0] == 0 and produced_all[0]
            if done:
                loop.call_soon_threadsafe(finish)

        for rec in records:
            with lock:
                pending[0] += 1
            ok = await produce_awaiting(
                producer,
                rec.topic,
                rec.key,
                rec.value,
                headers=list(rec.headers) if rec.headers else None,
                on_delivery=delivered,
                given_up=lambda: bool(errors),
            )
            if not ok:
                with lock:
                    pending[0] -= 1
                break
        if errors:
            # The attempt has failed: its records still queued are dropped
            # (their callbacks report them purged), so none goes out after it.
            producer.purge(in_queue=True, in_flight=False, blocking=False)
        with lock:
            produced_all[0] = True
            done = pending[0] == 0
        if done:
            finish()
        waited = 0.0
        while True:
            # Shielded: a slow broker is reported, never given up on here
            # (librdkafka's message timeout fails the attempt).
            try:
                await asyncio.wait_for(asyncio.shield(fut), SLOW_PUBLISH_S)
                return
            except TimeoutError:
                waited += SLOW_PUBLISH_S
                if self.on_slow is not None:
                    self.on_slow(waited)

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
        try:
            self._producer.produce(
                topic, key=key, value=value, headers=kafka_headers, on_delivery=delivered
            )
        except BufferError:
            # Never wait on the loop's thread: the caller retries, as after any failure.
            fut.set_exception(KafkaException(KafkaError(KafkaError._QUEUE_FULL)))
        return fut

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.flush(timeout_s)
        self._stop.set()
        self._poller.join(timeout_s)
