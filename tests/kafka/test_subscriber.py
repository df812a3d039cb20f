"""examples/subscriber.py, run as a user would, on both brokers: it materialises
exactly the current segment of every user from customer-segments."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from stream.settings import Settings
from stream.sinks import new_producer
from stream.worker.forget import forget
from tests.conftest import REPO, TopicReader
from tests.helpers import feed, raw_records
from tests.stream.test_e2e import scripted

pytestmark = [pytest.mark.integration, pytest.mark.brokers("tansu", "kafka")]


def change(user: str, version: int, segment: str) -> bytes:
    return orjson.dumps({"user_id": user, "version": version, "segment": segment})


def run_subscriber(bootstrap: str, topic: str) -> dict[str, dict[str, Any]]:
    done = subprocess.run(
        [
            *(sys.executable, str(REPO / "examples" / "subscriber.py")),
            *("--bootstrap", bootstrap, "--topic", topic, "--dump"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [orjson.loads(line) for line in done.stdout.splitlines()]
    return {row["user_id"]: row for row in rows}


def test_the_example_subscriber_holds_each_users_current_segment(
    settings_factory: Callable[..., Settings], reader_factory: Callable[[str], TopicReader]
) -> None:
    settings = settings_factory()
    topic = settings.topic_segments
    # Real changes from the pipeline, then an erasure through the real path.
    result = asyncio.run(feed(settings, raw_records(settings, scripted())))
    assert result.changes
    asyncio.run(forget(settings, "browser"))
    # The contract's harder cases, written as a replay or a comeback would.
    producer = new_producer({"bootstrap.servers": settings.bootstrap_servers})
    for key, value in [
        (b"dup", change("dup", 1, "regular")),
        (b"dup", change("dup", 2, "potential")),
        (b"dup", change("dup", 2, "at_risk")),  # the same version again: the later wins
        (b"dup", change("dup", 1, "high_value")),  # an older one seen again: ignored
        (b"back", change("back", 3, "regular")),
        (b"back", None),  # forgotten...
        (b"back", change("back", 1, "potential")),  # ...and back, at version 1
        (b"gone", change("gone", 1, "regular")),
        (b"gone", None),
    ]:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0

    published = reader_factory(topic).wait_for(
        lambda m: any(x.key() == b"gone" and x.value() is None for x in m)
    )
    whale = [orjson.loads(m.value()) for m in published if m.key() == b"whale" and m.value()]
    assert len(whale) >= 2

    held = run_subscriber(settings.bootstrap_servers, topic)
    assert set(held) == {"whale", "dup", "back"}
    assert (held["whale"]["segment"], held["whale"]["version"]) == (
        whale[-1]["segment"],
        whale[-1]["version"],
    )
    assert (held["dup"]["segment"], held["dup"]["version"]) == ("at_risk", 2)
    assert (held["back"]["segment"], held["back"]["version"]) == ("potential", 1)
