"""Helpers for tests that drive a real worker: produce, wait for it, snapshot Redis."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from model.registry import load_current
from stream.settings import Settings
from stream.sinks import ConfluentSink, new_producer
from stream.worker.app import pipeline_config
from stream.worker.pipeline import BatchProcessor, BatchResult
from stream.worker.records import RawRecord
from stream.worker.state.store import StateStore, encode_record
from tests.conftest import WorkerProcess


def sending_producer(settings: Settings, **config: Any) -> Any:
    """The producer the tests send with. Through the project's producer factory:
    keys land where Java clients put them. Idempotent, as `segmenter produce` is:
    a retried batch can then never land after a later one, so send order is each
    partition's order (the ledgers fold in send order; a non-idempotent retry
    under load broke that on Kafka). Making one costs a round trip for its
    producer id (0.6 s on Tansu): a stream of small sends keeps one.

    ``config``: more librdkafka settings, with dots as underscores.
    """
    return new_producer(
        {"bootstrap.servers": settings.bootstrap_servers, "acks": "all", "enable.idempotence": True}
        | {k.replace("_", "."): v for k, v in config.items()}
    )


def produce(
    settings: Settings,
    items: list[tuple[str, bytes | None, bytes]],
    *,
    producer: Any = None,
    **config: Any,
) -> dict[str, int]:
    """Produce (topic, key, value); return the last offset per topic:partition.

    ``producer``: one from :func:`sending_producer` to reuse (else a new one);
    ``config``: more librdkafka settings for a new one, with dots as underscores.
    """
    producer = producer or sending_producer(settings, **config)
    ends: dict[str, int] = {}
    errors: list[Any] = []

    def delivered(err: Any, msg: Any) -> None:
        if err:
            errors.append(err)
        else:
            tp = f"{msg.topic()}:{msg.partition()}"
            ends[tp] = max(ends.get(tp, -1), msg.offset())

    for topic, key, value in items:
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=delivered)
                break
            except BufferError:  # librdkafka's queue (100k records) is full: let it drain
                producer.poll(0.1)
    assert producer.flush(30) == 0 and not errors
    return ends


def as_items(
    settings: Settings, values: list[dict[str, Any]]
) -> list[tuple[str, bytes | None, bytes]]:
    return [
        (
            settings.topic_orders
            if v["event_type"].startswith("order_")
            else settings.topic_clickstream,
            v["user_id"].encode(),
            orjson.dumps(v),
        )
        for v in values
    ]


async def _offsets(settings: Settings) -> dict[str, int]:
    store = StateStore.from_settings(settings)
    try:
        return await store.partition_offsets()
    finally:
        await store.close()


async def snapshot(settings: Settings) -> dict[str, bytes]:
    store = StateStore.from_settings(settings)
    try:
        out = {}
        for user in sorted(await store.scan_users()):
            rec = await store.get(user)
            assert rec is not None
            out[user] = encode_record(rec)
        out["__counts__"] = orjson.dumps(await store.segment_counts(), option=orjson.OPT_SORT_KEYS)
        return out
    finally:
        await store.close()


def wait_applied(
    settings: Settings, ends: dict[str, int], worker: WorkerProcess, timeout_s: float = 90
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        applied = asyncio.run(_offsets(settings))
        if all(applied.get(tp, -1) >= off for tp, off in ends.items()):
            return
        assert worker.proc.poll() is None, worker.log()[-3000:]
        time.sleep(0.3)
    raise AssertionError(
        f"not applied in {timeout_s}s: {ends} vs {applied}\n{worker.log()[-3000:]}"
    )


def wait_committed(
    settings: Settings, ends: dict[str, int], worker: WorkerProcess, timeout_s: float = 90
) -> None:
    """Wait until the worker's consumer group has committed past every end offset."""
    from confluent_kafka import Consumer, TopicPartition

    probe = Consumer(
        {"bootstrap.servers": settings.bootstrap_servers, "group.id": settings.group_id}
    )
    parts = [TopicPartition(tp.rsplit(":", 1)[0], int(tp.rsplit(":", 1)[1])) for tp in ends]
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            committed = {
                f"{p.topic}:{p.partition}": p.offset for p in probe.committed(parts, timeout=10)
            }
            if all(committed[tp] > off for tp, off in ends.items()):
                return
            assert worker.proc.poll() is None, worker.log()[-3000:]
            time.sleep(0.3)
        raise AssertionError(f"group {settings.group_id} did not commit {ends}: {committed}")
    finally:
        probe.close()


def raw_records(
    settings: Settings, values: list[dict[str, Any]], start: int = 0, partition: int = 0
) -> list[RawRecord]:
    """Event dicts as the agent hands them over: one partition, offsets from ``start``."""
    return [
        RawRecord(
            settings.topic_orders
            if v["event_type"].startswith("order_")
            else settings.topic_clickstream,
            partition,
            start + i,
            v["user_id"].encode(),
            orjson.dumps(v),
        )
        for i, v in enumerate(values)
    ]


async def feed(
    settings: Settings,
    batch: list[RawRecord],
    *,
    sweep: bool = False,
    sink: Any = None,
) -> BatchResult:
    """One batch through a fresh processor (no Faust), then optionally a sweep of partition 0."""
    store = StateStore.from_settings(settings)
    own_sink = sink is None
    sink = sink or ConfluentSink(settings.kafka_client_config())
    model = load_current(settings.model_dir)
    proc = BatchProcessor(store, sink, lambda: model, pipeline_config(settings))
    try:
        result = await proc.process(batch)
        if sweep:
            result.changes += (await proc.reevaluate([0])).changes
        return result
    finally:
        if own_sink:
            sink.close()
        await store.close()
