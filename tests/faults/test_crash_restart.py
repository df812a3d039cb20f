"""A worker dies mid-stream (SIGKILL, or SIGTERM) and another takes over.

Afterwards every user's Redis state must equal the offline fold of all their
events, exactly, and every user's final segment must have been published.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import orjson
import pytest

from stream.generate import GeneratorConfig, generate
from stream.produce import encode_generated
from stream.settings import Settings
from stream.store import StateStore
from tests.conftest import TopicReader, WorkerProcess
from tests.faults.accounting import account
from tests.helpers import produce, wait_applied

pytestmark = pytest.mark.integration


async def _applied(settings: Settings) -> int:
    store = StateStore.from_url(settings.redis_url, settings.redis_prefix)
    try:
        return sum(v + 1 for v in (await store.partition_offsets()).values())
    finally:
        await store.close()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_worker_killed_mid_stream_then_restarted_loses_and_doubles_nothing(
    sig: signal.Signals,
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
    reader_factory: Callable[[str], TopicReader],
) -> None:
    # Small batches, so the kill lands between many commits and inside one.
    settings = settings_factory(batch_max=200)
    cfg = GeneratorConfig(users=150, days=60, seed=21)
    sent = [
        (settings.topic_clickstream if t == "clickstream" else settings.topic_orders, k, v)
        for t, k, v in encode_generated(generate(cfg))
    ]
    ends = produce(settings, sent)

    first = worker_factory(settings)
    first.wait_ready()
    deadline = time.monotonic() + 60
    while asyncio.run(_applied(settings)) < len(sent) // 4:
        assert time.monotonic() < deadline, first.log()[-3000:]
        time.sleep(0.05)
    first.proc.send_signal(sig)
    code = first.proc.wait(60)
    if sig == signal.SIGTERM:
        assert code == 0, first.log()[-3000:]
        assert "Traceback" not in first.log()
    progress_at_kill = asyncio.run(_applied(settings))
    assert progress_at_kill < len(sent), "the kill came too late to test anything"

    second = worker_factory(settings)
    second.wait_ready()
    wait_applied(settings, ends, second, timeout_s=180)

    reader = reader_factory(settings.topic_segments)
    reader.poll(3.0)
    ledger = account(settings, sent, reader.values())
    print(f"\n{sig.name} after {progress_at_kill}/{len(sent)} records\n{ledger.table()}")
    assert ledger.lost == 0 and ledger.duplicates == 0
    assert ledger.state_mismatches == []
    assert ledger.unpublished == []
    assert ledger.applied == ledger.sent
    assert orjson.dumps(ledger.users) == orjson.dumps(cfg.users)
    assert second.stop() == 0
