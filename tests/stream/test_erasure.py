"""Erasure that holds: `segmenter forget`, then the documented rebuild (a new
Redis prefix, a new consumer group, a replay from the beginning), a retrain's
replay and `segmenter export`; the keyed erasure list and what `forget` logs."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from pydantic import SecretStr

from model.registry import load_current
from stream.devtools.embedded import free_port
from stream.erasure import erasure_digest
from stream.redis_client import sync_client_from_url
from stream.settings import Settings
from stream.sinks import ConfluentSink
from stream.topics import ensure_audience_topic, ensure_segment_topics
from stream.training.replay import replay_records
from stream.training.retrain import RetrainConfig, training_events
from stream.worker.app import pipeline_config
from stream.worker.pipeline import BatchProcessor, BatchResult
from stream.worker.records import RawRecord
from stream.worker.rules.audiences import load as load_audiences
from stream.worker.state.store import StateStore
from tests.conftest import WorkerProcess, settings_env
from tests.factories import T0, click, order
from tests.helpers import as_items, produce, raw_records, wait_applied
from tests.stream.test_cli import segmenter
from tests.stream.test_races import ForgetMidBatch

BUYERS = "audiences:\n  - name: buyers\n    when: 'order_count >= 1.0'\n"


def by_user(topic_records: Sequence[tuple[Any, ...]], user: bytes) -> list[bytes | None]:
    return [value for _, key, value, *_ in topic_records if key == user]


def read_all(settings: Settings, topic: str) -> list[tuple[Any, ...]]:
    """Every record now in ``topic``, to the end of each partition."""
    return list(replay_records(settings.kafka_client_config(), [topic], idle_timeout_s=30))


async def drop_prefix(settings: Settings) -> None:
    store = StateStore.from_settings(settings)
    try:
        await store.delete_prefix()
    finally:
        await store.close()


@pytest.mark.integration
def test_an_erased_user_stays_erased_through_a_rebuild_a_retrain_and_an_export(
    tmp_path: Path,
    prefix: str,
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
) -> None:
    audiences = tmp_path / "audiences.yaml"
    audiences.write_text(BUYERS)
    topics: dict[str, Any] = {
        "segment_topics": True,
        "segment_topic_template": f"segments-{prefix}.{{segment}}",
        "audiences_path": audiences,
    }
    settings = settings_factory(**topics)
    per_segment = ensure_segment_topics(settings, load_current(settings.model_dir).classes)
    history = [
        order("erin", T0, total=900.0),
        click("erin", T0 + 1000),
        order("bob", T0 + 2000, total=40.0),
        click("carl", T0 + 3000),
    ]
    worker = worker_factory(settings)
    worker.wait_ready()
    ends = produce(settings, as_items(settings, history))
    wait_applied(settings, ends, worker)
    out = segmenter("forget", "erin", env=settings_env(settings))
    assert out.returncode == 0 and "state deleted" in out.stdout, out.stderr
    worker.stop()

    # The rebuild as deploy/README.md has it: a new prefix and a new group,
    # replaying the same topics from the beginning. The erasure list's own
    # prefix and key stay as they were.
    port = free_port()
    rebuilt = settings_factory(
        **topics,
        redis_prefix=f"{prefix}-rebuilt",
        group_id=f"{settings.group_id}-rebuilt",
        metrics_port=port,
    )
    try:
        again = worker_factory(rebuilt)
        again.wait_ready()
        wait_applied(rebuilt, ends, again)
        api = f"http://127.0.0.1:{port}/users"
        assert requests.get(f"{api}/bob", timeout=10).status_code == 200
        assert requests.get(f"{api}/erin", timeout=10).status_code == 404

        # Nothing for erin on any output topic after her tombstone (the rebuild
        # published everyone else's changes again before its commits).
        assert by_user(read_all(rebuilt, rebuilt.topic_segments), b"bob")[1:]  # republished
        for topic in [rebuilt.topic_segments, *per_segment, rebuilt.topic_audiences]:
            erin = by_user(read_all(rebuilt, topic), b"erin")
            assert None in erin, topic
            assert erin[erin.index(None) :] == [None] * (len(erin) - erin.index(None)), topic

        # A retrain's replay: her events never become training rows.
        client = sync_client_from_url(rebuilt.redis_url)
        try:
            users = {e.user_id for e in training_events(rebuilt, RetrainConfig(), client)}
        finally:
            client.close()
        assert users == {"bob", "carl"}

        # An export of the inputs and of the segments topic: nothing of hers.
        path = tmp_path / "export.jsonl"
        names = ",".join([rebuilt.topic_clickstream, rebuilt.topic_orders, rebuilt.topic_segments])
        done = segmenter("export", "--topic", names, "--out", str(path), env=settings_env(rebuilt))
        assert done.returncode == 0, done.stderr
        rows = [orjson.loads(line) for line in path.read_bytes().splitlines()]
        assert {r["key"] for r in rows} == {"bob", "carl"}
        assert all(r["value"].get("user_id") != "erin" for r in rows)
    finally:
        asyncio.run(drop_prefix(rebuilt))


@pytest.mark.integration
def test_the_erasure_list_is_keyed_and_forget_logs_no_digest(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory()
    out = segmenter("forget", "guessable-42", env=settings_env(settings))
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stderr.splitlines() if "forgotten" in x)
    assert not re.search(r"[0-9a-f]{8}", line), line  # no digest, not even a prefix

    async def members() -> list[bytes]:
        store = StateStore.from_settings(settings)
        try:
            return [m for key in store.keys.all_erased() for m in await store._r.zrange(key, 0, -1)]
        finally:
            await store.close()

    (member,) = asyncio.run(members())
    unkeyed = hashlib.blake2b(b"guessable-42", digest_size=16, person=b"segmenter-erased")
    assert member != unkeyed.digest()
    assert settings.erasure_key is not None
    key = settings.erasure_key.get_secret_value().encode()
    assert member == erasure_digest(key, "guessable-42")
    # Under its own prefix, which a rebuild keeps; the state's prefix holds none of it.
    assert asyncio.run(members_under(settings, settings.redis_prefix + ":")) == []

    # Another key cannot read the list: `forget` refuses instead of missing it.
    other = settings.model_copy(update={"erasure_key": SecretStr("x" * 32)})
    refused = segmenter("forget", "guessable-42", env=settings_env(other))
    assert refused.returncode != 0 and "another key" in refused.stderr
    # ... and so does a worker, which would otherwise miss every entry.
    refused = segmenter("worker", env=settings_env(other), timeout=60)
    assert refused.returncode != 0 and "another key" in refused.stderr
    nokey = settings.model_copy(update={"erasure_key": None})
    refused = segmenter("forget", "someone", env=settings_env(nokey))
    assert refused.returncode != 0 and "SEGMENTER_ERASURE_KEY" in refused.stderr


async def members_under(settings: Settings, start: str) -> list[bytes]:
    store = StateStore.from_settings(settings)
    try:
        return [k async for k in store._r.scan_iter(match=f"{start}*erased*")]
    finally:
        await store.close()


def test_start_up_refuses_retention_longer_than_the_erasure_list_keeps(
    settings_factory: Callable[..., Settings],
) -> None:
    env = settings_env(settings_factory())
    env |= {"SEGMENTER_RETENTION_DAYS": "500", "SEGMENTER_FORGET_DENYLIST_DAYS": "400"}
    out = segmenter("settings", env=env)  # what any command loads first
    assert out.returncode != 0
    lines = [x for x in out.stderr.splitlines() if "SEGMENTER_RETENTION_DAYS" in x]
    assert len(lines) == 1 and "raise SEGMENTER_FORGET_DENYLIST_DAYS to at least 500" in lines[0]


@pytest.mark.integration
def test_a_user_erased_mid_batch_is_tombstoned_again_on_every_output_topic(
    tmp_path: Path,
    prefix: str,
    settings_factory: Callable[..., Settings],
) -> None:
    path = tmp_path / "audiences.yaml"
    path.write_text(BUYERS)
    settings = settings_factory(
        segment_topics=True,
        segment_topic_template=f"segments-{prefix}.{{segment}}",
        audiences_path=path,
    )
    model = load_current(settings.model_dir)
    per_segment = ensure_segment_topics(settings, model.classes)
    ensure_audience_topic(settings)
    config = pipeline_config(settings, audiences=load_audiences(path, model.classes))

    async def run(batch: list[RawRecord], sink: Any) -> BatchResult:
        store = StateStore.from_settings(settings)
        try:
            return await BatchProcessor(store, sink, lambda: model, config).process(batch)
        finally:
            await store.close()

    plain = ConfluentSink(settings.kafka_client_config())
    try:
        asyncio.run(run(raw_records(settings, [click("erin", T0)]), plain))
    finally:
        plain.close()
    # erin is forgotten after the batch published her order's changes (segment,
    # per-segment and audience events) and before its commit.
    sink = ForgetMidBatch(settings, "erin")
    try:
        batch = raw_records(settings, [order("erin", T0 + 1000, total=900.0)], start=1)
        result = asyncio.run(run(batch, sink))
    finally:
        sink.close()
    assert sink.fired and result.attempts == 2
    published = set()
    for topic in [settings.topic_segments, *per_segment, settings.topic_audiences]:
        erin = by_user(read_all(settings, topic), b"erin")
        if any(v is not None for v in erin):  # the topics the batch published her to
            # Changes of the refused commit, the tombstone, then the re-run's
            # (erased without the list here, her events count again).
            published.add(topic)
            assert None in erin, topic
    assert {settings.topic_segments, settings.topic_audiences} <= published
