"""What a bench run is asked to do, and the samples its phases record."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

log = logging.getLogger("segmenter.bench")

#: The window of the backlog over which throughput is measured.
WINDOW = (0.10, 0.90)


class BenchError(RuntimeError):
    """A phase failed (a process died, or nothing progressed): the message says which."""


@dataclass(frozen=True)
class BenchConfig:
    events: int = 200_000
    users: int = 20_000
    partitions: int = 16
    workers: int = 1
    #: Days of synthetic history the backlog is cut from (ending now).
    days: float = 1.0
    seed: int = 0
    #: How long the paced latency phase sends events (0 skips it).
    latency_s: float = 10.0
    #: Its rate, as a fraction of the pipeline's measured throughput; None
    #: paces it at the bare Faust agent's measured throughput (B0).
    latency_load: float | None = None
    #: Where to write the latency curve (p50/p99 from 10% to 80% of P, a
    #: table and a PNG); None skips it.
    latency_curve: Path | None = None
    #: Where to write py-spy profiles of the first worker (None: no profile).
    profile_dir: Path | None = None
    #: External servers; None starts embedded ones.
    kafka_url: str | None = None
    #: Which broker to start when ``kafka_url`` is None: the embedded Tansu, or
    #: a local Apache Kafka from Maven (stream.devtools.apache_kafka; needs Java).
    broker: Literal["tansu", "kafka"] = "tansu"
    redis_url: str | None = None
    #: Keep state on Redis Cluster: ``redis_url`` names a node of one, or
    #: without it an embedded cluster of three masters is started.
    redis_cluster: bool = False
    #: Pin the broker, Redis and this driver to one core and the workers to
    #: the other (the latency levers are judged pinned and unpinned).
    pin: bool = False
    #: A phase fails when nothing progresses for this long.
    stall_s: float = 60.0
    #: Rule audiences P serves (0 = none); with N > 0, P also runs without
    #: them in the same run, for ``audiences_vs_none``.
    audiences: int = 0
    #: Other stream processors' trivial fold on the same backlog and broker
    #: (stream.devtools.bench.peers.PEERS: "bytewax", "quix"), each its own process.
    peers: tuple[str, ...] = ()

    @property
    def broker_label(self) -> str:
        """What the run measured: "tansu", "kafka" (both started here) or "external"."""
        return "external" if self.kafka_url is not None else self.broker

    def validate(self) -> None:
        if self.broker not in ("tansu", "kafka"):
            raise ValueError(f"broker must be tansu or kafka, got {self.broker!r}")
        if self.kafka_url is not None and self.broker != "tansu":
            raise ValueError(
                "--broker kafka starts a local Apache Kafka and --kafka-url uses a running "
                "one: give one of them"
            )
        if self.events < 1000:
            raise ValueError(f"events must be at least 1000, got {self.events}")
        if self.users < 1 or self.partitions < 1 or self.workers < 1:
            raise ValueError("users, partitions and workers must be at least 1")
        if self.latency_load is not None and not 0 < self.latency_load <= 2:
            raise ValueError(f"latency_load must be in (0, 2], got {self.latency_load}")
        if self.pin and len(os.sched_getaffinity(0)) < 2:
            raise ValueError("--pin needs at least 2 cores")
        from stream.devtools.bench.peers import PEERS

        if unknown := [p for p in self.peers if p not in PEERS]:
            raise ValueError(
                f"unknown peer(s) {', '.join(unknown)}: choose from {', '.join(PEERS)}"
            )
        if self.workers > self.partitions:
            raise ValueError(
                f"{self.workers} workers need at least as many partitions, got {self.partitions}"
            )


@dataclass
class Samples:
    """(monotonic time, records done) pairs, in order."""

    points: list[tuple[float, int]] = field(default_factory=list)

    def add(self, t: float, n: int) -> None:
        self.points.append((t, n))

    def rate(self, total: int, window: tuple[float, float] = WINDOW) -> float:
        """Records/s between the first samples at or past ``window`` fractions of ``total``."""
        lo = next((p for p in self.points if p[1] >= window[0] * total), None)
        hi = next((p for p in self.points if p[1] >= window[1] * total), None)
        if lo is None or hi is None:
            raise BenchError(f"only {self.last} of {total:,} records done: no throughput")
        if hi[0] > lo[0]:
            return (hi[1] - lo[1]) / (hi[0] - lo[0])
        # Too coarse to tell the window apart (one sample covers it): whole run.
        first = next(p for p in self.points if p[1] > 0)
        last = self.points[-1]
        if last[0] <= first[0]:
            raise BenchError("the phase finished between two samples: run more --events")
        return last[1] / (last[0] - first[0])

    def crossing(self, fraction: float, total: int) -> float | None:
        return next((t for t, n in self.points if n >= fraction * total), None)

    @property
    def last(self) -> int:
        return self.points[-1][1] if self.points else 0
