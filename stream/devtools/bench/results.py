"""What a bench run reports: the result, its JSON contract and its table."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

log = logging.getLogger("segmenter.bench")


#: Keys of ``--json`` that other tools rely on (tests/bench checks them).
JSON_KEYS = (
    "raw_eps",
    "faust_passthrough_eps",
    "pipeline_eps",
    "pipeline_vs_faust",
    "pipeline_vs_raw",
    "latency_rate_eps",
    "p50_ms",
    "p99_ms",
    "raw_p50_ms",
    "raw_p99_ms",
    "overhead_p50_ms",
    "overhead_p99_ms",
    "bytewax_eps",
    "quix_eps",
    "pipeline_vs_bytewax",
    "pipeline_vs_quix",
    "worker_rss_mb",
    "redis_bytes_per_user",
    "events",
    "users",
    "partitions",
)


@dataclass
class BenchResult:
    events: int
    users: int
    partitions: int
    workers: int
    raw_eps: float
    faust_passthrough_eps: float
    pipeline_eps: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    latency_rate_eps: float | None = None
    latency_samples: int = 0
    #: The raw transport at the same rate, on the same paced records: a plain
    #: consumer of the input topics (stream.devtools.bench.latency.RawReader).
    raw_p50_ms: float | None = None
    raw_p99_ms: float | None = None
    #: With --latency-curve: one point per load (CurvePoint.to_json).
    latency_curve: list[dict[str, Any]] = field(default_factory=list)
    worker_rss_mb: float = 0.0
    redis_bytes_per_user: float = 0.0
    breakdown: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    #: With --workers N > 1: P with one worker, measured first in the same run.
    one_worker_eps: float | None = None
    #: With --audiences N: how many P served, and P without any (same run).
    audiences: int = 0
    no_audiences_eps: float | None = None
    #: Whether the state lived on Redis Cluster (--redis-cluster).
    redis_cluster: bool = False
    #: Whether servers and workers were pinned to separate cores (--pin).
    pinned: bool = False
    #: The broker measured: "tansu" or "kafka" (started by the run), or "external".
    broker: str = "tansu"
    #: With --peers: each peer's trivial fold on the same backlog (None: not
    #: measured, or not installed), and per peer asked its library's version
    #: or "not installed".
    bytewax_eps: float | None = None
    quix_eps: float | None = None
    peer_versions: dict[str, str] = field(default_factory=dict)

    @property
    def overhead_p50_ms(self) -> float | None:
        """The pipeline's own share of p50 latency: its p50 less the raw transport's,
        on the same paced records at ``latency_rate_eps``."""
        if self.p50_ms is None or self.raw_p50_ms is None:
            return None
        return self.p50_ms - self.raw_p50_ms

    @property
    def overhead_p99_ms(self) -> float | None:
        if self.p99_ms is None or self.raw_p99_ms is None:
            return None
        return self.p99_ms - self.raw_p99_ms

    @property
    def pipeline_vs_bytewax(self) -> float | None:
        return self.pipeline_eps / self.bytewax_eps if self.bytewax_eps else None

    @property
    def pipeline_vs_quix(self) -> float | None:
        return self.pipeline_eps / self.quix_eps if self.quix_eps else None

    @property
    def audiences_vs_none(self) -> float | None:
        """Throughput with the audiences over without them, both measured in this run."""
        return self.pipeline_eps / self.no_audiences_eps if self.no_audiences_eps else None

    @property
    def workers_vs_one(self) -> float | None:
        """Throughput of N workers over one worker's, both measured in this run."""
        return self.pipeline_eps / self.one_worker_eps if self.one_worker_eps else None

    @property
    def pipeline_vs_faust(self) -> float:
        return self.pipeline_eps / self.faust_passthrough_eps

    @property
    def pipeline_vs_raw(self) -> float:
        return self.pipeline_eps / self.raw_eps

    def to_json(self) -> dict[str, Any]:
        def r(x: float | None, nd: int = 1) -> float | None:
            return None if x is None else round(x, nd)

        return {
            "raw_eps": r(self.raw_eps, 0),
            "faust_passthrough_eps": r(self.faust_passthrough_eps, 0),
            "pipeline_eps": r(self.pipeline_eps, 0),
            "pipeline_vs_faust": r(self.pipeline_vs_faust, 2),
            "pipeline_vs_raw": r(self.pipeline_vs_raw, 4),
            "p50_ms": r(self.p50_ms),
            "p99_ms": r(self.p99_ms),
            "raw_p50_ms": r(self.raw_p50_ms),
            "raw_p99_ms": r(self.raw_p99_ms),
            "overhead_p50_ms": r(self.overhead_p50_ms),
            "overhead_p99_ms": r(self.overhead_p99_ms),
            "bytewax_eps": r(self.bytewax_eps, 0),
            "quix_eps": r(self.quix_eps, 0),
            "pipeline_vs_bytewax": r(self.pipeline_vs_bytewax, 2),
            "pipeline_vs_quix": r(self.pipeline_vs_quix, 2),
            "peers": self.peer_versions,
            "worker_rss_mb": r(self.worker_rss_mb),
            "redis_bytes_per_user": r(self.redis_bytes_per_user),
            "events": self.events,
            "users": self.users,
            "partitions": self.partitions,
            "workers": self.workers,
            "one_worker_eps": r(self.one_worker_eps, 0),
            "workers_vs_one": r(self.workers_vs_one, 2),
            "audiences": self.audiences,
            "no_audiences_eps": r(self.no_audiences_eps, 0),
            "audiences_vs_none": r(self.audiences_vs_none, 2),
            "redis_cluster": self.redis_cluster,
            "pinned": self.pinned,
            "broker": self.broker,
            "latency_rate_eps": r(self.latency_rate_eps, 0),
            "latency_samples": self.latency_samples,
            "latency_curve": self.latency_curve,
            "breakdown": self.breakdown,
            "settings": self.settings,
        }


