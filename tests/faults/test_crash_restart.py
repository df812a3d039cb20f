"""A worker dies mid-stream (SIGKILL, or SIGTERM) and another takes over.

Afterwards every user's Redis state must equal the offline fold of all their
events, exactly, and every user's final segment must have been published.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from stream.settings import Settings
from tests.conftest import TopicReader, WorkerProcess
from tests.faults.scenario import (
    PacedStream,
    applied_records,
    backlog,
    finish_and_account,
    history,
    wait_progress,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_worker_killed_mid_stream_then_restarted_loses_and_doubles_nothing(
    sig: signal.Signals,
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
    reader_factory: Callable[[str], TopicReader],
) -> None:
    # Small batches, so the kill lands between many commits and inside one.
    settings = settings_factory(batch_max=200)
    sent, ends = backlog(settings)

    first = worker_factory(settings)
    first.wait_ready()
    wait_progress(settings, len(sent) // 4, [first])
    first.proc.send_signal(sig)
    code = first.proc.wait(60)
    if sig == signal.SIGTERM:
        assert code == 0, first.log()[-3000:]
        assert "Traceback" not in first.log()
    at_kill = applied_records(settings)
    assert at_kill < len(sent), "the kill came too late to test anything"

    second = worker_factory(settings)
    second.wait_ready()
    finish_and_account(
        settings, sent, ends, second, reader_factory, f"{sig.name} after {at_kill}/{len(sent)}"
    )
    assert second.stop() == 0


def test_rebalance_when_a_worker_joins_and_another_is_killed(
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
    reader_factory: Callable[[str], TopicReader],
) -> None:
    settings = settings_factory(batch_max=100)
    sent = history(settings, users=200)
    stream = PacedStream(settings, sent, head=len(sent) // 5, rate=600)
    a = worker_factory(settings)
    a.wait_ready()
    wait_progress(settings, len(sent) // 6, [a])
    b = worker_factory(settings)  # joins: the group rebalances under load
    b.wait_ready()
    wait_progress(settings, len(sent) // 2, [a, b])
    assert "partitions assigned" in b.log()
    a.proc.send_signal(signal.SIGKILL)  # leaves without a word: the survivor takes over
    a.proc.wait(30)
    at_kill = applied_records(settings)
    assert at_kill < len(sent), "the kill came too late to test anything"
    ends = stream.join()
    label = f"join at ~17%, SIGKILL at {at_kill}/{len(sent)}"
    finish_and_account(settings, sent, ends, b, reader_factory, label)
    assert b.stop() == 0
