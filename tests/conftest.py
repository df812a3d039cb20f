"""Shared fixtures: a real Kafka-protocol broker and a real Redis, and factories over them.

* Broker: Tansu by default: ``SEGMENTER_TEST_KAFKA_BOOTSTRAP`` if set, else an
  embedded Tansu broker started for the session (and stopped by its PID).
  A test marked ``@pytest.mark.brokers("tansu", "kafka")`` runs once on each;
  "kafka" is one Apache Kafka JVM for the whole session (tests/kafka/fixtures.py),
  started by the first test that needs it. A test may also parametrise
  ``broker`` itself (indirectly) to pick which of its variants run where.
* Redis: ``SEGMENTER_TEST_REDIS_URL`` if set; else the shared server on
  127.0.0.1:6379 if it answers, using db 13 and a unique key prefix per test
  (only that prefix is ever deleted: never FLUSHDB/FLUSHALL); else an embedded
  redis-server.
* Each test gets its own topic names, so tests sharing one broker never see
  each other's records.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from stream.devtools.embedded import (
    EmbeddedKafka,
    EmbeddedRedis,
    EmbeddedRedisCluster,
    spawn_worker,
    stop_process,
)
from stream.settings import Settings
from stream.topics import ensure_topics
from stream.worker.state.store import StateStore
from tests.kafka.fixtures import KafkaUnderTest, kafka_under_test

REPO = Path(__file__).resolve().parents[1]
TEST_REDIS_DB = 13


def _redis_answers(host: str = "127.0.0.1", port: int = 6379) -> bool:
    try:
        with socket.create_connection((host, port), 0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


BROKERS = ("tansu", "kafka")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "brokers(*names): run the test on each named broker (tansu, kafka); "
        "unmarked tests run on Tansu only",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("brokers")
    if marker is None:
        return
    unknown = set(marker.args) - set(BROKERS)
    if unknown or not marker.args:
        raise pytest.UsageError(f"brokers(...) takes names from {BROKERS}, got {marker.args}")
    if "broker" not in metafunc.fixturenames:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: brokers(...) on a test without one")
    metafunc.parametrize("broker", marker.args, indirect=True)


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> str:
    """Which broker this test runs on: "tansu" unless parametrised (see ``brokers``)."""
    name: str = getattr(request, "param", "tansu")
    return name


@pytest.fixture(scope="session")
def tansu_bootstrap() -> Iterator[str]:
    given = os.environ.get("SEGMENTER_TEST_KAFKA_BOOTSTRAP")
    if given:
        yield given
        return
    tansu = EmbeddedKafka().start()
    try:
        yield tansu.bootstrap
    finally:
        tansu.stop()


@pytest.fixture(scope="session")
def apache_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaUnderTest]:
    """One Apache Kafka for the session, with SCRAM, TLS and ACLs beside PLAINTEXT."""
    with kafka_under_test(tmp_path_factory.mktemp("kafka")) as kafka:
        yield kafka


@pytest.fixture
def kafka_bootstrap(broker: str, request: pytest.FixtureRequest) -> str:
    """The PLAINTEXT address of the broker this test runs on."""
    if broker == "kafka":
        kafka: KafkaUnderTest = request.getfixturevalue("apache_kafka")
        return kafka.broker.bootstrap
    bootstrap: str = request.getfixturevalue("tansu_bootstrap")
    return bootstrap


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    given = os.environ.get("SEGMENTER_TEST_REDIS_URL")
    if given:
        yield given
        return
    if _redis_answers():
        yield f"redis://127.0.0.1:6379/{TEST_REDIS_DB}"
        return
    server = EmbeddedRedis().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A Redis Cluster of three masters that this session starts (and stops by PID)."""
    cluster = EmbeddedRedisCluster(masters=3).start()
    try:
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A unique Redis key prefix for this test; its keys are deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name

    async def clean() -> None:
        for each in (name, f"{name}-erasure"):  # the erasure list has its own prefix
            store = StateStore.from_url(redis_url, each)
            try:
                await store.delete_prefix()
            finally:
                await store.close()

    asyncio.run(clean())


