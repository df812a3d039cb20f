"""Security on a real broker: listeners that require SASL/SCRAM-SHA-512 and TLS (a CA
and certificate the test made), and an ACL.

The service connects with its documented settings (SEGMENTER_KAFKA_SECURITY_PROTOCOL,
_SASL_*, _SSL_CAFILE) and the password from a file (SEGMENTER_KAFKA_SASL_PASSWORD_FILE).
A wrong password or an untrusted certificate is one line naming the setting to fix,
a non-zero exit and no secret. A worker the broker will not let write its output
waits, says so, and dead-letters nothing.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from stream.devtools.embedded import free_port
from stream.settings import Settings
from stream.training.generate import GeneratorConfig, generate
from stream.training.produce import encode_generated
from tests.conftest import REPO, TopicReader, WorkerProcess, settings_env
from tests.faults.scenario import applied_records
from tests.kafka.fixtures import KafkaUnderTest
from tests.stream.test_cli import segmenter

pytestmark = [pytest.mark.integration, pytest.mark.brokers("kafka")]

SASL_SSL = "SASL_SSL"


def address(kafka: KafkaUnderTest, protocol: str) -> str:
    broker = kafka.broker
    return {
        "SASL_PLAINTEXT": broker.sasl_bootstrap,
        "SSL": broker.ssl_bootstrap,
        "SASL_SSL": broker.sasl_ssl_bootstrap,
    }[protocol]


def secured(
    kafka: KafkaUnderTest, tmp_path: Path, protocol: str, user: str = "worker"
) -> dict[str, Any]:
    """The documented settings for ``protocol``, the password in a file."""
    values: dict[str, Any] = {
        "kafka_url": f"kafka://{address(kafka, protocol)}",
        "kafka_security_protocol": protocol,
    }
    if protocol.startswith("SASL_"):
        secret = tmp_path / f"{user}.password"
        secret.write_text(kafka.users[user] + "\n")  # as `kubectl create secret` leaves it
        values |= {
            "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_sasl_username": user,
            "kafka_sasl_password_file": secret,
        }
    if protocol.endswith("SSL"):
        values["kafka_ssl_cafile"] = kafka.pki.broker.ca
    return values


def events_file(path: Path) -> int:
    """Plain events (routed by event_type), enough history for retrain to train on."""
    values = [
        v for _, _, v in encode_generated(generate(GeneratorConfig(users=150, days=200, seed=4)))
    ]
    path.write_bytes(b"\n".join(values) + b"\n")
    return len(values)


def test_every_command_connects_with_scram_over_tls_and_a_password_file(
    apache_kafka: KafkaUnderTest,
    tmp_path: Path,
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
    reader_factory: Callable[[str], TopicReader],
) -> None:
    settings = settings_factory(**secured(apache_kafka, tmp_path, SASL_SSL))
    env = settings_env(settings)
    password = apache_kafka.users["worker"]
    assert "SEGMENTER_KAFKA_SASL_PASSWORD" not in env  # only the file's path travels
    n = events_file(tmp_path / "events.jsonl")

    produced = segmenter("produce", str(tmp_path / "events.jsonl"), env=env)
    assert produced.returncode == 0, produced.stderr[-2000:]
    worker = worker_factory(settings)
    worker.wait_ready()
    deadline = time.monotonic() + 120
    while applied_records(settings) < n:
        assert worker.proc.poll() is None and time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.5)
    reader_factory(settings.topic_segments).wait_for(lambda m: len(m) >= 50)
    assert worker.stop() == 0

    exported = segmenter("export", "--out", str(tmp_path / "out.jsonl"), env=env)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert f"exported {n:,} records" in exported.stderr
    retrained = segmenter(
        "retrain", "--once", "--window", "200d", "--horizon", "45d", "--step", "14d",
        "--epochs", "2", env=env, timeout=300,
    )  # fmt: skip
    assert retrained.returncode == 0, retrained.stderr[-3000:]
    bench = subprocess.run(
        [
            *(sys.executable, "-m", "stream.cli", "bench", "--kafka-url", settings.kafka_url),
            *("--events", "20000", "--users", "2000", "--partitions", "2"),
            *("--latency-seconds", "0", "--json"),
        ],
        capture_output=True,
        text=True,
        env={k: v for k, v in env.items() if not k.startswith("SEGMENTER_TOPIC")},
        cwd=REPO,
        timeout=300,
    )
    assert bench.returncode == 0, bench.stderr[-3000:]
    assert orjson.loads(bench.stdout.splitlines()[-1])["broker"] == "external"
    for out in (produced, exported, retrained, bench):
        assert password not in out.stdout + out.stderr
    assert password not in worker.log()


def refusal(env: dict[str, str], command: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    args = {
        "worker": ["worker"],
        "produce": ["produce", str(tmp_path / "events.jsonl")],
        "export": ["export", "--out", str(tmp_path / "never.jsonl")],
        "retrain": ["retrain", "--once"],
    }[command]
    return segmenter(*args, env=env, timeout=120)


def assert_one_line(out: subprocess.CompletedProcess[str], setting: str, secrets: list[str]) -> str:
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "Traceback" not in text and "%3|" not in text, text[-3000:]  # no librdkafka log spam
    lines = [line for line in out.stderr.splitlines() if setting in line]
    assert len(lines) == 1, out.stderr[-3000:]
    for secret in secrets:
        assert secret not in text
    # Nothing after it: the error is the last thing said.
    assert out.stderr.rstrip().splitlines()[-1] == lines[0]
    return lines[0]


@pytest.mark.parametrize("command", ["worker", "produce", "export", "retrain"])
def test_a_wrong_password_is_one_line_naming_the_setting(
    command: str,
    apache_kafka: KafkaUnderTest,
    tmp_path: Path,
    settings_factory: Callable[..., Settings],
) -> None:
    good = settings_factory()  # PLAINTEXT: creates the topics; the command gets the env below
    events_file(tmp_path / "events.jsonl")
    wrong = "not-the-password-" + "x" * 8
    (tmp_path / "pw").write_text(wrong)
    env = settings_env(good) | {
        "SEGMENTER_KAFKA_URL": f"kafka://{apache_kafka.broker.sasl_bootstrap}",
        "SEGMENTER_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "SEGMENTER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "SEGMENTER_KAFKA_SASL_USERNAME": "worker",
        "SEGMENTER_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "pw"),
    }
    line = assert_one_line(
        refusal(env, command, tmp_path),
        "SEGMENTER_KAFKA_SASL_PASSWORD",
        [wrong, apache_kafka.users["worker"]],
    )
    assert "refused the SASL login" in line and "SEGMENTER_KAFKA_SASL_USERNAME=worker" in line


@pytest.mark.parametrize("command", ["worker", "produce", "export", "retrain"])
def test_an_untrusted_broker_certificate_is_one_line_naming_the_setting(
    command: str,
    apache_kafka: KafkaUnderTest,
    tmp_path: Path,
    settings_factory: Callable[..., Settings],
) -> None:
    good = settings_factory()
    events_file(tmp_path / "events.jsonl")
    env = settings_env(good) | {
        "SEGMENTER_KAFKA_URL": f"kafka://{apache_kafka.broker.ssl_bootstrap}",
        "SEGMENTER_KAFKA_SECURITY_PROTOCOL": "SSL",
        "SEGMENTER_KAFKA_SSL_CAFILE": str(apache_kafka.pki.other_ca),
    }
    line = assert_one_line(refusal(env, command, tmp_path), "SEGMENTER_KAFKA_SSL_CAFILE", [])
    assert "does not trust" in line and str(apache_kafka.pki.other_ca) in line


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_a_worker_denied_write_to_its_output_waits_and_dead_letters_nothing(
    apache_kafka: KafkaUnderTest,
    tmp_path: Path,
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
    reader_factory: Callable[[str], TopicReader],
) -> None:
    port = free_port()
    settings = settings_factory(
        **secured(apache_kafka, tmp_path, "SASL_PLAINTEXT", user="denied-writer"),
        metrics_port=port,
        max_batch_failures=2,  # a refusal must never count as the batch's fault
    )
    admin = AdminClient({"bootstrap.servers": apache_kafka.broker.bootstrap})  # a super user
    deny = AclBinding(
        ResourceType.TOPIC,
        settings.topic_segments,
        ResourcePatternType.LITERAL,
        "User:denied-writer",
        "*",
        AclOperation.WRITE,
        AclPermissionType.DENY,
    )
    for fut in admin.create_acls([deny]).values():
        fut.result(15)
    worker = worker_factory(settings)
    worker.wait_ready()
    n = events_file(tmp_path / "events.jsonl")
    produced = segmenter("produce", str(tmp_path / "events.jsonl"), env=settings_env(settings))
    assert produced.returncode == 0, produced.stderr[-2000:]

    deadline = time.monotonic() + 60
    while metric(port, "segmenter_broker_refusals_total") < 3:
        assert worker.proc.poll() is None and time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.5)
    assert applied_records(settings) < n, "applied without publishing its changes"
    assert "TOPIC_AUTHORIZATION_FAILED" in worker.log() or "Topic authorization" in worker.log()
    assert "refused by the broker" in worker.log() and "nothing dead-lettered" in worker.log()
    assert metric(port, "segmenter_dead_letters_total") == 0
    assert metric(port, "segmenter_poisoned_batches_total") == 0

    # Access granted: the same worker goes on, and every record is applied.
    unset = AclBindingFilter(
        ResourceType.TOPIC,
        settings.topic_segments,
        ResourcePatternType.LITERAL,
        "User:denied-writer",
        "*",
        AclOperation.WRITE,
        AclPermissionType.DENY,
    )
    for fut in admin.delete_acls([unset]).values():
        fut.result(15)
    deadline = time.monotonic() + 120
    while applied_records(settings) < n:
        assert worker.proc.poll() is None and time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.5)
    reader_factory(settings.topic_segments).wait_for(lambda m: len(m) >= 50)
    dlq = reader_factory(settings.topic_dlq).poll(2.0)
    assert dlq == [], [m.headers() for m in dlq]
    assert worker.stop() == 0
