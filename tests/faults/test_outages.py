"""Dependencies go away mid-stream and come back: Redis for 10 s, the broker connection."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest

from stream.devtools.embedded import EmbeddedKafka, free_port
from stream.settings import Settings
from tests.conftest import TopicReader, WorkerProcess
from tests.faults.proxy import TcpProxy
from tests.faults.scenario import (
    applied_records,
    assert_commits_never_ahead_of_state,
    backlog,
    finish_and_account,
    wait_progress,
)

pytestmark = pytest.mark.integration


@pytest.mark.brokers("tansu", "kafka")
def test_redis_unreachable_for_ten_seconds_pauses_then_resumes(
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
    reader_factory: Callable[[str], TopicReader],
    redis_url: str,
) -> None:
    real = urlsplit(redis_url)
    proxy = TcpProxy(real.port or 6379)
    try:
        direct = settings_factory(batch_max=100)
        via_proxy = direct.model_copy(
            update={"redis_url": f"redis://127.0.0.1:{proxy.port}{real.path}"}
        )
        sent, ends = backlog(direct)
        worker = worker_factory(via_proxy)
        worker.wait_ready()
        wait_progress(direct, len(sent) // 4, [worker])

        proxy.cut()
        frozen = applied_records(direct)
        time.sleep(10)
        assert worker.proc.poll() is None, "the worker must not crash while Redis is away"
        assert applied_records(direct) == frozen, "nothing can be applied without Redis"
        assert_commits_never_ahead_of_state(direct, ends)
        retries = len(re.findall(r"batch not applied, retry \d+ in", worker.log()))
        assert 3 <= retries <= 20, (
            f"{retries} retries in 10 s: backoff should neither spin nor stall"
        )
        proxy.restore()

        finish_and_account(
            direct,
            sent,
            ends,
            worker,
            reader_factory,
            f"Redis cut at {frozen}/{len(sent)} for 10 s",
        )
        assert_commits_never_ahead_of_state(direct, ends)
        assert worker.stop() == 0
    finally:
        proxy.close()


@pytest.fixture
def proxied_broker() -> Iterator[tuple[EmbeddedKafka, TcpProxy]]:
    """A broker of our own that advertises the proxy, so every client connection goes through it."""
    proxy_port = free_port()
    broker = EmbeddedKafka(advertised_port=proxy_port).start()
    proxy = TcpProxy(broker.port, listen_port=proxy_port)
    try:
        yield broker, proxy
    finally:
        proxy.close()
        broker.stop()


def test_broker_connection_cut_and_restored_loses_nothing(
    proxied_broker: tuple[EmbeddedKafka, TcpProxy],
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
) -> None:
    _, proxy = proxied_broker
    settings = settings_factory(kafka_url=f"kafka://127.0.0.1:{proxy.port}", batch_max=100)
    sent, ends = backlog(settings)
    worker = worker_factory(settings)
    worker.wait_ready()
    wait_progress(settings, len(sent) // 4, [worker])
    proxy.cut()
    time.sleep(5)
    assert worker.proc.poll() is None, "the worker must ride out a broker outage"
    proxy.restore()
    reader = TopicReader(settings.bootstrap_servers, settings.topic_segments)
    try:
        finish_and_account(settings, sent, ends, worker, lambda _: reader, "broker cut for 5 s")
    finally:
        reader.close()
    assert worker.stop() == 0
