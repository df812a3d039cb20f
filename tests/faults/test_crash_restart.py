"""A worker dies mid-stream (SIGKILL, or SIGTERM) and another takes over.

Afterwards every user's Redis state must equal the offline fold of all their
events, exactly, and every user's final segment must have been published.
A producer also re-sends a tenth of the orders at the end of the stream (same
ids, new offsets), after many newer events: they must not count again.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Callable

import pytest

from stream.settings import Settings
from tests.conftest import TopicReader, WorkerProcess
from tests.faults.scenario import (
    PacedStream,
    Sent,
    applied_records,
    backlog,
    finish_and_account,
    history,
    wait_progress,
)
from tests.helpers import produce

pytestmark = pytest.mark.integration


# Both signals on Tansu; on Kafka the harsher one (no commit on the way out, and
# the dead member must time out of the group before the second takes over).
@pytest.mark.parametrize(
    ("sig", "broker"),
    [
        pytest.param(signal.SIGKILL, "tansu", id="sigkill-tansu"),
        pytest.param(signal.SIGTERM, "tansu", id="sigterm-tansu"),
        pytest.param(signal.SIGKILL, "kafka", id="sigkill-kafka"),
    ],
    indirect=["broker"],
)
def test_worker_killed_mid_stream_then_restarted_loses_and_doubles_nothing(
    sig: signal.Signals,
    broker: str,
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
    again = resend_some_orders(settings, sent, ends)
    # The truth is what was sent once: the re-sends must add nothing to it.
    label = f"{sig.name} after {at_kill}/{len(sent)}, then {len(again)} orders re-sent"
    finish_and_account(settings, sent, ends, second, reader_factory, label)
    assert second.stop() == 0


def resend_some_orders(settings: Settings, sent: Sent, ends: dict[str, int]) -> Sent:
    """Re-send 10% of the orders, as a producer retrying would; ``ends`` moves on."""
    orders = [r for r in sent if r[0] == settings.topic_orders]
    again = random.Random(7).sample(orders, len(orders) // 10)
    for tp, off in produce(settings, again).items():
        ends[tp] = max(ends.get(tp, -1), off)
    return again


@pytest.mark.brokers("tansu", "kafka")
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