@pytest.fixture
def settings_factory(
    kafka_bootstrap: str, redis_url: str, prefix: str, tmp_path: Path
) -> Callable[..., Settings]:
    """Settings for this test: own topics, own prefix, short group timeouts, created topics."""
    suffix = prefix.removeprefix("test-")

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "kafka_url": f"kafka://{kafka_bootstrap}",
            "redis_url": redis_url,
            "redis_prefix": prefix,
            # Kept when a test rebuilds under another redis_prefix, as deploy/README.md says.
            "erasure_prefix": f"{prefix}-erasure",
            "erasure_key": f"erasure-key-of-{suffix}",
            "topic_clickstream": f"clickstream-{suffix}",
            "topic_orders": f"orders-{suffix}",
            "topic_segments": f"customer-segments-{suffix}",
            "topic_dlq": f"segmenter-dlq-{suffix}",
            "topic_audiences": f"customer-audiences-{suffix}",
            "topic_models": f"segmenter-models-{suffix}",
            "topic_partitions": 4,
            "group_id": f"segmenter-{suffix}",
            "model_dir": tmp_path / "models",
            "data_dir": tmp_path / "faust",
            "metrics_port": 0,
            "broker_session_timeout_s": 6.0,
            "broker_rebalance_timeout_s": 6.0,
            "broker_heartbeat_interval_s": 1.0,
            "commit_interval_s": 0.5,
        }
        values.update(overrides)
        settings = Settings(**values)
        ensure_topics(settings)
        return settings

    return make


def settings_env(settings: Settings) -> dict[str, str]:
    """The SEGMENTER_* environment that reproduces ``settings`` in a child process."""
    return settings.to_env()


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.log()[-4000:]}")
            if "partitions assigned" in self.log():
                return
            time.sleep(0.2)
        raise AssertionError(f"worker not ready in {timeout_s}s:\n{self.log()[-4000:]}")

    def stop(self, timeout_s: float = 30.0) -> int:
        stop_process(self.proc, timeout_s)
        return self.proc.returncode


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[Callable[[Settings], WorkerProcess]]:
    """Start real `segmenter worker` processes; every one is stopped by its PID afterwards."""
    started: list[WorkerProcess] = []

    def start(settings: Settings) -> WorkerProcess:
        log_path = tmp_path / f"worker-{len(started)}.log"
        proc = spawn_worker(settings_env(settings), log_path, cwd=REPO)
        worker = WorkerProcess(proc, log_path)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@dataclass
class TopicReader:
    """Reads a topic from the beginning by manual assignment (no group join to wait for)."""

    bootstrap: str
    topic: str
    messages: list[Any] = field(default_factory=list)
    _consumer: Any = None

    def __post_init__(self) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
        )
        meta = self._consumer.list_topics(self.topic, timeout=10)
        parts = meta.topics[self.topic].partitions
        self._consumer.assign([TopicPartition(self.topic, p, -2) for p in parts])

    def poll(self, seconds: float) -> list[Any]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for msg in self._consumer.consume(500, timeout=0.2):
                err = msg.error()
                if err is not None and err.code() != KafkaError._PARTITION_EOF:
                    raise AssertionError(str(err))
                if err is None:
                    self.messages.append(msg)
        return self.messages

    def wait_for(
        self, predicate: Callable[[list[Any]], bool], timeout_s: float = 60.0
    ) -> list[Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.poll(0.5)
            if predicate(self.messages):
                return self.messages
        raise AssertionError(f"timed out; {len(self.messages)} messages on {self.topic}")

    def values(self) -> list[dict[str, Any]]:
        return [orjson.loads(m.value()) for m in self.messages if m.value() is not None]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._consumer.close()


@pytest.fixture
def reader_factory(kafka_bootstrap: str) -> Iterator[Callable[[str], TopicReader]]:
    readers: list[TopicReader] = []

    def make(topic: str) -> TopicReader:
        reader = TopicReader(kafka_bootstrap, topic)
        readers.append(reader)
        return reader

    yield make
    for reader in readers:
        reader.close()
