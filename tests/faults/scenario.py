"""The shape every fault test shares: a generated backlog, a fault at some progress, a ledger."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from stream.settings import Settings
from stream.training.generate import GeneratorConfig, generate
from stream.training.produce import encode_generated
from stream.worker.state.store import StateStore
from tests.conftest import TopicReader, WorkerProcess
from tests.faults.accounting import Ledger, account
from tests.helpers import produce, sending_producer, wait_applied

Sent = list[tuple[str, bytes | None, bytes]]


def history(settings: Settings, users: int = 150, days: float = 60, seed: int = 21) -> Sent:
    cfg = GeneratorConfig(users=users, days=days, seed=seed)
    topics = {"clickstream": settings.topic_clickstream, "orders": settings.topic_orders}
    return [(topics[t], k, v) for t, k, v in encode_generated(generate(cfg))]


def backlog(
    settings: Settings, users: int = 150, days: float = 60, seed: int = 21
) -> tuple[Sent, dict[str, int]]:
    """Produce a generated history; return what was sent and the end offsets."""
    sent = history(settings, users, days, seed)
    return sent, produce(settings, sent)


class PacedStream:
    """Produce ``head`` records at once, then the rest at ``rate``/s in a thread: a live stream."""

    def __init__(self, settings: Settings, sent: Sent, head: int, rate: float) -> None:
        self._producer = sending_producer(settings)  # one for the whole stream
        self.ends: dict[str, int] = produce(settings, sent[:head], producer=self._producer)
        self._settings, self._rest, self._rate = settings, sent[head:], rate
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        chunk = max(1, int(self._rate / 10))
        for i in range(0, len(self._rest), chunk):
            started = time.monotonic()
            chunk_ends = produce(self._settings, self._rest[i : i + chunk], producer=self._producer)
            for tp, off in chunk_ends.items():
                self.ends[tp] = max(self.ends.get(tp, -1), off)
            time.sleep(max(0.0, 0.1 - (time.monotonic() - started)))

    def join(self) -> dict[str, int]:
        self._thread.join(300)
        return self.ends


async def _applied(settings: Settings) -> dict[str, int]:
    store = StateStore.from_settings(settings)
    try:
        return await store.partition_offsets()
    finally:
        await store.close()


def applied_records(settings: Settings) -> int:
    """How many records (applied or dead-lettered) the partition marks in Redis account for."""
    return sum(v + 1 for v in asyncio.run(_applied(settings)).values())


def wait_progress(
    settings: Settings, at_least: int, workers: list[WorkerProcess], timeout_s: float = 90
) -> int:
    deadline = time.monotonic() + timeout_s
    while (n := applied_records(settings)) < at_least:
        for w in workers:
            assert w.proc.poll() is None, w.log()[-3000:]
        assert time.monotonic() < deadline, f"stuck at {n} < {at_least}"
        time.sleep(0.05)
    return n


def committed_offsets(settings: Settings, ends: dict[str, int]) -> dict[str, int]:
    probe = Consumer(
        {"bootstrap.servers": settings.bootstrap_servers, "group.id": settings.group_id}
    )
    try:
        parts = [TopicPartition(tp.rsplit(":", 1)[0], int(tp.rsplit(":", 1)[1])) for tp in ends]
        return {f"{p.topic}:{p.partition}": p.offset for p in probe.committed(parts, timeout=10)}
    finally:
        probe.close()


def assert_commits_never_ahead_of_state(settings: Settings, ends: dict[str, int]) -> None:
    """Kafka's committed offset (next to read) never passes what Redis holds as applied."""
    applied = asyncio.run(_applied(settings))
    for tp, committed in committed_offsets(settings, ends).items():
        if committed >= 0:  # negative = nothing committed yet
            assert committed <= applied.get(tp, -1) + 1, (tp, committed, applied.get(tp))


def finish_and_account(
    settings: Settings,
    sent: Sent,
    ends: dict[str, int],
    worker: WorkerProcess,
    reader_factory: Callable[[str], TopicReader],
    label: str,
) -> Ledger:
    wait_applied(settings, ends, worker, timeout_s=180)
    reader = reader_factory(settings.topic_segments)
    reader.poll(3.0)
    values: list[dict[str, Any]] = reader.values()
    ledger = account(settings, sent, values)
    print(f"\n{label}\n{ledger.table()}")
    assert ledger.lost == 0 and ledger.duplicates == 0
    assert ledger.state_mismatches == []
    assert ledger.unpublished == []
    assert ledger.version_gaps == [] and ledger.conflicting_republish == []
    assert ledger.applied == ledger.sent
    return ledger
