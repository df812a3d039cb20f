"""The session's Apache Kafka: PLAINTEXT for the suite, plus the secured listeners
the security tests connect to (SCRAM-SHA-512 users made at format time, TLS with a
CA the test makes, ACLs), and fast log cleaning for the compaction tests."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stream.devtools.apache_kafka import FAST_CLEANING, ApacheKafka
from tests.kafka.tls import TestPki, make_pki

#: SCRAM users. "worker" is what the service connects as; "denied-writer" gets
#: an ACL denying it write access to one topic (tests/kafka/test_security.py).
USERS = {"worker": "worker-pw-7f3a9c", "denied-writer": "denied-pw-52be01"}


@dataclass(frozen=True)
class KafkaUnderTest:
    broker: ApacheKafka
    pki: TestPki
    users: dict[str, str]


def _require_java_and_maven() -> None:
    """Without Java (or Maven, before the jars are cached) the Kafka tests cannot
    run: a skip on a laptop, a failure in CI, where .ci/run installs both."""
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing and not os.environ.get("SEGMENTER_KAFKA_LIB"):
        why = f"Apache Kafka tests need {' and '.join(missing)} on PATH"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


@contextlib.contextmanager
def kafka_under_test(directory: Path) -> Iterator[KafkaUnderTest]:
    _require_java_and_maven()
    pki = make_pki(directory / "pki")
    broker = ApacheKafka(
        scram_users=USERS, tls=pki.broker, authorizer=True, properties=FAST_CLEANING
    ).start()
    try:
        yield KafkaUnderTest(broker, pki, dict(USERS))
    finally:
        broker.stop()
        # Stopped by the PID we started, and gone: not left behind for the next run.
        assert broker.proc is not None and broker.proc.returncode is not None
        assert broker.workdir is not None and not broker.workdir.exists()
