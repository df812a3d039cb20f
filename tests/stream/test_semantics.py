"""Segment semantics: time-driven re-evaluation, explanations, playbook, per-segment topics."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from importlib import resources
from typing import Any

import jsonschema
import orjson
import pytest

from model.registry import load_current
from stream.settings import Settings
from stream.sinks import ConfluentSink
from stream.worker.app import pipeline_config
from stream.worker.pipeline import BatchProcessor
from stream.worker.records import RawRecord
from stream.worker.rules.audiences import Audiences
from stream.worker.rules.playbook import PlaybookError, parse
from stream.worker.state.store import StateStore
from tests.conftest import TopicReader, WorkerProcess
from tests.factories import DAY, T0, click, order
from tests.helpers import as_items, produce, wait_applied
from tests.stream.test_traits import CHANGE, EVENT, check_message

CLASSES = ("high_value", "regular", "potential", "at_risk")


def schema(name: str) -> dict[str, Any]:
    text = resources.files("stream").joinpath(f"schemas/{name}.schema.json").read_text()
    return json.loads(text)


def loyal_buyer(user: str, until_day: int = 60) -> list[dict[str, Any]]:
    out = []
    for d in range(0, until_day, 5):
        ts = T0 + d * DAY
        out += [
            click(user, ts, "page_view", session_id=f"{user}{d}"),
            click(user, ts + 10, session_id=f"{user}{d}"),
        ]
        out.append(order(user, ts + 60_000, total=400.0))
    return out


def others_traffic(from_day: int, days: int) -> list[dict[str, Any]]:
    # Stream time is kept per partition, so the traffic that moves it on must
    # reach the inactive user's partition, up to the last day: 31 users, spread
    # over every partition of the test topics whatever the producer's
    # partitioner, and each of them is seen on the last day.
    last = T0 + (from_day + days) * DAY
    return [
        click(f"other-{d % 31}", T0 + (from_day + d) * DAY, "page_view") for d in range(days)
    ] + [click(f"other-{u}", last, "page_view") for u in range(31)]


async def sweep(proc: BatchProcessor) -> list[dict[str, Any]]:
    changes = []
    while True:
        swept = await proc.reevaluate([0], limit=50)
        changes += swept.changes
        if not swept.records:  # nothing more due
            return changes


async def run(
    settings: Settings,
    batches: list[list[dict[str, Any]]],
    sweep_every: int,
    audiences: Audiences | None = None,
) -> list[dict[str, Any]]:
    """Feed batches through one processor, sweeping after every ``sweep_every`` batches."""
    store = StateStore.from_settings(settings)
    sink = ConfluentSink(settings.kafka_client_config())
    model = load_current(settings.model_dir)
    proc = BatchProcessor(
        store,
        sink,
        lambda: model,
        pipeline_config(settings, audiences=audiences),
        clock_ms=lambda: T0 + 400 * DAY,
    )
    changes: list[dict[str, Any]] = []
    offset = 0
    try:
        for i, batch in enumerate(batches):
            records = []
            for v in batch:
                topic = (
                    settings.topic_orders
                    if v["event_type"].startswith("order")
                    else settings.topic_clickstream
                )
                records.append(RawRecord(topic, 0, offset, v["user_id"].encode(), orjson.dumps(v)))
                offset += 1
            changes += (await proc.process(records)).changes
            if (i + 1) % sweep_every == 0:
                changes += await sweep(proc)
        changes += await sweep(proc)
        return changes
    finally:
        sink.close()
        await store.close()


@pytest.mark.integration
def test_inactive_buyer_drifts_to_at_risk_in_stream_time_and_a_replay_agrees(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory()
    history = loyal_buyer("loyal") + others_traffic(60, 120)
    history.sort(key=lambda v: v["timestamp"])
    live = asyncio.run(run(settings, [[v] for v in history], sweep_every=1))  # event by event
    drift = [c for c in live if c["user_id"] == "loyal" and c["trigger"] == "inactivity"]
    assert drift and drift[-1]["segment"] == "at_risk", [
        (c["segment"], c["event_time"]) for c in live if c["user_id"] == "loyal"
    ]
    last_activity = max(v["timestamp"] for v in history if v["user_id"] == "loyal")
    from stream.core.events import _to_epoch_ms

    became_at_risk = _to_epoch_ms(drift[-1]["event_time"])
    assert last_activity + 14 * DAY <= became_at_risk <= last_activity + 121 * DAY

    # A replay in big batches, swept rarely, yields the same changes: each
    # user's whole sequence, event- and time-driven, with the same versions.
    replay_settings = settings_factory(redis_prefix=settings.redis_prefix + "-replay")
    chunks = [history[i : i + 40] for i in range(0, len(history), 40)]
    replayed = asyncio.run(run(replay_settings, chunks, sweep_every=3))

    def key(cs):
        per_user = sorted(cs, key=lambda c: (c["user_id"], c["version"]))
        return [
            (c["user_id"], c["version"], c["segment"], c["event_time"], c["trigger"])
            for c in per_user
        ]

    assert key(replayed) == key(live)
    assert any(c["trigger"] == "events" for c in live)

    async def drop() -> None:
        store = StateStore.from_settings(replay_settings)
        await store.delete_prefix()
        await store.close()

    asyncio.run(drop())


@pytest.mark.integration
def test_worker_sweeps_by_itself_and_publishes_entered_and_exited_events_with_schemas(
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
    reader_factory: Callable[[str], TopicReader],
) -> None:
    # Per-segment topics of this test's own: the default names are shared by
    # every test on the session's broker, tombstones of other users included.
    settings = settings_factory(
        segment_topics=True,
        reevaluate_interval_s=0.5,
        segment_topic_template=f"segments-{uuid.uuid4().hex[:10]}.{{segment}}",
    )
    worker = worker_factory(settings)
    worker.wait_ready()
    history = sorted(loyal_buyer("loyal") + others_traffic(60, 120), key=lambda v: v["timestamp"])
    wait_applied(settings, produce(settings, as_items(settings, history)), worker)

    changes = reader_factory(settings.topic_segments).wait_for(
        lambda m: any(
            orjson.loads(x.value())["trigger"] == "inactivity" for x in m if x.key() == b"loyal"
        ),
        timeout_s=60,
    )
    change_schema = schema("segment-change")
    # Strict JSON (no NaN) and the schema with its date-time format checked:
    # the live worker's own messages, traits included (tests/stream/test_traits.py).
    loyal = [check_message(m.value(), CHANGE) for m in changes if m.key() == b"loyal"]
    for msg in loyal:
        jsonschema.validate(msg, change_schema)
        # The bootstrap's value head: every trait a number (or a date).
        assert msg["traits"]["p_purchase_90d"] is not None and msg["traits"]["p_active_90d"]
        assert msg["traits"]["predicted_spend_90d"] is not None
        assert len(msg["explanation"]) == 3
        assert msg["action"] is None or msg["action"]["action"]
    assert loyal[-1]["segment"] == "at_risk" and loyal[-1]["action"]["action"] == "win_back_offer"
    assert [m["version"] for m in loyal] == list(range(1, len(loyal) + 1))

    event_schema = schema("segment-event")
    entered = reader_factory(settings.segment_topic_template.format(segment="at_risk")).wait_for(
        lambda m: any(x.key() == b"loyal" for x in m)
    )
    for m in entered:
        event = check_message(m.value(), EVENT)
        if event["user_id"] == "loyal" and event["type"] == "segment-entered":
            # The traits of the change that put them there.
            assert event["traits"] == loyal[event["version"] - 1]["traits"]
    exits = [loyal[-1]["previous_segment"]]
    left = reader_factory(settings.segment_topic_template.format(segment=exits[0])).wait_for(
        lambda m: any(
            orjson.loads(x.value())["type"] == "segment-exited" for x in m if x.key() == b"loyal"
        )
    )
    exited = [
        orjson.loads(m.value()) for m in left if m.key() == b"loyal" and b"exited" in m.value()
    ]
    jsonschema.validate(exited[-1], event_schema)
    assert exited[-1]["next_segment"] == "at_risk" and exited[-1]["version"] == loyal[-1]["version"]
    assert worker.stop() == 0


def test_bad_playbook_fails_with_line_and_reason() -> None:
    good = "segments:\n  at_risk:\n    action: win_back\n"
    assert parse(good, "p.yaml", CLASSES).action_for("regular", "at_risk") == {
        "action": "win_back",
        "params": {},
    }
    cases = {
        "segments:\n  at_risk:\n    action: win_back\n  vip:\n    action: x\n": (
            "p.yaml:4",
            "unknown segment 'vip'",
        ),
        "segments:\n  at_risk:\n    acton: win_back\n": ("p.yaml:3", "acton"),
        "transitions:\n  - from: regular\n    to: at_risk\n    action: 5\n": ("p.yaml:4", "action"),
        "segments: [\n": ("p.yaml:2", "not valid YAML"),
        "transitions:\n  - from: nobody\n    to: at_risk\n    action: x\n": (
            "p.yaml:2",
            "unknown segment 'nobody'",
        ),
    }
    for text, (where, why) in cases.items():
        with pytest.raises(PlaybookError) as err:
            parse(text, "p.yaml", CLASSES)
        assert f"{where}:" in str(err.value) and why in str(err.value), str(err.value)


def test_playbook_resolves_transition_then_wildcard_then_segment_default() -> None:
    from stream.worker.rules.playbook import default_path, load

    book = load(default_path(), CLASSES)
    assert book.action_for("high_value", "at_risk")["params"]["channel"] == "account_manager"  # type: ignore[index]
    assert book.action_for("potential", "high_value")["action"] == "vip_welcome"  # type: ignore[index]
    assert book.action_for("regular", "at_risk")["action"] == "win_back_offer"  # type: ignore[index]
    assert book.action_for(None, "potential")["action"] == "first_purchase_nudge"  # type: ignore[index]
