"""Faults that are no record's: the worker stalls, shows it, and loses and
dead-letters nothing. Real processes throughout: a 3-master Redis Cluster
with AOF whose masters are all SIGKILLed, a broken model promoted, output
topics deleted and recreated."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import orjson
import pytest
from confluent_kafka.admin import AdminClient

from model.registry import (
    bootstrap_dir,
    ensure_serving_model,
    load_current,
    read_manifest,
    set_current,
)
from stream.devtools.embedded import EmbeddedKafka, EmbeddedRedisCluster, free_port
from stream.settings import Settings
from stream.topics import ensure_segment_topics
from stream.worker.app import AGENT_DIED_EXIT
from stream.worker.state.store import StateStore
from tests.conftest import TopicReader, WorkerProcess, settings_env
from tests.factories import T0, order
from tests.faults.proxy import TcpProxy
from tests.faults.scenario import (
    PacedStream,
    backlog,
    finish_and_account,
    history,
    wait_progress,
)
from tests.faults.test_outages import proxied_broker  # noqa: F401 (a fixture)
from tests.helpers import as_items, produce
from tests.stream.test_cli import segmenter
from tests.stream.test_observability import get, total

pytestmark = pytest.mark.integration

BOOTSTRAP = read_manifest(bootstrap_dir())["version"]


def readyz(port: int) -> tuple[int, dict[str, object]]:
    status, body = get(f"http://127.0.0.1:{port}/readyz")
    return status, (orjson.loads(body) if body else {})


def processing_reason(port: int) -> str | None:
    _, body = readyz(port)
    checks = body.get("checks", {})
    assert isinstance(checks, dict)
    reason = checks.get("processing", {}).get("reason")
    return str(reason) if reason is not None else None


def no_dead_letters(settings: Settings, reader_factory: Callable[[str], TopicReader]) -> None:
    dead = reader_factory(settings.topic_dlq).poll(2.0)
    assert dead == [], [dict(m.headers() or []) for m in dead]


@pytest.fixture
def aof_cluster() -> Iterator[EmbeddedRedisCluster]:
    cluster = EmbeddedRedisCluster(masters=3, appendonly=True).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def test_every_master_of_a_cluster_killed_for_40_s_stalls_shows_and_loses_nothing(
    aof_cluster: EmbeddedRedisCluster,
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
    reader_factory: Callable[[str], TopicReader],
) -> None:
    port = free_port()
    settings = settings_factory(
        batch_max=100,
        redis_url=aof_cluster.url,
        redis_cluster=True,
        metrics_port=port,
        housekeeping_interval_s=0.5,
    )
    sent = history(settings, users=120)
    stream = PacedStream(settings, sent, head=len(sent) // 4, rate=400)
    worker = worker_factory(settings)
    worker.wait_ready()
    at_kill = wait_progress(settings, len(sent) // 3, [worker])

    aof_cluster.kill()  # every master, mid-stream: no shutdown, no save
    killed = time.monotonic()
    seen: list[float] = []
    reasons: set[str | None] = set()
    while time.monotonic() - killed < 40:
        assert worker.proc.poll() is None, worker.log()[-3000:]
        status, _ = readyz(port)
        reason = processing_reason(port)
        if status == 503 and reason is not None and reason.startswith("stalled: redis"):
            seen.append(total(port, "segmenter_stalled_seconds", reason="redis"))
            reasons.add(reason)
        time.sleep(2)
    assert len(seen) >= 3, f"/readyz never named the Redis stall: {reasons}"
    assert seen[-1] > seen[0] > 0, seen  # the stall grows while it lasts
    assert "processing stalled for" in worker.log()
    aof_cluster.restart()

    finish_and_account(
        settings,
        sent,
        stream.join(),
        worker,
        reader_factory,
        f"all 3 cluster masters SIGKILLed at {at_kill}/{len(sent)} for 40 s",
    )
    no_dead_letters(settings, reader_factory)
    deadline = time.monotonic() + 30
    while readyz(port)[0] != 200:
        assert time.monotonic() < deadline, readyz(port)
        time.sleep(0.5)
    assert total(port, "segmenter_stalled_seconds", reason="redis") == 0
    assert worker.stop() == 0


def add_nan_version(model_dir: Path, version: str) -> None:
    """The bootstrap model with one NaN in its first layer: every score is NaN."""
    ensure_serving_model(model_dir)
    target = model_dir / version
    shutil.copytree(bootstrap_dir(), target)
    manifest = orjson.loads((target / "manifest.json").read_bytes())
    manifest["version"] = version
    (target / "manifest.json").write_bytes(orjson.dumps(manifest))
    with np.load(target / "weights.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["kernel_0"] = arrays["kernel_0"].copy()
    arrays["kernel_0"][0, 0] = np.nan
    np.savez(target / "weights.npz", **arrays)  # type: ignore[arg-type]


def test_a_nan_model_promoted_is_refused_and_the_old_one_serves_on(
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
    reader_factory: Callable[[str], TopicReader],
) -> None:
    port = free_port()
    settings = settings_factory(batch_max=100, metrics_port=port, housekeeping_interval_s=0.5)
    add_nan_version(settings.model_dir, "v-nan")
    sent = history(settings, users=80)
    stream = PacedStream(settings, sent, head=len(sent) // 4, rate=800)
    worker = worker_factory(settings)
    worker.wait_ready()
    wait_progress(settings, len(sent) // 3, [worker])

    # The promotion command refuses it outright...
    out = segmenter("models", "promote", "v-nan", "--reason", "test", env=settings_env(settings))
    assert out.returncode != 0 and "not finite" in out.stderr, out.stderr
    # ...and a pointer moved by hand is refused by the worker, which keeps its model.
    set_current(settings.model_dir, "v-nan")
    deadline = time.monotonic() + 30
    while total(port, "segmenter_model_reloads_total", outcome="rejected") < 1:
        assert time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.25)
    assert total(port, "segmenter_model_info", version=BOOTSTRAP) == 1
    assert f"model v-nan refused, still serving {BOOTSTRAP}" in worker.log()

    finish_and_account(
        settings, sent, stream.join(), worker, reader_factory, "a NaN model promoted"
    )
    no_dead_letters(settings, reader_factory)
    changes = reader_factory(settings.topic_segments).poll(1.0)
    assert {orjson.loads(m.value())["model_version"] for m in changes} == {BOOTSTRAP}
    assert worker.stop() == 0


@pytest.mark.brokers("kafka")  # on Tansu, publishing went on through the deletion (tried)
def test_output_topics_deleted_mid_stream_and_recreated_stall_and_lose_nothing(
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
    reader_factory: Callable[[str], TopicReader],
) -> None:
    port = free_port()
    settings = settings_factory(
        batch_max=100, segment_topics=True, metrics_port=port, housekeeping_interval_s=0.5
    )
    sent = history(settings, users=80)
    stream = PacedStream(settings, sent, head=len(sent) // 4, rate=400)
    worker = worker_factory(settings)
    worker.wait_ready()
    at_delete = wait_progress(settings, len(sent) // 4, [worker])

    classes = load_current(settings.model_dir).classes
    names = [settings.segment_topic_template.format(segment=c) for c in classes]
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    for fut in admin.delete_topics(names).values():
        fut.result(timeout=30)
    deadline = time.monotonic() + 60
    seen: list[float] = []
    while len(seen) < 3:
        assert time.monotonic() < deadline, (readyz(port), worker.log()[-3000:])
        reason = processing_reason(port)
        if readyz(port)[0] == 503 and reason is not None and reason.startswith("stalled: kafka"):
            seen.append(total(port, "segmenter_stalled_seconds", reason="kafka"))
        time.sleep(1)
    assert seen[-1] > seen[0] > 0, seen
    ensure_segment_topics(settings, classes)  # recreated, empty

    finish_and_account(
        settings,
        sent,
        stream.join(),
        worker,
        reader_factory,
        f"segments.* deleted at {at_delete}/{len(sent)} and recreated",
    )
    no_dead_letters(settings, reader_factory)
    assert total(port, "segmenter_stalled_seconds", reason="kafka") == 0
    assert worker.stop() == 0


def test_sigterm_stops_a_worker_stalled_on_redis(
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
    redis_url: str,
) -> None:
    real = urlsplit(redis_url)
    proxy = TcpProxy(real.port or 6379)
    try:
        port = free_port()
        direct = settings_factory(batch_max=100, metrics_port=port, housekeeping_interval_s=0.5)
        via_proxy = direct.model_copy(
            update={"redis_url": f"redis://127.0.0.1:{proxy.port}{real.path}"}
        )
        sent, _ = backlog(direct)
        worker = worker_factory(via_proxy)
        worker.wait_ready()
        wait_progress(direct, len(sent) // 4, [worker])
        proxy.cut()
        deadline = time.monotonic() + 60
        while not (processing_reason(port) or "").startswith("stalled: redis"):
            assert time.monotonic() < deadline, (readyz(port), worker.log()[-3000:])
            time.sleep(0.5)
        worker.proc.send_signal(signal.SIGTERM)
        # Bounded only so that a hang fails the test instead of the suite.
        deadline = time.monotonic() + 60
        while worker.proc.poll() is None:
            assert time.monotonic() < deadline, worker.log()[-6000:]
            time.sleep(0.5)
        assert worker.proc.returncode == 0, worker.log()[-3000:]
    finally:
        proxy.close()


def test_a_fatal_error_mid_run_stops_the_worker_with_a_non_zero_status(
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
) -> None:
    """Another deployment bound the Redis prefix to other classes after this worker
    started: its first batch finds out, and the process exits 70 for a restart
    (which then refuses to start, naming the prefix), never idling as if alive."""
    port = free_port()
    settings = settings_factory(metrics_port=port)
    worker = worker_factory(settings)
    worker.wait_ready()

    async def rebind() -> None:
        store = StateStore.from_settings(settings)
        try:
            await store._r.hset(store.keys.meta, "classes", orjson.dumps(["other", "classes"]))
        finally:
            await store.close()

    asyncio.run(rebind())
    produce(settings, as_items(settings, [order("u1", T0, total=10.0)]))
    # Bounded only so that a worker idling for ever fails the test.
    assert worker.proc.wait(60) == AGENT_DIED_EXIT, worker.log()[-3000:]
    assert "the agent died (StoreMismatch)" in worker.log()


def test_the_broker_away_for_60_s_stalls_shows_and_loses_nothing(
    proxied_broker: tuple[EmbeddedKafka, TcpProxy],  # noqa: F811 (the imported fixture)
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
) -> None:
    _, proxy = proxied_broker
    port = free_port()
    settings = settings_factory(
        kafka_url=f"kafka://127.0.0.1:{proxy.port}",
        batch_max=100,
        metrics_port=port,
        housekeeping_interval_s=0.5,
    )
    sent, ends = backlog(settings)
    worker = worker_factory(settings)
    worker.wait_ready()
    at_cut = wait_progress(settings, len(sent) // 4, [worker])
    proxy.cut()
    cut = time.monotonic()
    seen: list[float] = []
    while time.monotonic() - cut < 60:
        assert worker.proc.poll() is None, worker.log()[-3000:]
        reason = processing_reason(port)
        if readyz(port)[0] == 503 and reason is not None and reason.startswith("stalled: kafka"):
            seen.append(total(port, "segmenter_stalled_seconds", reason="kafka"))
        time.sleep(2)
    assert len(seen) >= 3 and seen[-1] > seen[0] > 0, seen
    proxy.restore()
    reader = TopicReader(settings.bootstrap_servers, settings.topic_segments)
    try:
        label = f"broker cut at {at_cut}/{len(sent)} for 60 s"
        finish_and_account(settings, sent, ends, worker, lambda _: reader, label)
    finally:
        reader.close()
    dlq = TopicReader(settings.bootstrap_servers, settings.topic_dlq)
    try:
        assert dlq.poll(2.0) == []
    finally:
        dlq.close()
    assert worker.stop() == 0
