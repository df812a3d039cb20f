"""Security and privacy: erasure, pseudonymisation, retention, secrets, client security config."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson
import pytest

from model.registry import load_current
from stream.core.events import iso
from stream.settings import Settings, SettingsError, load_settings
from stream.topics import ensure_segment_topics
from stream.worker.app import faust_credentials
from stream.worker.pipeline import BatchResult
from stream.worker.state.store import StateStore, UserRecord
from tests.conftest import TopicReader, WorkerProcess, settings_env
from tests.factories import DAY, T0, click, order
from tests.helpers import as_items, produce, raw_records, wait_applied
from tests.helpers import feed as feed_batch
from tests.stream.test_cli import segmenter


async def feed(
    settings: Settings,
    values: list[dict],  # type: ignore[type-arg]
    start: int = 0,
    sweep: bool = False,
) -> BatchResult:
    return await feed_batch(settings, raw_records(settings, values, start), sweep=sweep)


async def counts(settings: Settings) -> dict[str, int]:
    store = StateStore.from_settings(settings)
    try:
        return await store.segment_counts()
    finally:
        await store.close()


async def dump_prefix(settings: Settings) -> bytes:
    """Every key and value under the test's prefix, as one blob to search."""
    store = StateStore.from_settings(settings)
    r = store._r
    out = b""
    try:
        async for key in r.scan_iter(match=f"{settings.redis_prefix}:*"):
            kind = (await r.type(key)).decode()
            out += key + b"\n"
            if kind == "hash":
                out += b"".join(k + v for k, v in (await r.hgetall(key)).items())
            elif kind == "zset":
                out += b"".join(await r.zrange(key, 0, -1))
            elif kind == "string":
                out += await r.get(key)
        return out
    finally:
        await store.close()


@pytest.mark.brokers("tansu", "kafka")
@pytest.mark.integration
def test_forget_tombstones_every_output_topic_and_a_replay_does_not_bring_the_user_back(
    settings_factory: Callable[..., Settings],
    prefix: str,
    reader_factory: Callable[[str], TopicReader],
) -> None:
    settings = settings_factory(
        segment_topics=True,
        segment_topic_template=f"segments-{prefix}.{{segment}}",
    )
    classes = load_current(settings.model_dir).classes
    per_segment = ensure_segment_topics(settings, classes)
    history = [click("erin", T0), order("erin", T0 + 1000, total=900.0), click("bob", T0)]
    asyncio.run(feed(settings, history))
    before = asyncio.run(counts(settings))
    out = segmenter("forget", "erin", env=settings_env(settings))
    assert out.returncode == 0, out.stderr
    assert "state deleted" in out.stdout

    async def check() -> None:
        store = StateStore.from_settings(settings)
        try:
            assert await store.get("erin") is None
            assert await store.get("bob") is not None
            assert "erin" not in dict(await store.due_for_reevaluation(0, T0 + 999 * DAY, 100))
            after = await store.segment_counts()
            assert sum(after.values()) == sum(before.values()) - 1
            assert await store.forgotten_total() == 1
        finally:
            await store.close()

    asyncio.run(check())
    # A tombstone on every output topic, after whatever the user had there.
    seen = {}
    for topic in [settings.topic_segments, *per_segment]:
        assert topic in out.stdout
        msgs = reader_factory(topic).wait_for(
            lambda m: any(x.key() == b"erin" and x.value() is None for x in m)
        )
        seen[topic] = [m for m in msgs if m.key() == b"erin"]
        assert seen[topic][-1].value() is None, topic
    # ... including the segment she had entered, where her entry is now covered.
    entered = seen[per_segment[classes.index("high_value")]]
    assert any(m.value() is not None for m in entered)

    # A replay (a rewound group: the same records again) and a producer's
    # re-send (new offsets) of everything before the erasure: erin stays gone.
    replayed = asyncio.run(feed(settings, history))
    resent = asyncio.run(feed(settings, history, start=10))
    assert replayed.applied == resent.applied == 0
    assert asyncio.run(stored(settings, "erin")) is None
    assert b"erin" not in asyncio.run(dump_prefix(settings))  # only a digest is kept
    # Erin's own new activity, after the erasure, starts her afresh.
    now = int(time.time() * 1000)
    back = asyncio.run(feed(settings, [order("erin", now, total=10.0), click("erin", T0 + 5)], 20))
    assert back.applied == 1
    rec = asyncio.run(stored(settings, "erin"))
    assert rec is not None and rec.state.order_count == 1 and rec.state.events == 1

    again = segmenter("forget", "erin", env=settings_env(settings))
    assert again.returncode == 0 and "state deleted" in again.stdout
    third = segmenter("forget", "erin", env=settings_env(settings))
    assert third.returncode == 0 and "no state was held" in third.stdout


async def stored(settings: Settings, user: str) -> UserRecord | None:
    store = StateStore.from_settings(settings)
    try:
        return await store.get(user)
    finally:
        await store.close()


