"""The bench's latency tools: the transport's own floor, and latency against load.

The pipeline's latency (event produced -> its segment change read back) has
two parts: what the broker and the client libraries take to carry a record
from a producer to a consumer, and what the pipeline adds. :class:`RawReader`
measures the first on the very records the latency phase paces into the input
topics: a plain librdkafka consumer, no processing, timing each record from
its producer timestamp (CreateTime) to its arrival. The difference is the
pipeline's.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: With --pin: the broker, Redis and the load driver on this core...
SERVERS_CORE = 0
#: ...and the worker(s) (and B0's agent) on this one.
WORKER_CORE = 1


def pin_process(pid: int, core: int) -> None:
    """Pin every thread of ``pid`` to one core (threads it starts later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), {core})
        except ProcessLookupError:
            continue  # a thread that ended meanwhile


#: Fractions of P the latency curve is measured at.
CURVE_LOADS = (0.1, 0.2, 0.4, 0.6, 0.8)


class RawReader:
    """Reads the input topics from their current ends in a thread; keeps each
    record's producer-to-consumer time (ms) once ``since_ms`` has passed."""

    def __init__(
        self,
        client_config: dict[str, Any],
        group: str,
        ends: dict[tuple[str, int], int],
        since_ms: int,
        fetch_wait_ms: int = 10,
    ) -> None:
        from confluent_kafka import Consumer, TopicPartition

        # The same fetch wait as the change reader: both floors alike.
        self._consumer = Consumer(
            {
                **client_config,
                "group.id": group,
                "enable.auto.commit": False,
                "fetch.wait.max.ms": fetch_wait_ms,
            }
        )
        self._consumer.assign([TopicPartition(t, p, off) for (t, p), off in ends.items()])
        self._since_ms = since_ms
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RawReader:
        # Connected before pacing starts, as the change reader is.
        for _ in range(10):
            self._consumer.consume(1, timeout=0.1)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            for msg in self._consumer.consume(1000, timeout=0.05):
                received = time.time() * 1000
                if msg.error() is not None:
                    continue
                kind, stamp = msg.timestamp()
                if kind and stamp >= self._since_ms:
                    self.latencies.append(received - stamp)

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()
        return self.latencies


@dataclass(frozen=True)
class CurvePoint:
    load: float
    rate_eps: float
    p50_ms: float | None
    p99_ms: float | None
    raw_p50_ms: float | None
    raw_p99_ms: float | None

    def to_json(self) -> dict[str, float | None]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 1)

        return {
            "load": self.load,
            "rate_eps": round(self.rate_eps),
            "p50_ms": r(self.p50_ms),
            "p99_ms": r(self.p99_ms),
            "raw_p50_ms": r(self.raw_p50_ms),
            "raw_p99_ms": r(self.raw_p99_ms),
        }


def curve_table(points: list[CurvePoint]) -> str:
    """The curve as a Markdown table (for docs/performance.md)."""

    def ms(x: float | None) -> str:
        return "—" if x is None else f"{x:,.0f}"

    rows = [
        "| load (of P) | rate (ev/s) | p50 (ms) | p99 (ms) | raw p50 (ms) | raw p99 (ms) |",
        "|---|---|---|---|---|---|",
    ]
    rows += [
        f"| {p.load:.0%} | {p.rate_eps:,.0f} | {ms(p.p50_ms)} | {ms(p.p99_ms)} | "
        f"{ms(p.raw_p50_ms)} | {ms(p.raw_p99_ms)} |"
        for p in points
    ]
    return "\n".join(rows) + "\n"


def plot_curve(points: list[CurvePoint], path: Path, title: str) -> Path:
    """p50 and p99 of the pipeline and of the raw transport against the rate (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    x = [p.rate_eps for p in points]
    for attr, label, style in (
        ("p99_ms", "pipeline p99", "o-"),
        ("p50_ms", "pipeline p50", "o--"),
        ("raw_p99_ms", "raw transport p99", "s-"),
        ("raw_p50_ms", "raw transport p50", "s--"),
    ):
        ys = [getattr(p, attr) for p in points]
        ax.plot(
            [a for a, b in zip(x, ys, strict=True) if b is not None],
            [b for b in ys if b is not None],
            style,
            label=label,
        )
    ax.axhline(100, color="grey", linewidth=0.8, linestyle=":", label="100 ms")
    ax.set_xlabel("paced rate (events/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
