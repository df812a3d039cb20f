"""Rule audiences end to end: a real worker, the broker and Redis."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from model.registry import load_current
from stream.devtools.embedded import free_port
from stream.settings import Settings
from stream.worker.state.store import StateStore
from tests.conftest import REPO, TopicReader, WorkerProcess
from tests.factories import DAY, T0, click, order
from tests.helpers import as_items, produce, wait_applied
from tests.stream.test_traits import offline_scoring

BIG_RECENT = """\
audiences:
  - name: big_recent
    when: 'spend_90d >= 500.0 && days_since_last_order <= 14.0'
    description: spent 500 in 90 days and ordered in the last 14
"""


def api(port: int, path: str, status: int = 200) -> Any:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            assert resp.status == status
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        assert exc.code == status, exc.read()
        return json.loads(exc.read())


def _schema() -> dict[str, Any]:
    text = resources.files("stream").joinpath("schemas/audience-event.schema.json").read_text()
    return json.loads(text)


@pytest.mark.brokers("tansu", "kafka")
@pytest.mark.integration
def test_a_user_enters_on_an_order_and_leaves_as_stream_time_passes(
    tmp_path: Path,
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
    reader_factory: Callable[[str], TopicReader],
) -> None:
    path = tmp_path / "audiences.yaml"
    path.write_text(BIG_RECENT)
    port = free_port()
    settings = settings_factory(audiences_path=path, reevaluate_interval_s=0.5, metrics_port=port)
    worker = worker_factory(settings)
    worker.wait_ready()

    history = [
        order("big", T0, total=300.0),
        order("big", T0 + DAY, total=300.0),  # 597.7 in 90 days (decayed): in
        order("small", T0 + DAY, total=120.0),  # below the threshold: never in
    ]
    wait_applied(settings, produce(settings, as_items(settings, history)), worker)
    reader = reader_factory(settings.topic_audiences)
    entered = reader.wait_for(lambda m: any(x.key() == b"big" for x in m))
    first = orjson.loads(entered[0].value())
    assert first["audience"] == "big_recent" and first["action"] == "entered"
    assert first["event_time"] == "2024-01-02T00:00:00Z" and first["version"] == 1

    async def state() -> tuple[Any, Any]:
        store = StateStore.from_settings(settings)
        try:
            return await store.get("big"), await store.audience_counts()
        finally:
            await store.close()

    rec, counts = asyncio.run(state())
    assert rec.audiences == ("big_recent",) and counts == {"big_recent": 1}
    # The read API: the audience's members, and the user's audiences.
    assert api(port, "/audiences/big_recent/users")["users"] == ["big"]
    assert api(port, "/users/big")["audiences"] == ["big_recent"]
    assert api(port, "/users/small")["audiences"] == []
    assert api(port, "/audiences/no_such/users", status=404)["error"] == "unknown audience"
    # SREs: enter/exit counts, and members per audience (refreshed by housekeeping).
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert 'segmenter_audience_changes_total{action="entered",audience="big_recent"} 1.0' in text
    assert "segmenter_audience_users" in text

    # Other users' clicks move stream time 20 days on (stream time is kept per
    # partition: 31 users reach every partition whatever the partitioner);
    # "big" sends nothing more, and leaves once 14 days pass its last order.
    # 20, not 21: at 21 days of silence the user is re-scored for inactivity
    # (model.segments.DEFAULT_REEVALUATE_DAYS), and the audience step below
    # must stay their last scoring.
    others = [
        click(f"other-{u}", T0 + DAY + d * DAY, "page_view") for d in (5, 10, 20) for u in range(31)
    ]
    wait_applied(settings, produce(settings, as_items(settings, others)), worker)
    changes = reader.wait_for(
        lambda m: any(b'"exited"' in (x.value() or b"") for x in m if x.key() == b"big"),
        timeout_s=60,
    )
    big = [orjson.loads(m.value()) for m in changes if m.key() == b"big"]
    for msg in big:
        jsonschema.validate(msg, _schema())
    assert [(m["action"], m["version"]) for m in big] == [("entered", 1), ("exited", 2)]
    # 14 days after the last order, to the millisecond: time alone moved them out.
    assert big[1]["event_time"] == "2024-01-16T00:00:00.001000Z"
    assert not any(m.key() == b"small" for m in changes)
    rec, counts = asyncio.run(state())
    assert rec.audiences == () and counts == {}
    assert api(port, "/audiences/big_recent/users")["users"] == []
    # The read API's probabilities and traits are those of the last scoring,
    # here the audience step that moved "big" out, recomputed by the worker
    # with its served model (tests/stream/test_traits.py).
    user = api(port, "/users/big")
    assert user["scored_at"] == big[1]["event_time"]
    probabilities, traits = offline_scoring(
        load_current(settings.model_dir), history, "big", user["scored_at"]
    )
    assert user["probabilities"] == probabilities and user["traits"] == traits
    assert traits["p_purchase_90d"] is not None
    assert worker.stop() == 0

    # Erasure: a tombstone on the audiences topic too.
    from stream.worker.forget import forget

    done = asyncio.run(forget(settings, "big"))
    assert settings.topic_audiences in done.tombstones
    reader.wait_for(lambda m: any(x.key() == b"big" and x.value() is None for x in m))


def test_a_bad_audiences_file_keeps_the_worker_from_starting(tmp_path: Path) -> None:
    path = tmp_path / "audiences.yaml"
    path.write_text("audiences:\n  - name: vip\n    when: 'spend_90d > 500'\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTER_")}
    env |= {
        "HOME": str(tmp_path),
        "SEGMENTER_AUDIENCES_PATH": str(path),
        "SEGMENTER_MODEL_DIR": str(tmp_path / "models"),
        # Nothing listens here: the file must be refused before any connection.
        "SEGMENTER_KAFKA_URL": "kafka://127.0.0.1:1",
        "SEGMENTER_REDIS_URL": "redis://127.0.0.1:1/0",
    }
    out = subprocess.run(
        [sys.executable, "-m", "stream.cli", "worker"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert out.returncode != 0
    # The start-up log line of the settings, then the reason, on one line.
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("Invalid audiences: "), out.stderr
    assert "audiences.yaml:2: audience 'vip'" in lines[-1] and "(double, int)" in lines[-1]
    assert "Traceback" not in out.stderr and "settings:" in lines[0] and len(lines) == 2

    check = subprocess.run(
        [sys.executable, "-m", "stream.cli", "audiences", "check", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert check.returncode == 2 and check.stderr.strip() == lines[-1].replace(
        "Invalid audiences: ", "segmenter: "
    )


@pytest.mark.integration
def test_a_replay_in_big_batches_gives_the_same_audience_events(
    settings_factory: Callable[..., Settings],
    reader_factory: Callable[[str], TopicReader],
) -> None:
    from stream.worker.rules.audiences import parse
    from tests.stream.test_semantics import loyal_buyer, others_traffic, run

    text = BIG_RECENT + (
        "  - name: lapsed_buyer\n"
        "    when: 'order_count >= 1.0 && days_since_last_activity > 30.0'\n"
        "  - name: engaged\n"
        '    when: \'segment in ["high_value", "regular"] || product_views_30d >= 3.0\'\n'
    )
    history = loyal_buyer("loyal") + loyal_buyer("light", until_day=20) + others_traffic(60, 120)
    history.sort(key=lambda v: v["timestamp"])

    def events(mode: str, batches: list[list[dict[str, Any]]], sweep_every: int) -> list[Any]:
        settings = settings_factory(
            redis_prefix=f"{settings_factory().redis_prefix}-{mode}",
            topic_audiences=f"audiences-{mode}-{os.getpid()}-{id(batches)}",
        )
        from stream.topics import ensure_audience_topic

        ensure_audience_topic(settings)
        audiences = parse(text, "a.yaml", ("high_value", "regular", "potential", "at_risk"))
        asyncio.run(run(settings, batches, sweep_every, audiences))
        # Every publish was acknowledged before run() returned: read them all.
        reader = reader_factory(settings.topic_audiences)
        reader.wait_for(lambda m: len(m) > 0)
        for _ in range(3):
            reader.poll(1.0)
        msgs = [orjson.loads(m.value()) for m in reader.messages]
        return sorted(
            (m["user_id"], m["version"], m["audience"], m["action"], m["event_time"]) for m in msgs
        )

    live = events("live", [[v] for v in history], sweep_every=1)
    replayed = events("replay", [history[i : i + 40] for i in range(0, len(history), 40)], 3)
    assert live == replayed
    kinds = {(audience, action) for _, _, audience, action, _ in live}
    # Entered and left by events and by time alone, for each kind of condition.
    assert {("big_recent", "entered"), ("big_recent", "exited")} <= kinds
    assert ("lapsed_buyer", "entered") in kinds and ("engaged", "entered") in kinds


@pytest.mark.integration
def test_the_file_is_reloaded_on_change_and_on_sighup_and_a_bad_one_is_kept_out(
    tmp_path: Path,
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
    reader_factory: Callable[[str], TopicReader],
) -> None:
    import signal

    path = tmp_path / "audiences.yaml"
    path.write_text(BIG_RECENT)
    settings = settings_factory(audiences_path=path, housekeeping_interval_s=0.3)
    worker = worker_factory(settings)
    worker.wait_ready()

    def logged(text: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in worker.log():
            assert time.monotonic() < deadline, f"{text!r} not logged:\n{worker.log()[-2000:]}"
            time.sleep(0.2)

    path.write_text("audiences:\n  - name: broken\n    when: 'spend_90d >'\n")
    logged("audiences not reloaded, still using the 1 from before")
    path.write_text("audiences:\n  - name: any_order\n    when: 'order_count >= 1.0'\n")
    logged("audiences reloaded from")
    produce(settings, as_items(settings, [order("ann", T0, total=10.0)]))
    got = reader_factory(settings.topic_audiences).wait_for(lambda m: len(m) > 0)
    assert orjson.loads(got[0].value())["audience"] == "any_order"  # the new set serves

    before = worker.log().count("audiences reloaded from")
    worker.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while worker.log().count("audiences reloaded from") == before:
        assert time.monotonic() < deadline, worker.log()[-2000:]
        time.sleep(0.2)
    assert worker.stop() == 0