@pytest.mark.integration
def test_pseudonymised_ids_never_reach_redis_or_the_output_topic(
    settings_factory: Callable[..., Settings], reader_factory: Callable[[str], TopicReader]
) -> None:
    settings = settings_factory(pseudonymize_key="k" * 32)
    result = asyncio.run(feed(settings, [click("alice-raw-id", T0), order("alice-raw-id", T0 + 5)]))
    assert result.applied == 2
    assert b"alice-raw-id" not in asyncio.run(dump_prefix(settings))
    msgs = reader_factory(settings.topic_segments).wait_for(lambda m: len(m) >= 1)
    for m in msgs:
        assert b"alice-raw-id" not in m.key() and b"alice-raw-id" not in m.value()
        assert m.key().startswith(b"p_")
    found = segmenter("user", "alice-raw-id", "--json", env=settings_env(settings))
    assert found.returncode == 0, found.stderr
    assert orjson.loads(found.stdout)["features"]["order_count"] == 1


@pytest.mark.integration
def test_retention_erases_users_inactive_in_event_time_with_a_tombstone(
    settings_factory: Callable[..., Settings], reader_factory: Callable[[str], TopicReader]
) -> None:
    settings = settings_factory(retention_days=100)
    asyncio.run(feed(settings, [order("old", T0), click("back", T0), click("new", T0 + 5 * DAY)]))
    # 120 days on, on the same partition: "old" is past retention and is erased
    # by the sweep; "back" returns after 110 days, so it is erased just before
    # its new event is folded, and starts again from nothing.
    later = [click("new", T0 + 120 * DAY), click("back", T0 + 110 * DAY, session_id="again")]
    asyncio.run(feed(settings, later, start=3, sweep=True))

    async def check() -> None:
        store = StateStore.from_settings(settings)
        try:
            assert await store.get("old") is None and await store.get("new") is not None
            back = await store.get("back")
            assert back is not None and back.state.events == 1 and back.version == 1
            assert sum((await store.segment_counts()).values()) == 2
            assert await store.due_for_reevaluation(0, T0 + 999 * DAY, 100)  # still scheduled
            assert "old" not in dict(await store.due_for_reevaluation(0, T0 + 999 * DAY, 100))
        finally:
            await store.close()

    asyncio.run(check())
    reader = reader_factory(settings.topic_segments)
    msgs = reader.wait_for(
        lambda m: sum(1 for x in m if x.value() is None) >= 2 and len(m) >= 6, timeout_s=30
    )
    for user in ("old", "back"):
        values = [m.value() for m in msgs if m.key() == user.encode()]
        assert values[0] is not None and None in values, (user, values)
    back = [m.value() for m in msgs if m.key() == b"back"]
    cut = back.index(None)
    before, after = back[:cut], back[cut + 1 :]
    # Versions count up to the tombstone, which resets them; then a fresh start.
    assert [orjson.loads(v)["version"] for v in before] == list(range(1, len(before) + 1))
    assert [orjson.loads(v)["version"] for v in after] == [1]
    assert orjson.loads(after[0])["event_time"] == iso(T0 + 110 * DAY)
    late = asyncio.run(feed(settings, [click("new", T0 + 10 * DAY)], start=5))
    assert late.dead_lettered == 1 and late.applied == 0


def test_security_settings_map_to_kafka_and_redis_clients(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ca = tmp_path / "ca.pem"
    ca.write_text("not a real CA, only needs to exist")
    s = Settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="svc",
        kafka_sasl_password="s3cret-kafka",
        redis_url="rediss://redis.example:6380/0",
        redis_password="s3cret-redis",
        redis_ssl_ca_certs=ca,
    )
    conf = s.kafka_client_config()
    assert conf["security.protocol"] == "SASL_PLAINTEXT"
    assert conf["sasl.mechanisms"] == "SCRAM-SHA-512" and conf["sasl.password"] == "s3cret-kafka"
    assert s.redis_client_kwargs() == {"password": "s3cret-redis", "ssl_ca_certs": str(ca)}
    creds = faust_credentials(s)
    assert creds.username == "svc" and creds.mechanism.value == "SCRAM-SHA-512"
    summary = str(s.safe_summary())
    assert "s3cret" not in summary and repr(s).count("s3cret") == 0


def test_sasl_without_credentials_fails_at_start_up_with_what_to_set() -> None:
    with pytest.raises(SettingsError, match="SEGMENTER_KAFKA_SASL_USERNAME"):
        load_settings(kafka_security_protocol="SASL_SSL")


@pytest.mark.integration
def test_secrets_never_appear_in_worker_logs(
    settings_factory: Callable[..., Settings], worker_factory: Callable[[Settings], WorkerProcess]
) -> None:
    settings = settings_factory(
        kafka_sasl_password="kafka-secret-value-123",
        pseudonymize_key="hmac-secret-value-4567890",
        log_level="DEBUG",
    )
    worker = worker_factory(settings)
    worker.wait_ready()
    ends = produce(settings, as_items(settings, [click("zed", T0), click("zed", T0 + 1)]))
    wait_applied(settings, ends, worker)
    assert worker.stop() == 0
    log = worker.log()
    assert "settings:" in log  # the summary is logged, masked
    for secret in ("kafka-secret-value-123", "hmac-secret-value-4567890"):
        assert secret not in log
