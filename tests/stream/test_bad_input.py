"""Hostile input, through the decoder and the batch path (real Redis, real broker), and
through a real worker. Nothing raises, nothing is dropped: applied or dead-lettered."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.registry import load_current
from stream import metrics
from stream.settings import Settings
from stream.sinks import ConfluentSink
from stream.worker.app import pipeline_config
from stream.worker.pipeline import BatchProcessor
from stream.worker.records import RawRecord
from stream.worker.state.store import StateStore
from tests.conftest import TopicReader, WorkerProcess
from tests.factories import DAY, T0, click, order
from tests.helpers import feed, produce, raw_records, wait_applied

pytestmark = pytest.mark.integration

FAR_FUTURE = 4_102_444_800_000  # 2100


def _valid(kind: str, user: str, ts: int) -> dict[str, Any]:
    return click(user, ts) if kind == "click" else order(user, ts)


@st.composite
def hostile_record(draw: st.DrawFn) -> tuple[str, bytes | None, bytes | None]:
    kind = draw(st.sampled_from(["click", "order"]))
    user = draw(
        st.one_of(
            st.sampled_from(["u1", "u2", "ü-ñ-😀", "a\u200bb", "x" * 200]),
            st.text(min_size=1, max_size=12),
        )
    )
    value = _valid(kind, user, T0 + draw(st.integers(0, 30)) * DAY)
    mutation = draw(
        st.sampled_from(
            [
                "none",
                "random_bytes",
                "truncate",
                "wrong_type",
                "drop_field",
                "huge_number",
                "negative_total",
                "nan_total",
                "future",
                "past",
                "empty_key",
                "other_key",
                "oversize",
                "null_value",
            ]
        )
    )
    key: bytes | None = user.encode()
    raw: bytes | None
    if mutation == "random_bytes":
        raw = draw(st.binary(max_size=200))
    elif mutation == "truncate":
        full = orjson.dumps(value)
        raw = full[: draw(st.integers(0, len(full) - 1))]
    else:
        if mutation == "wrong_type":
            value[draw(st.sampled_from(["timestamp", "event_type", "user_id", "event_id"]))] = draw(
                st.one_of(
                    st.lists(st.integers(), max_size=2), st.booleans(), st.none(), st.floats()
                )
            )
        elif mutation == "drop_field":
            value.pop(draw(st.sampled_from(["event_id", "user_id", "timestamp", "event_type"])))
        elif mutation == "huge_number":
            value["timestamp" if kind == "click" else "total"] = 10**18
        elif mutation == "negative_total":
            value["total" if kind == "order" else "price"] = -draw(st.floats(0.01, 1e6))
        elif mutation == "future":
            value["timestamp"] = FAR_FUTURE
        elif mutation == "past":
            value["timestamp"] = 86_400_000
        elif mutation == "empty_key":
            key = b""
        elif mutation == "other_key":
            key = b"someone-else"
        elif mutation == "oversize":
            value["padding"] = "p" * 70_000
        try:
            raw = orjson.dumps(value)
        except TypeError:
            # An integer beyond 64 bits (from "wrong_type"): orjson will not
            # write it, a hostile producer would; so does the stdlib.
            raw = json.dumps(value).encode()
        if mutation == "nan_total":
            raw = raw.replace(b'"total":', b'"total":NaN,"x":') if kind == "order" else b"NaN"
        if mutation == "null_value":
            raw = None
    return kind, key, raw


def _counted() -> float:
    return sum(
        s.value
        for fam in metrics.EVENTS.collect()
        for s in fam.samples
        if s.name == "segmenter_events_total"
    )


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(hostile_record(), min_size=1, max_size=25))
def test_every_hostile_record_is_applied_or_dead_lettered_and_counted(
    batch: list[tuple[str, bytes | None, bytes | None]], settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory()
    records = [
        RawRecord(
            settings.topic_clickstream if kind == "click" else settings.topic_orders, 0, i, key, raw
        )
        for i, (kind, key, raw) in enumerate(batch)
    ]

    async def run() -> Any:
        store = StateStore.from_settings(settings)
        sink = ConfluentSink(settings.kafka_client_config())
        model = load_current(settings.model_dir)
        proc = BatchProcessor(
            store, sink, lambda: model, pipeline_config(settings), clock_ms=lambda: T0 + 60 * DAY
        )
        try:
            return await proc.process(records)
        finally:
            sink.close()
            await store.delete_prefix()
            await store.close()

    before = _counted()
    result = asyncio.run(run())
    assert result.applied + result.duplicates + result.dead_lettered == len(records)
    assert _counted() - before == len(records)


@pytest.mark.brokers("tansu", "kafka")
def test_worker_survives_a_hostile_corpus_and_dead_letters_each_bad_record(
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
    reader_factory: Callable[[str], TopicReader],
) -> None:
    settings = settings_factory()
    c, o = settings.topic_clickstream, settings.topic_orders
    good = [
        (c, b"ok-1", orjson.dumps(click("ok-1", T0))),
        (o, b"ok-1", orjson.dumps(order("ok-1", T0 + 5))),
    ]
    bad = [
        (c, b"u", b"\x00\x01\x02 garbage"),
        (c, b"u", orjson.dumps(click("u", T0))[:-7]),
        (o, b"u", orjson.dumps(order("u", T0) | {"total": "12"})),
        (o, b"u", orjson.dumps({k: v for k, v in order("u", T0).items() if k != "order_id"})),
        (o, b"u", orjson.dumps(order("u", T0) | {"total": 1e308})),
        (o, b"u", orjson.dumps(order("u", T0) | {"total": -3.5})),
        (o, b"u", orjson.dumps(order("u", T0)).replace(b'"total":100.0', b'"total":NaN')),
        (c, b"u", orjson.dumps(click("u", FAR_FUTURE))),
        (c, b"u", orjson.dumps(click("u", 1_000))),
        (c, b"", orjson.dumps(click("u", T0))),
        (c, b"not-u", orjson.dumps(click("u", T0))),
        (c, b"u", orjson.dumps(click("u", T0) | {"pad": "x" * 70_000})),
        (c, "ü😀".encode(), orjson.dumps(click("ü😀", T0) | {"event_type": "teleport"})),
    ]
    worker = worker_factory(settings)
    worker.wait_ready()
    wait_applied(settings, produce(settings, good + bad), worker)
    dlq = reader_factory(settings.topic_dlq).wait_for(lambda m: len(m) >= len(bad))
    assert len(dlq) == len(bad)
    # Byte for byte, but for a value over the size limit: its first KiB and its hash.
    limit = settings.max_event_bytes
    assert sorted(m.value() for m in dlq) == sorted(
        v if len(v) <= limit else v[:1024] for _, _, v in bad
    )
    (big,) = [m for m in dlq if dict(m.headers()).get("x-dlq-value-sha256")]
    (original,) = [v for _, _, v in bad if len(v) > limit]
    assert (
        dict(big.headers())["x-dlq-value-sha256"] == hashlib.sha256(original).hexdigest().encode()
    )
    assert all(dict(m.headers()).get("x-dlq-reason") for m in dlq)
    assert worker.proc.poll() is None and "Traceback" not in worker.log()


def test_a_1_2_mb_record_is_dead_lettered_bounded_and_the_orders_after_it_are_segmented(
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
    reader_factory: Callable[[str], TopicReader],
) -> None:
    settings = settings_factory()
    o = settings.topic_orders
    huge = orjson.dumps(order("big", T0) | {"pad": "x" * 1_200_000})
    # One partition's worth: every order goes to the same key as the huge one,
    # so they queue behind it on its partition.
    after = [(o, b"big", orjson.dumps(order("big", T0 + i * DAY, total=50.0))) for i in range(20)]
    worker = worker_factory(settings)
    worker.wait_ready()
    ends = produce(settings, [(o, b"big", huge), *after], message_max_bytes=2_000_000)
    wait_applied(settings, ends, worker)
    (dead,) = reader_factory(settings.topic_dlq).wait_for(lambda m: len(m) >= 1)
    headers = dict(dead.headers())
    assert headers["x-dlq-reason"] == b"too_large"
    assert headers["x-dlq-value-size"] == str(len(huge)).encode()
    assert headers["x-dlq-value-sha256"] == hashlib.sha256(huge).hexdigest().encode()
    assert dead.value() == huge[:1024]
    changes = reader_factory(settings.topic_segments).wait_for(
        lambda m: any(json.loads(x.value())["user_id"] == "big" for x in m)
    )
    assert changes
    rec = asyncio.run(_stored(settings, "big"))
    assert rec is not None and rec.state.order_count == len(after)
    assert worker.proc.poll() is None and "Traceback" not in worker.log()


async def _stored(settings: Settings, user: str) -> Any:
    store = StateStore.from_settings(settings)
    try:
        return await store.get(user)
    finally:
        await store.close()


class _FailingSink:
    """The real sink, but publishing fails for some records: always for a change of
    user ``poison`` (a fault of that record), or the first ``outage`` times (an outage)."""

    def __init__(self, settings: Settings, outage: int = 0) -> None:
        self.real = ConfluentSink(settings.kafka_client_config())
        self.segments = settings.topic_segments
        self.outage = outage

    def publish(self, records: Any) -> Any:
        if self.outage > 0:
            self.outage -= 1
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "broker went away"))
        if any(r.topic == self.segments and r.key == b"poison" for r in records):
            raise ValueError("cannot encode this change")
        return self.real.publish(records)


@pytest.mark.brokers("tansu", "kafka")
def test_a_batch_failing_the_same_way_k_times_dead_letters_the_record_at_fault(
    settings_factory: Callable[..., Settings], reader_factory: Callable[[str], TopicReader]
) -> None:
    settings = settings_factory(max_batch_failures=3)
    values = [order(f"u{i}", T0 + i, total=900.0) for i in range(30)]
    values[13] = order("poison", T0 + 13, total=900.0)
    sink = _FailingSink(settings)
    try:
        result = asyncio.run(feed(settings, raw_records(settings, values), sink=sink))
    finally:
        sink.real.close()
    assert (result.applied, result.dead_lettered, result.records) == (29, 1, 30)
    (dead,) = reader_factory(settings.topic_dlq).wait_for(lambda m: len(m) >= 1)
    headers = dict(dead.headers())
    assert headers["x-dlq-reason"] == b"processing_failed"
    assert b"cannot encode this change" in headers["x-dlq-detail"]
    assert headers["x-source-offset"] == b"13" and dead.value() == orjson.dumps(values[13])
    stored = asyncio.run(_stored(settings, "u29"))
    assert stored is not None and asyncio.run(_stored(settings, "poison")) is None


def test_an_outage_is_waited_out_not_dead_lettered(
    settings_factory: Callable[..., Settings], reader_factory: Callable[[str], TopicReader]
) -> None:
    settings = settings_factory(max_batch_failures=2)
    values = [order(f"u{i}", T0 + i, total=900.0) for i in range(5)]
    sink = _FailingSink(settings, outage=6)
    try:
        result = asyncio.run(feed(settings, raw_records(settings, values), sink=sink))
    finally:
        sink.real.close()
    assert (result.applied, result.dead_lettered, result.attempts) == (5, 0, 7)