def render(result: BenchResult) -> Table:
    table = Table(title=f"segmenter bench: {result.events:,} events, {result.users:,} users")
    table.add_column("phase")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("R", "raw aiokafka getmany drain", f"{result.raw_eps:,.0f} ev/s")
    table.add_row(
        "B0",
        "bare Faust agent, take(1000, within=0.05), defaults",
        f"{result.faust_passthrough_eps:,.0f} ev/s",
    )
    table.add_row(
        "P",
        f"full pipeline, {result.workers} worker(s), shipped settings"
        + (", on Redis Cluster (3 masters)" if result.redis_cluster else "")
        + (", pinned: servers and driver core 0, workers core 1" if result.pinned else ""),
        f"{result.pipeline_eps:,.0f} ev/s",
    )
    table.add_row("", "pipeline_vs_faust (target >= 3.0)", f"{result.pipeline_vs_faust:.2f}")
    if result.one_worker_eps is not None and result.workers_vs_one is not None:
        table.add_row(
            "P1",
            "the same pipeline, 1 worker (this run)",
            f"{result.one_worker_eps:,.0f} ev/s",
        )
        table.add_row(
            "", f"{result.workers} workers vs 1 (target >= 1.6)", f"{result.workers_vs_one:.2f}"
        )
    if result.no_audiences_eps is not None and result.audiences_vs_none is not None:
        table.add_row(
            "P0",
            "the same pipeline without rule audiences (this run)",
            f"{result.no_audiences_eps:,.0f} ev/s",
        )
        table.add_row(
            "",
            f"with {result.audiences} audiences vs none (target >= 0.85)",
            f"{result.audiences_vs_none:.2f}",
        )
    table.add_row("", "pipeline_vs_raw", f"{result.pipeline_vs_raw:.3f}")
    for peer, version in result.peer_versions.items():
        _peer_rows(table, result, peer, version)
    if result.p50_ms is not None and result.p99_ms is not None:
        table.add_row(
            "lat",
            f"event -> change readable at {result.latency_rate_eps or 0:,.0f} ev/s",
            f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms",
        )
    if result.raw_p50_ms is not None and result.raw_p99_ms is not None:
        table.add_row(
            "lat",
            "  raw transport, same records (plain consumer of the inputs)",
            f"p50 {result.raw_p50_ms:.1f} ms, p99 {result.raw_p99_ms:.1f} ms",
        )
    if result.overhead_p50_ms is not None and result.overhead_p99_ms is not None:
        table.add_row(
            "lat",
            "  the pipeline's own share (pipeline - raw)",
            f"p50 {result.overhead_p50_ms:+.1f} ms, p99 {result.overhead_p99_ms:+.1f} ms",
        )
    for point in result.latency_curve:
        table.add_row(
            "curve",
            f"  {point['load']:.0%} of P ({point['rate_eps']:,} ev/s)",
            f"p50 {point['p50_ms']} / p99 {point['p99_ms']} ms; "
            f"raw {point['raw_p50_ms']} / {point['raw_p99_ms']} ms",
        )
    table.add_row("", "worker RSS while serving (max)", f"{result.worker_rss_mb:.0f} MB")
    dedup = result.breakdown.get("redis", {}).get("dedup_bytes_per_user")
    table.add_row(
        "",
        "Redis bytes per user (bar 600, aim 512)",
        f"{result.redis_bytes_per_user:.0f} B"
        + (f", of which dedup {dedup:.0f} B" if dedup is not None else ""),
    )
    pipeline = result.breakdown.get("pipeline", {})
    for stage, pct in pipeline.get("share_of_worker_time_pct", {}).items():
        table.add_row("P", f"  {stage}", f"{pct:.1f}%")
    for who, cores in pipeline.get("cpu_cores", {}).items():
        table.add_row("P", f"  cores used: {who}", f"{cores:.2f}")
    for what, pct in pipeline.get("agent_thread_pct", {}).items():
        table.add_row("P", f"  agent thread: {what}", f"{pct:.1f}%")
    latency = result.breakdown.get("latency", {})
    for who, cores in latency.get("cpu_cores", {}).items():
        table.add_row("lat", f"  cores used: {who}", f"{cores:.2f}")
    for what, pct in latency.get("agent_thread_pct", {}).items():
        table.add_row("lat", f"  agent thread: {what}", f"{pct:.1f}%")
    for stage, pct in result.breakdown.get("profile", {}).get("main_thread_pct", {}).items():
        table.add_row("py-spy", f"  {stage}", f"{pct:.1f}%")
    return table


def _peer_rows(table: Table, result: BenchResult, peer: str, version: str) -> None:
    from stream.devtools.bench.peers import INSTALL_HINT, PEERS

    eps = result.bytewax_eps if peer == "bytewax" else result.quix_eps
    ratio = result.pipeline_vs_bytewax if peer == "bytewax" else result.pipeline_vs_quix
    what = f"{PEERS[peer][1]}, trivial fold"
    if eps is None or ratio is None:
        table.add_row(peer, what, f"not installed ({INSTALL_HINT})")
        return
    table.add_row(peer, f"{what} ({version})", f"{eps:,.0f} ev/s")
    table.add_row("", f"pipeline_vs_{peer}", f"{ratio:.2f}")
