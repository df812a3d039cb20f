"""A frequent buyer who stops reaches at_risk through a live worker, by stream time alone.

The issue's two customers (6 orders of EUR 120 in 30 days; 10 of EUR 500),
then silence while other users' events move stream time on for a year. The
worker's own sweep re-scores them at its steps (SEGMENTER_REEVALUATE_DAYS,
default model.segments.DEFAULT_REEVALUATE_DAYS) and must publish at_risk
within 120 and 300 days of their last order. tests/model/test_going_quiet.py
walks the same path offline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from stream.core.events import _to_epoch_ms
from stream.settings import Settings
from tests.conftest import TopicReader, WorkerProcess
from tests.factories import DAY, T0, click, order
from tests.helpers import as_items, produce, wait_applied

#: user -> (orders, EUR each, days they span, at_risk by this many days of silence)
BUYERS = {"six-x-120": (6, 120.0, 30, 120), "ten-x-500": (10, 500.0, 90, 300)}
QUIET_DAYS = 330


def history() -> list[dict[str, Any]]:
    events = []
    for user, (n, total, span, _) in BUYERS.items():
        events += [order(user, T0 + round(span * i / (n - 1) * DAY), total) for i in range(n)]
    # Stream time is kept per partition: 31 other users, each on the last day,
    # reach every partition of the test topics whatever the partitioner.
    last = T0 + (90 + QUIET_DAYS) * DAY
    events += [click(f"other-{d % 31}", T0 + d * DAY, "page_view") for d in range(90 + QUIET_DAYS)]
    events += [click(f"other-{u}", last, "page_view") for u in range(31)]
    return sorted(events, key=lambda v: v["timestamp"])


@pytest.mark.integration
def test_frequent_buyers_who_stop_reach_at_risk_through_a_live_worker(
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
    reader_factory: Callable[[str], TopicReader],
) -> None:
    settings = settings_factory(reevaluate_interval_s=0.5)
    worker = worker_factory(settings)
    worker.wait_ready()
    events = history()
    wait_applied(settings, produce(settings, as_items(settings, events)), worker)

    def at_risk(messages: list[Any]) -> set[bytes]:
        return {
            m.key()
            for m in messages
            if m.value() is not None and orjson.loads(m.value())["segment"] == "at_risk"
        }

    wanted = {u.encode() for u in BUYERS}
    changes = reader_factory(settings.topic_segments).wait_for(
        lambda m: wanted <= at_risk(m), timeout_s=90
    )
    for user, (_, _, _, by_days) in BUYERS.items():
        mine = [orjson.loads(m.value()) for m in changes if m.key() == user.encode()]
        path = [(c["segment"], c["event_time"], c["trigger"]) for c in mine]
        last_order = max(v["timestamp"] for v in events if v["user_id"] == user)
        first_at_risk = next(c for c in mine if c["segment"] == "at_risk")
        assert first_at_risk["trigger"] == "inactivity", path
        silence = (_to_epoch_ms(first_at_risk["event_time"]) - last_order) / DAY
        assert 0 < silence <= by_days, path
        # The change carries the traits that say why: little chance of activity.
        assert first_at_risk["traits"]["p_active_90d"] < 0.5, first_at_risk
    assert worker.stop() == 0
