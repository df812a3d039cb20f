"""One rule for failure, on a real broker and Redis: I/O failures stall, a fault
no record owns stalls, and only a record failing on its own is dead-lettered.
A stall shows in segmenter_stalled_seconds and /readyz (redacted)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from confluent_kafka import KafkaError, KafkaException
from redis.exceptions import (
    RedisClusterException,
    RedisClusterUnreachableError,
    SlotNotCoveredError,
)

from model.features import FEATURE_NAMES, N_FEATURES, transform
from model.registry import LoadedModel, load_current
from stream import metrics
from stream.devtools.embedded import free_port
from stream.settings import Settings
from stream.sinks import ConfluentSink, Outgoing
from stream.worker.app import pipeline_config
from stream.worker.batch import BatchResult
from stream.worker.faults.failures import Retrying
from stream.worker.pipeline import BatchProcessor
from stream.worker.state.store import StateStore
from stream.worker.web.health import Health
from tests.conftest import TopicReader
from tests.factories import DAY, T0, click, order
from tests.helpers import feed, raw_records

pytestmark = pytest.mark.integration
SPEND = FEATURE_NAMES.index("total_spend")


def stalled(reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value("segmenter_stalled_seconds", {"reason": reason})
    return float(value or 0.0)


class _Faulty:
    """The real sink, failing its first ``times`` publishes with ``make()``; meanwhile
    it records what the worker showed: its readiness, and the stall metric."""

    def __init__(
        self, settings: Settings, make: Callable[[], Exception], times: int, health: Health
    ) -> None:
        self.real = ConfluentSink(settings.kafka_client_config())
        self.dlq = settings.topic_dlq
        self.make, self.left, self.health = make, times, health
        self.seen: list[tuple[bool, str | None, dict[str, float]]] = []

    async def publish(self, records: Any) -> None:
        if all(r.topic == self.dlq for r in records):  # dead letters go through
            await self.real.publish(records)
            return
        ready, body = self.health.readiness()
        gauges = {r: stalled(r) for r in ("redis", "kafka", "broker_refused", "no_culprit")}
        self.seen.append((ready, body["checks"]["processing"]["reason"], gauges))
        if self.left > 0:
            self.left -= 1
            raise self.make()
        await self.real.publish(records)


async def _run(
    settings: Settings, make: Callable[[], Exception], times: int, n: int
) -> tuple[BatchResult, _Faulty, Health]:
    health = Health(model_version="m", redis_ok=True, kafka_ok=True, assigned=frozenset({"x"}))
    sink = _Faulty(settings, make, times, health)
    store = StateStore.from_settings(settings)
    model = load_current(settings.model_dir)
    # Quick retries: this is no timing test.
    cfg = replace(pipeline_config(settings), retry_initial_s=0.01, retry_max_s=0.05)
    proc = BatchProcessor(store, sink, lambda: model, cfg, health=health)
    try:
        values = [order(f"u{i}", T0 + i, total=900.0) for i in range(n)]
        return await proc.process(raw_records(settings, values)), sink, health
    finally:
        sink.real.close()
        await store.close()


IO_FAILURES: dict[str, tuple[str, Callable[[], Exception]]] = {
    "cluster-unreachable": ("redis", lambda: RedisClusterUnreachableError("all nodes down")),
    "slot-not-covered": ("redis", lambda: SlotNotCoveredError("slot 42 not covered")),
    "cluster-exception": ("redis", lambda: RedisClusterException("no node")),
    "unknown-topic": (
        "kafka",
        lambda: KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, "deleted")),
    ),
    "msg-timed-out": ("kafka", lambda: KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT))),
    "authorization": (
        "broker_refused",
        lambda: KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "acl")),
    ),
}


@pytest.mark.parametrize("name", list(IO_FAILURES))
def test_an_io_failure_stalls_shows_and_dead_letters_nothing(
    name: str,
    settings_factory: Callable[..., Settings],
    reader_factory: Callable[[str], TopicReader],
) -> None:
    reason, make = IO_FAILURES[name]
    settings = settings_factory(max_batch_failures=2)
    # Many more failures than max_batch_failures: an outage is never poison.
    result, sink, health = asyncio.run(_run(settings, make, times=8, n=6))
    assert (result.applied, result.dead_lettered) == (6, 0)
    assert reader_factory(settings.topic_dlq).poll(1.0) == []
    during = sink.seen[2:8]  # from the second failed attempt on, it shows
    assert all(not ready for ready, _, _ in during), during
    assert all(why == f"stalled: {reason}: {make().__class__.__name__}" for _, why, _ in during)
    assert [g[reason] for _, _, g in during] == sorted(g[reason] for _, _, g in during)
    assert during[-1][2][reason] > 0
    assert health.readiness()[0] and stalled(reason) == 0.0  # over once it committed


def test_the_backoff_of_a_stall_past_a_thousand_retries_does_not_overflow() -> None:
    """The backoff's exponent once overflowed (2.0**1024) after ~1,000 attempts:
    about 85 minutes of outage at the 5 s ceiling, and the agent died."""
    retrying = Retrying()
    retrying.cfg = SimpleNamespace(retry_initial_s=0.1, retry_max_s=0.0)  # type: ignore[assignment]
    retrying._should_stop, retrying._fatal = lambda: False, None
    for attempt in (1, 1100, 10**6):
        asyncio.run(retrying._backoff(attempt, RedisClusterUnreachableError("down")))


def test_records_failing_as_the_last_culprit_did_stall_instead_of_being_dead_lettered(
    settings_factory: Callable[..., Settings],
    reader_factory: Callable[[str], TopicReader],
) -> None:
    """Every record fails the same way (a fault of the model or the code, say,
    until it is fixed): at most one is taken for poison, then the batch stalls."""
    settings = settings_factory(max_batch_failures=2)

    def broken() -> Exception:
        return ValueError("output of the model is NaN")

    result, sink, health = asyncio.run(_run(settings, broken, times=30, n=8))
    assert result.applied + result.dead_lettered == 8
    assert result.dead_lettered <= 1
    assert len(reader_factory(settings.topic_dlq).poll(1.0)) == result.dead_lettered
    reasons = {why for _, why, _ in sink.seen}
    assert "stalled: no_culprit: Poisoned" in reasons, reasons
    assert max(g["no_culprit"] for _, _, g in sink.seen) > 0
    assert health.readiness()[0] and stalled("no_culprit") == 0.0


def test_readiness_names_the_check_and_class_never_the_text() -> None:
    now = [1000.0]
    health = Health(
        started_at=0.0,
        model_version="m",
        kafka_ok=True,
        redis_ok=False,
        redis_error="ConnectionError: redis://:hunter2@cache.internal:6379 refused",
        assigned=frozenset({"orders:0"}),
        clock=lambda: now[0],
    )
    ready, body = health.readiness()
    assert not ready and body["checks"]["redis"]["error"] == "ConnectionError"
    assert "hunter2" not in str(body) and "cache.internal" not in str(body)
    health.redis_ok = True
    assert health.readiness()[0]
    # No commit for long while records wait: not ready, whatever else says ok.
    health.records_waiting, health.last_batch_at = True, now[0] - health.max_idle_s - 1
    ready, body = health.readiness()
    assert not ready and body["checks"]["processing"]["reason"].startswith("no_commit")
    health.last_batch_at = now[0]
    assert health.readiness()[0]
    health.agent_error = "Poisoned"
    ready, body = health.readiness()
    assert not ready and body["checks"]["processing"]["reason"] == "agent_crashed: Poisoned"
    assert health.liveness()["alive"] is False


def test_a_full_queue_is_awaited_without_blocking_the_loop_and_a_failed_publish_is_purged() -> None:
    """No broker at all: librdkafka's queue fills (BufferError) and the messages time
    out. The loop keeps running meanwhile, and nothing of the attempt stays queued."""
    sink = ConfluentSink(
        {"bootstrap.servers": f"127.0.0.1:{free_port()}"},
        **{"queue.buffering.max.messages": 5, "message.timeout.ms": 1500},
    )

    async def scenario() -> tuple[int, float, BaseException | None]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        started = time.monotonic()
        failure: BaseException | None = None
        try:
            await sink.publish([Outgoing("t", b"k", b"v" * 10) for _ in range(50)])
        except KafkaException as exc:
            failure = exc
        elapsed = time.monotonic() - started
        ticker.cancel()
        return ticks, elapsed, failure

    try:
        ticks, elapsed, failure = asyncio.run(scenario())
        assert isinstance(failure, KafkaException)
        # The loop ran throughout: a tick about every 10 ms, not none.
        assert ticks >= elapsed / 0.01 / 4, (ticks, elapsed)
        assert len(sink._producer) == 0, "the failed attempt's records are purged"
    finally:
        sink.close(1.0)


class _Picky:
    """The served scorer, failing (deterministically) on any row of a big spender."""

    def __init__(self, real: Any, spend_over: float) -> None:
        self.real, self.classes = real, real.classes
        row = np.zeros((1, N_FEATURES))
        row[0, SPEND] = spend_over
        self.limit = float(transform(row)[0, SPEND])

    def score(self, x: np.ndarray) -> Any:
        if (x[:, SPEND] > self.limit).any():
            raise ValueError("cannot score this user")
        return self.real.score(x)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_the_sweep_sets_aside_a_user_it_cannot_score_and_the_others_go_on(
    settings_factory: Callable[..., Settings],
    reader_factory: Callable[[str], TopicReader],
) -> None:
    settings = settings_factory(max_batch_failures=2)
    values = [order(u, T0, total=40.0) for u in ("a", "b", "c")]
    values += [order("poison", T0 + 1, total=90_000.0), click("x", T0 + 60 * DAY)]
    asyncio.run(feed(settings, raw_records(settings, values)))  # scored fine on arrival

    async def sweep() -> tuple[BatchResult, list[str]]:
        store = StateStore.from_settings(settings)
        sink = ConfluentSink(settings.kafka_client_config())
        served = load_current(settings.model_dir)
        picky = LoadedModel(served.version, served.manifest, _Picky(served.scorer, 50_000.0))
        cfg = replace(pipeline_config(settings), retry_initial_s=0.01, retry_max_s=0.05)
        proc = BatchProcessor(store, sink, lambda: picky, cfg)
        try:
            # Bounded, so that a sweep retrying for ever fails the test, not hangs it.
            result = await asyncio.wait_for(proc.reevaluate([0]), 60)
            left = await store.due_for_reevaluation(0, T0 + 9999 * DAY, 100)
            return result, [u for u, _ in left]
        finally:
            sink.close()
            await store.close()

    result, still_due = asyncio.run(sweep())
    assert result.users == 3  # a, b and c re-scored as of their due time
    assert "poison" not in still_due and {"a", "b", "c"} <= set(still_due)  # their next step
    (dead,) = reader_factory(settings.topic_dlq).wait_for(lambda m: len(m) >= 1)
    headers = dict(dead.headers())
    assert dead.key() == b"poison" and headers["x-dlq-reason"] == b"reevaluation_failed"
    assert b"cannot score this user" in headers["x-dlq-detail"]
