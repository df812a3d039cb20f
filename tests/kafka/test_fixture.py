"""The Apache Kafka fixture itself: one pinned version, jars resolved once, a clean stop."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from stream.devtools.apache_kafka import POM, kafka_lib, kafka_version, new_cluster_id
from stream.devtools.bench.config import BenchConfig
from stream.devtools.embedded import EmbeddedError
from tests.kafka.fixtures import KafkaUnderTest

REPO = Path(__file__).resolve().parents[2]


def test_docker_compose_runs_the_version_the_tests_run() -> None:
    version = kafka_version()
    major, minor = (int(x) for x in version.split(".")[:2])
    assert (major, minor) >= (4, 1), version
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    images = {
        name: svc["image"]
        for name, svc in compose["services"].items()
        if str(svc.get("image", "")).startswith("apache/kafka")
    }
    assert images == {"kafka": f"apache/kafka:{version}", "kafka-init": f"apache/kafka:{version}"}
    # Nothing else under deploy/ names another Kafka version.
    for path in (REPO / "deploy").rglob("*"):
        if path.is_file() and path.suffix in (".yaml", ".yml", ".md", ".xml"):
            for found in re.findall(r"apache/kafka:([0-9][\w.]*)", path.read_text()):
                assert found == version, path


def test_the_jars_come_from_the_cache_once_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = kafka_lib()
    assert (lib / f"kafka_2.13-{kafka_version()}.jar").exists()
    assert list(lib.glob("log4j-slf4j-impl-*.jar")), "Kafka logs through slf4j 1.7: its binding"
    monkeypatch.setenv("PATH", "/nonexistent")  # no Maven now: the cache must do
    assert kafka_lib() == lib


def test_a_missing_pom_is_one_line_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEGMENTER_KAFKA_POM", str(tmp_path / "nowhere.xml"))
    with pytest.raises(EmbeddedError, match="SEGMENTER_KAFKA_POM") as caught:
        kafka_lib()
    assert "\n" not in str(caught.value)
    assert POM.exists()


@pytest.mark.integration
def test_the_session_broker_is_local_and_stopped_by_its_pid(apache_kafka: KafkaUnderTest) -> None:
    broker = apache_kafka.broker
    assert broker.proc is not None and broker.proc.poll() is None
    for address in (broker.bootstrap, broker.sasl_bootstrap, broker.ssl_bootstrap):
        assert address.startswith("127.0.0.1:")
    props = (broker.workdir / "server.properties").read_text()  # type: ignore[operator]
    assert "0.0.0.0" not in props and "auto.create.topics.enable=false" in props
    assert "Kafka Server started" in broker.log_path.read_text()


def test_a_cluster_id_never_looks_like_an_option() -> None:
    ids = [new_cluster_id() for _ in range(2000)]  # ~31 would start with "-" by chance
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_the_bench_starts_one_broker_or_uses_a_given_one_never_both() -> None:
    assert BenchConfig().broker_label == "tansu"
    assert BenchConfig(broker="kafka").broker_label == "kafka"
    assert BenchConfig(kafka_url="kafka://127.0.0.1:9092").broker_label == "external"
    with pytest.raises(ValueError, match="give one of them"):
        BenchConfig(broker="kafka", kafka_url="kafka://127.0.0.1:9092").validate()
    with pytest.raises(ValueError, match="tansu or kafka"):
        BenchConfig(broker="redpanda").validate()  # type: ignore[arg-type]
