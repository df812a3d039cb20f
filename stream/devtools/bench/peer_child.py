"""What every peer process of the bench shares: its arguments, its progress lines on
stdout, and how it says that its library is not installed.

The driver (stream.devtools.bench.peers) reads one JSON object per line: first
``{"peer": name, "version": v}``, then ``{"t": monotonic, "n": records}`` as the
fold goes, the same kind of samples B0 reports. A peer whose library does not
import prints ``{"missing": name, "error": ...}`` and exits with MISSING_EXIT,
so that the run reports it as not installed rather than as 0 ev/s.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Any, NoReturn

import orjson

#: The exit status of a peer whose library does not import.
MISSING_EXIT = 3
#: Records between two progress lines: fine enough for the 10%-90% window of
#: the smallest backlog (1,000 events would still get a few), coarse enough to
#: cost nothing beside the fold.
REPORT_EVERY = 500
#: The peers' output topics' retention (a bench's output is thrown away with
#: its run). Given at creation because quix-streams reads ``retention.ms`` back,
#: and Tansu returns only the configs a topic was created with.
OUTPUT_RETENTION_MS = str(60 * 60 * 1000)
#: Every this many updates of a user, the fold publishes its count and spend
#: (as the issue's harness did).
PUBLISH_EVERY = 10


@dataclass(frozen=True)
class PeerArgs:
    topics: list[str]
    output: str
    group: str
    expect: int
    datadir: str


def parse_args(prog: str, argv: list[str]) -> PeerArgs:
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--topics", required=True, help="input topics, comma-separated")
    p.add_argument("--output", required=True, help="topic the every-10th updates go to")
    p.add_argument("--group", required=True)
    p.add_argument("--expect", type=int, required=True)
    p.add_argument("--datadir", required=True)
    a = p.parse_args(argv)
    return PeerArgs(a.topics.split(","), a.output, a.group, a.expect, a.datadir)


def version(dist: str) -> str:
    """The installed distribution's version (bytewax has no ``__version__``)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version(dist)
    except PackageNotFoundError:
        return "?"


def create_output_topic(conf: dict[str, Any], name: str, partitions: int) -> None:
    """The peer's output topic, with ``retention.ms``, unless it exists. Neither
    Tansu nor the Apache Kafka the bench starts creates a topic on first produce
    (bytewax's sink failed on a missing one)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(conf)
    if name in admin.list_topics(timeout=15).topics:
        return
    topic = NewTopic(name, partitions, 1, config={"retention.ms": OUTPUT_RETENTION_MS})
    for fut in admin.create_topics([topic], operation_timeout=15).values():
        fut.result(15)


def say(obj: dict[str, object]) -> None:
    sys.stdout.buffer.write(orjson.dumps(obj) + b"\n")
    sys.stdout.buffer.flush()


def missing(peer: str, exc: ImportError) -> NoReturn:
    say({"missing": peer, "error": str(exc)})
    sys.exit(MISSING_EXIT)


class Progress:
    """Counts folded records; says so every REPORT_EVERY and at the last expected one."""

    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.n = 0

    def tick(self) -> None:
        self.n += 1
        if self.n % REPORT_EVERY == 0 or self.n == self.expect:
            say({"t": time.monotonic(), "n": self.n})


def fold(state: tuple[int, float] | None, event: dict[str, object]) -> tuple[int, float]:
    """The peers' trivial fold: a count of the user's events and the sum of their orders."""
    count, spend = state or (0, 0.0)
    total = event.get("total")
    return count + 1, spend + (float(total) if isinstance(total, int | float) else 0.0)
