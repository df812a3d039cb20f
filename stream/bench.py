"""`segmenter bench`: how fast the pipeline is, compared with what, and where the time goes.

One run, one process tree, one broker and one Redis for every phase:

* **R**: a raw aiokafka ``getmany`` drain of the input topics (the transport's limit);
* **B0**: a bare faust-streaming agent with default settings iterating
  ``stream.take(1000, within=0.05)`` (what a user writes first), in its own process;
* **P**: ``segmenter worker`` process(es) with the settings the project ships,
  draining the same backlog: decode, validate, fold, Redis, score, publish;
* **latency**: paced events at 50% of P's throughput, stamped with the wall
  clock, against a consumer of ``customer-segments``: event time to the
  segment change being readable.

Throughputs come from the same kind of samples in every phase (records done
over time) as the rate between 10% and 90% of the backlog, so start-up, group
joins and the last partial batches do not count. The per-stage breakdown comes
from the worker's own Prometheus histograms over that same window, and, with
``--profile``, from a py-spy profile of the worker.

By default the broker (Tansu) and Redis are embedded and thrown away. Given
``kafka_url``/``redis_url`` it uses those instead: its own topics
(``bench-<run>-*``, deleted afterwards) and its own key prefix (deleted
afterwards: never FLUSHDB/FLUSHALL).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from stream.bench_audiences import write_bench_audiences
from stream.bench_latency import CURVE_LOADS, CurvePoint, RawReader, curve_table, plot_curve
from stream.embedded import (
    EmbeddedKafka,
    EmbeddedRedis,
    EmbeddedRedisCluster,
    free_port,
    spawn_worker,
    stop_process,
)
from stream.settings import Settings, load_settings
from stream.sinks import produce_waiting

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
    "worker_rss_mb",
    "redis_bytes_per_user",
    "events",
    "users",
    "partitions",
)

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
    redis_url: str | None = None
    #: Keep state on Redis Cluster: ``redis_url`` names a node of one, or
    #: without it an embedded cluster of three masters is started.
    redis_cluster: bool = False
    #: A phase fails when nothing progresses for this long.
    stall_s: float = 60.0
    #: Rule audiences P serves (0 = none); with N > 0, P also runs without
    #: them in the same run, for ``audiences_vs_none``.
    audiences: int = 0

    def validate(self) -> None:
        if self.events < 1000:
            raise ValueError(f"events must be at least 1000, got {self.events}")
        if self.users < 1 or self.partitions < 1 or self.workers < 1:
            raise ValueError("users, partitions and workers must be at least 1")
        if self.latency_load is not None and not 0 < self.latency_load <= 2:
            raise ValueError(f"latency_load must be in (0, 2], got {self.latency_load}")
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
    #: consumer of the input topics (stream.bench_latency.RawReader).
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
            "latency_rate_eps": r(self.latency_rate_eps, 0),
            "latency_samples": self.latency_samples,
            "latency_curve": self.latency_curve,
            "breakdown": self.breakdown,
            "settings": self.settings,
        }


# --------------------------------------------------------------------------- helpers


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks."""
    if not values:
        raise ValueError("no values")
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def vm_rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` from /proc (0 if it is gone or not Linux)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) ``pid`` has used, from /proc (0 if gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            # Fields after the command name, which may itself hold spaces.
            fields = fh.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_shares(
    before: dict[str, float], after: dict[str, float], wall_s: float
) -> dict[str, float]:
    """Cores each process group kept busy between two :func:`cpu_seconds` snapshots."""
    return {k: round((after[k] - before.get(k, 0.0)) / wall_s, 2) for k in after}


def main_thread_sched(pid: int) -> tuple[float, float]:
    """Seconds ``pid``'s main thread has run on a core, and waited runnable for one.

    From /proc/<pid>/schedstat, which covers the thread whose id is ``pid``:
    a worker's agent runs there. (0, 0) if it is gone or not Linux.
    """
    try:
        with open(f"/proc/{pid}/schedstat") as fh:
            on_cpu_ns, waiting_ns, *_ = fh.read().split()
    except (OSError, ValueError):
        return 0.0, 0.0
    return int(on_cpu_ns) / 1e9, int(waiting_ns) / 1e9


def agent_thread_shares(
    before: list[tuple[float, float]], after: list[tuple[float, float]], wall_s: float
) -> dict[str, float]:
    """Per worker, the share of a window its agent's thread ran, waited for a core,
    or neither (waiting for I/O or the GIL, or idle), from :func:`main_thread_sched`."""
    n = len(after)
    if not n or wall_s <= 0:
        return {}
    ran = sum(a[0] - b[0] for b, a in zip(before, after, strict=True)) / n
    queued = sum(a[1] - b[1] for b, a in zip(before, after, strict=True)) / n
    return {
        "on_a_core": round(100 * ran / wall_s, 1),
        "waiting_for_a_core": round(100 * queued / wall_s, 1),
        "neither (I/O, GIL, idle)": round(100 * max(0.0, wall_s - ran - queued) / wall_s, 1),
    }


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} for the series the breakdown uses."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("segmenter_") or " " not in line:
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


def scrape(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return parse_metrics(resp.read().decode())
    except OSError as exc:
        log.debug("metrics on port %d unreadable: %s", port, exc)
        return {}


def metrics_breakdown(
    before: list[dict[str, float]], after: list[dict[str, float]], wall_s: float
) -> dict[str, Any]:
    """Where the workers' time went over the measured window, from their histograms.

    ``batch`` is :meth:`BatchProcessor.process` (decode to Redis commit);
    Redis load/commit are inside it; the rest of the wall time is Faust:
    fetching, delivering and acking records, and waiting for them.
    """

    def delta(name: str) -> float:
        return sum(a.get(name, 0.0) - b.get(name, 0.0) for b, a in zip(before, after, strict=True))

    workers_s = wall_s * len(after)
    batch_s = delta("segmenter_batch_seconds_sum")
    batches = delta("segmenter_batch_seconds_count")
    records = delta("segmenter_batch_size_sum")
    load_s = delta('segmenter_redis_seconds_sum{op="load"}')
    commit_s = delta('segmenter_redis_seconds_sum{op="commit"}')
    publish_s = delta("segmenter_publish_seconds_sum")
    waiting_s = delta("segmenter_agent_wait_seconds_sum")
    compute_s = batch_s - load_s - commit_s - publish_s
    if not batches:
        return {"note": "no batch metrics were scraped (metrics port off?)"}

    def share(x: float) -> float:
        return round(100 * x / workers_s, 1) if workers_s else 0.0

    return {
        "window_s": round(wall_s, 3),
        "batches": int(batches),
        "records_per_batch": round(records / batches, 1),
        "batch_ms_mean": round(1000 * batch_s / batches, 2),
        "us_per_record": {
            "batch_total": round(1e6 * batch_s / records, 1) if records else None,
            "redis_load": round(1e6 * load_s / records, 1) if records else None,
            "redis_commit": round(1e6 * commit_s / records, 1) if records else None,
            "publish_wait": round(1e6 * publish_s / records, 1) if records else None,
            "decode_fold_score": round(1e6 * compute_s / records, 1) if records else None,
            "faust_and_idle": (
                round(1e6 * (workers_s - batch_s) / records, 1) if records else None
            ),
            "waiting_for_records": round(1e6 * waiting_s / records, 1) if records else None,
        },
        "share_of_worker_time_pct": {
            "batch_processing": share(batch_s),
            "redis_load": share(load_s),
            "redis_commit": share(commit_s),
            "publish_wait": share(publish_s),
            "decode_fold_score": share(compute_s),
            "outside_batches (faust fetch/deliver/ack, idle)": share(workers_s - batch_s),
            "... of which waiting for records (idle)": share(waiting_s),
        },
    }


def _histogram_delta(
    before: list[dict[str, float]], after: list[dict[str, float]], name: str
) -> dict[str, float]:
    """Mean and bucket-estimated p50/p99 (ms) of a seconds histogram over a window."""
    buckets: dict[float, float] = {}
    for b, a in zip(before, after, strict=True):
        for key, value in a.items():
            match = re.fullmatch(rf'{name}_bucket\{{le="([^"]+)"\}}', key)
            if match:
                le = float(match.group(1))
                buckets[le] = buckets.get(le, 0.0) + value - b.get(key, 0.0)
    count = sum(
        a.get(f"{name}_count", 0) - b.get(f"{name}_count", 0)
        for b, a in zip(before, after, strict=True)
    )
    total = sum(
        a.get(f"{name}_sum", 0) - b.get(f"{name}_sum", 0)
        for b, a in zip(before, after, strict=True)
    )
    if not count:
        return {}

    def quantile(q: float) -> float:
        for le in sorted(buckets):
            if buckets[le] >= q * count:
                return le * 1000
        return float("inf")

    return {
        "count": int(count),
        "mean": round(1000 * total / count, 1),
        "p50_le": quantile(0.5),
        "p99_le": quantile(0.99),
    }


# py-spy frames -> pipeline stage. The innermost pipeline stage on the stack
# wins, so Redis time inside StateStore.load counts as "redis load", etc.
_STAGES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("decode + validate", re.compile(r"BatchProcessor\._decode|\(stream/events\.py")),
    ("dead-letter", re.compile(r"_dead_letter")),
    ("redis client (round trips)", re.compile(r"\(redis/")),
    ("store: encode/decode records", re.compile(r"\(stream/store\.py")),
    ("fold", re.compile(r"\(stream/fold\.py")),
    ("features", re.compile(r"\(model/features\.py")),
    ("score + explain", re.compile(r"\(model/(scorer|explain|network)\.py")),
    ("publish changes", re.compile(r"FaustSink|Topic\.send|\(aiokafka/producer/")),
    ("metrics", re.compile(r"\(prometheus_client/")),
    (
        "pipeline (other)",
        re.compile(r"\(stream/(pipeline|playbook)\.py|\(model/segments\.py"),
    ),
)
# Only when no pipeline stage is on the stack: what the rest of the loop does.
_GENERIC: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "faust: fetch, deliver, ack",
        re.compile(r"\(stream/consumer\.py|\(faust/|\(aiokafka/|\(mode/(services|threads)"),
    ),
    ("agent glue (records, acks loop)", re.compile(r"fold_agent")),
    ("event loop", re.compile(r"\(asyncio/")),
)
# A sample whose innermost Python frame is one of these is the loop waiting
# for I/O (uvloop's loop is C, so py-spy shows its caller as the leaf).
_IDLE_LEAF = re.compile(
    r"^(EpollSelector\.select|select|poll|BaseEventLoop\.run_forever|run_forever|"
    r"run_until_complete|BaseEventLoop\.run_until_complete|Worker\.execute_from_commandline) "
)


def _stage(frames: list[str]) -> str:
    for rules in (_STAGES, _GENERIC):
        for frame in reversed(frames):
            hit = next((name for name, rx in rules if rx.search(frame)), None)
            if hit:
                return hit
    return "other"


def profile_breakdown(raw: str) -> dict[str, Any]:
    """Share of the main thread's py-spy samples (``--idle --threads -f raw``) per stage."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        head, _, frames_text = stack.partition(";")
        if head.startswith("thread") and "MainThread" not in head:
            continue
        frames = frames_text.split(";") if head.startswith("thread") else stack.split(";")
        if _IDLE_LEAF.match(frames[-1]):
            counts["idle (loop waiting for I/O)"] += int(count)
            continue
        counts[_stage(frames)] += int(count)
    total = sum(counts.values())
    if not total:
        return {}
    return {
        "samples": total,
        "main_thread_pct": {k: round(100 * v / total, 1) for k, v in counts.most_common()},
    }


# --------------------------------------------------------------------------- servers


@contextlib.contextmanager
def _servers(
    cfg: BenchConfig, console: Console, pids: dict[str, int]
) -> Iterator[tuple[str, str, bool]]:
    """(kafka_url, redis_url, embedded_redis) for the run; embedded ones are stopped after.

    Fills ``pids`` with the embedded servers' process ids (for CPU accounting).
    """
    started: list[EmbeddedKafka | EmbeddedRedis | EmbeddedRedisCluster] = []
    try:
        kafka_url = cfg.kafka_url
        if kafka_url is None:
            broker = EmbeddedKafka().start()
            started.append(broker)
            kafka_url = broker.url
            if broker.proc is not None:
                pids["broker (Tansu)"] = broker.proc.pid
            log.info(
                "embedded Tansu broker on %s (pid %s)",
                broker.bootstrap,
                broker.proc and broker.proc.pid,
            )
        redis_url = cfg.redis_url
        if redis_url is None and cfg.redis_cluster:
            cluster = EmbeddedRedisCluster(masters=3).start()
            started.append(cluster)
            redis_url = cluster.url
            for i, proc in enumerate(cluster.procs):
                pids[f"redis {i + 1}"] = proc.pid
        elif redis_url is None:
            redis = EmbeddedRedis().start()
            started.append(redis)
            redis_url = redis.url
            if redis.proc is not None:
                pids["redis"] = redis.proc.pid
            log.info("embedded Redis on 127.0.0.1:%d", redis.port)
        yield kafka_url, redis_url, cfg.redis_url is None
    finally:
        for server in reversed(started):
            server.stop()


def _delete_topics(settings: Settings, topics: list[str]) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(settings.kafka_client_config())
    for name, fut in admin.delete_topics(topics, operation_timeout=15).items():
        try:
            fut.result(15)
        except Exception as exc:  # clean-up is best effort, and said so
            log.warning("could not delete topic %s: %s", name, exc)


def redis_client(settings: Settings) -> Any:
    """The settings' asyncio client, plain or cluster."""
    from stream.redis_client import client_from_url

    return client_from_url(
        settings.redis_url, cluster=settings.redis_cluster, **settings.redis_client_kwargs()
    )


async def _unlink(client: Any, keys: list[bytes]) -> int:
    # One key per command: on a cluster a multi-key UNLINK must stay in one slot.
    async with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.unlink(key)
        return sum(await pipe.execute())


async def _delete_prefix(settings: Settings) -> int:
    client = redis_client(settings)
    n = 0
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{settings.redis_prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                n += await _unlink(client, batch)
                batch.clear()
        if batch:
            n += await _unlink(client, batch)
    finally:
        await client.aclose()
    return n


async def redis_footprint(settings: Settings) -> dict[str, dict[str, int]]:
    """MEMORY USAGE (exact: SAMPLES 0) of every key under the prefix, by Redis type.

    By type rather than by key name, so it stays right whatever layout
    stream/store.py uses (states in hashes, indexes in sorted sets, ...).
    """
    client = redis_client(settings)
    out: dict[str, dict[str, int]] = {}
    try:
        keys = [k async for k in client.scan_iter(match=f"{settings.redis_prefix}:*", count=1000)]
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            async with client.pipeline(transaction=False) as pipe:
                for key in chunk:
                    pipe.type(key)
                    pipe.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0")
                replies = await pipe.execute()
            for kind, size in zip(replies[::2], replies[1::2], strict=True):
                name = kind.decode() if isinstance(kind, bytes) else str(kind)
                entry = out.setdefault(name, {"keys": 0, "bytes": 0})
                entry["keys"] += 1
                entry["bytes"] += int(size or 0)
    finally:
        await client.aclose()
    return out


async def dedup_bytes_per_user(settings: Settings, groups: int = 4) -> float:
    """Mean bytes of the users' deduplication memory (stream.dedup) inside their
    records, over the users of ``groups`` hash-tag groups: a part of the records' size."""
    from stream.store import StateStore, decode_record

    store = StateStore.from_settings(settings)
    sizes: list[int] = []
    try:
        for group in range(groups):
            records = await store.bucket_records(group)
            sizes += [decode_record(v, None).seen.encoded_size() for v in records]
    finally:
        await store.close()
    return sum(sizes) / max(1, len(sizes))


class _GroupWatch:
    """Follows the workers' logs for partition assignments (app.py logs each one)."""

    MARK = b"partitions assigned: "

    def __init__(self, logs: list[Path]) -> None:
        self._offsets = dict.fromkeys(logs, 0)
        self._assigned: set[Path] = set()

    @property
    def complete(self) -> bool:
        """Every worker has been assigned at least once."""
        return len(self._assigned) == len(self._offsets)

    def poll(self) -> bool:
        """True if any worker logged a (new) assignment since the last poll."""
        changed = False
        for path, offset in self._offsets.items():
            try:
                with path.open("rb") as fh:
                    fh.seek(offset)
                    data = fh.read()
            except OSError:
                continue
            complete = data[: data.rfind(b"\n") + 1]  # whole lines only
            self._offsets[path] = offset + len(complete)
            if self.MARK in complete:
                self._assigned.add(path)
                changed = True
        return changed


# --------------------------------------------------------------------------- the bench


class Bench:
    def __init__(self, cfg: BenchConfig, console: Console | None = None) -> None:
        cfg.validate()
        self.cfg = cfg
        self.console = console or Console(stderr=True)
        self.run_id = uuid.uuid4().hex[:8]
        self.workdir = Path(tempfile.mkdtemp(prefix=f"segmenter-bench-{self.run_id}-"))
        self.total = 0
        self.users = 0
        self.keep_workdir = False
        #: Embedded servers' pids, by role (for the CPU breakdown).
        self.server_pids: dict[str, int] = {}

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )

    def _settings(self, kafka_url: str, redis_url: str) -> Settings:
        base = f"bench-{self.run_id}"
        return load_settings(
            kafka_url=kafka_url,
            redis_url=redis_url,
            redis_cluster=self.cfg.redis_cluster,
            redis_prefix=base,
            topic_clickstream=f"{base}-clickstream",
            topic_orders=f"{base}-orders",
            topic_segments=f"{base}-customer-segments",
            topic_dlq=f"{base}-dlq",
            topic_models=f"{base}-models",
            topic_partitions=self.cfg.partitions,
            group_id=f"{base}-pipeline",
            model_dir=self.workdir / "models",
            data_dir=self.workdir / "faust",
            # Short group timeouts (as the demo and tests use): they make the
            # group join take seconds rather than ~30 s, and do not touch the
            # data path being measured.
            broker_session_timeout_s=6.0,
            broker_rebalance_timeout_s=6.0,
            broker_heartbeat_interval_s=1.0,
        )

    def run(self) -> BenchResult:
        cfg = self.cfg
        try:
            with _servers(cfg, self.console, self.server_pids) as (
                kafka_url,
                redis_url,
                embedded_redis,
            ):
                settings = self._settings(kafka_url, redis_url)
                try:
                    return self._run(settings)
                finally:
                    if cfg.kafka_url is not None:
                        _delete_topics(settings, list(settings.all_topics))
                    if not embedded_redis:
                        n = asyncio.run(_delete_prefix(settings))
                        log.info("deleted %d keys under %s:*", n, settings.redis_prefix)
        except BaseException:
            self.keep_workdir = True
            log.error("bench failed; logs kept in %s", self.workdir)
            raise
        finally:
            if not self.keep_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def _run(self, settings: Settings) -> BenchResult:
        from model.registry import ensure_serving_model
        from stream.topics import ensure_topics

        cfg = self.cfg
        ensure_topics(settings)
        ensure_serving_model(settings.model_dir)  # once, not raced by several workers
        live = self._produce_backlog(settings)
        raw_eps = self._phase_raw(settings)
        faust_eps = self._phase_passthrough(settings)
        result = BenchResult(
            events=self.total,
            users=self.users,
            partitions=cfg.partitions,
            workers=cfg.workers,
            redis_cluster=cfg.redis_cluster,
            raw_eps=raw_eps,
            faust_passthrough_eps=faust_eps,
            pipeline_eps=0.0,
            settings={
                k: v
                for k, v in settings.model_dump().items()
                if k
                in (
                    "batch_max",
                    "consumer_batching",
                    "stream_buffer_maxsize",
                    "broker_max_poll_records",
                    "consumer_max_fetch_size",
                    "event_loop",
                    "gc_gen0_threshold",
                    "commit_interval_s",
                )
            },
        )
        if cfg.workers > 1:
            result.one_worker_eps = self._phase_one_worker(settings, result)
        if cfg.audiences:
            result.no_audiences_eps = self._phase_one_worker(
                settings, result, tag="no-audiences", workers=cfg.workers
            )
            path = write_bench_audiences(self.workdir / "audiences.yaml", cfg.audiences)
            settings = settings.model_copy(update={"audiences_path": path})
            result.audiences = cfg.audiences
        workers = self._start_workers(settings, cfg.workers)
        try:
            self._phase_pipeline(settings, workers, result)
            footprint = asyncio.run(redis_footprint(settings))
            total_bytes = sum(v["bytes"] for v in footprint.values())
            users = max(1, self.users)
            result.redis_bytes_per_user = total_bytes / users
            result.breakdown["redis"] = {
                "bytes_per_user_by_type": {
                    kind: round(v["bytes"] / users, 1) for kind, v in sorted(footprint.items())
                },
                "keys_by_type": {kind: v["keys"] for kind, v in sorted(footprint.items())},
                # Part of the records' bytes: what exact deduplication costs.
                "dedup_bytes_per_user": round(asyncio.run(dedup_bytes_per_user(settings)), 1),
            }
            log.info(
                "Redis: %.0f bytes/user over %d keys (%s)",
                result.redis_bytes_per_user,
                sum(v["keys"] for v in footprint.values()),
                ", ".join(f"{k} {v['bytes'] / users:.0f} B" for k, v in sorted(footprint.items())),
            )
            if cfg.latency_s > 0:
                # By default at B0's rate: a load bare Faust itself just sustains.
                load = cfg.latency_load
                rate = load * result.pipeline_eps if load else result.faust_passthrough_eps
                self._phase_latency(settings, workers, live, result, rate)
                if cfg.latency_curve is not None:
                    self._phase_curve(settings, workers, live, result, cfg.latency_curve)
        finally:
            for proc, _, _ in workers:
                stop_process(proc, 20)
        return result

    # ----------------------------------------------------------------- backlog

    def _produce_backlog(self, settings: Settings) -> Iterator[Any]:
        """Generate and produce the backlog; return the generator, continued for live traffic."""
        from stream.generate import GeneratorConfig, generate
        from stream.produce import make_producer, produce

        cfg = self.cfg
        gen_cfg = GeneratorConfig(
            users=cfg.users,
            days=cfg.days,
            seed=cfg.seed,
            clickstream_topic=settings.topic_clickstream,
            orders_topic=settings.topic_orders,
        )
        events = generate(gen_cfg)
        # Live traffic continues this history, then the same users' lives with
        # other seeds (event ids carry the seed, so none is a duplicate).
        more = (
            generate(dataclasses.replace(gen_cfg, seed=cfg.seed + k)) for k in itertools.count(1)
        )
        live = itertools.chain(events, itertools.chain.from_iterable(more))
        with self._progress() as bar:
            task = bar.add_task("generating backlog", total=cfg.events, rate="")
            backlog = []
            for e in itertools.islice(live, cfg.events):
                backlog.append(e)
                if len(backlog) % 5000 == 0:
                    bar.update(task, completed=len(backlog))
            bar.update(task, completed=len(backlog))
            # Moved in time so that the history ends now: live traffic then
            # continues it, with no jump of stream time (which would change
            # every user's recency at once, and their segments with it).
            shift = int(time.time() * 1000) - backlog[-1].timestamp_ms
            records = [
                (
                    e.topic,
                    e.key.encode(),
                    orjson.dumps({**e.value, "timestamp": e.timestamp_ms + shift}),
                )
                for e in backlog
            ]
            self.total, self.users = len(records), len({e.key for e in backlog})
            del backlog
            task = bar.add_task("producing backlog", total=self.total, rate="")
            started = time.monotonic()
            produce(
                make_producer(settings.kafka_client_config()),
                records,
                on_sent=lambda k: bar.advance(task, k),
            )
        log.info(
            "backlog: %s events of %s users over %d+%d partitions, produced in %.1f s",
            f"{self.total:,}",
            f"{self.users:,}",
            cfg.partitions,
            cfg.partitions,
            time.monotonic() - started,
        )
        return live

    # ----------------------------------------------------------------- phase R

    def _phase_raw(self, settings: Settings) -> float:
        samples = Samples()
        with self._progress() as bar:
            task = bar.add_task("R  raw aiokafka getmany", total=self.total, rate="")
            asyncio.run(self._raw_drain(settings, samples, lambda n: bar.update(task, completed=n)))
        eps = samples.rate(self.total)
        log.info("R: raw aiokafka drain at %s records/s", f"{eps:,.0f}")
        return eps

    async def _raw_drain(
        self, settings: Settings, samples: Samples, on_progress: Callable[[int], None]
    ) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            tps = [
                TopicPartition(topic, p)
                for topic in settings.input_topics
                for p in range(self.cfg.partitions)
            ]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            n = 0
            samples.add(time.monotonic(), 0)
            last_progress = time.monotonic()
            while n < self.total:
                got = await consumer.getmany(timeout_ms=1000, max_records=2000)
                k = sum(len(v) for v in got.values())
                now = time.monotonic()
                if k:
                    n += k
                    samples.add(now, n)
                    on_progress(n)
                    last_progress = now
                elif now - last_progress > self.cfg.stall_s:
                    raise BenchError(f"R: stuck at {n:,}/{self.total:,} records")
        finally:
            await consumer.stop()

    # ----------------------------------------------------------------- phase B0

    def _phase_passthrough(self, settings: Settings) -> float:
        log_path = self.workdir / "passthrough.log"
        cmd = [
            sys.executable,
            "-m",
            "stream.bench",
            "passthrough",
            "--broker",
            settings.faust_broker,
            "--topics",
            ",".join(settings.input_topics),
            "--group",
            f"bench-{self.run_id}-passthrough",
            "--expect",
            str(self.total),
            "--datadir",
            str(self.workdir / "passthrough-data"),
            "--logfile",
            str(log_path),
        ]
        samples = Samples()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=settings.to_env()
        )
        lines: list[bytes] = []

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            with self._progress() as bar:
                task = bar.add_task("B0 bare Faust take(1000)", total=self.total, rate="")
                started = last = time.monotonic()
                seen = 0
                while samples.last < self.total:
                    time.sleep(0.05)
                    while seen < len(lines):
                        point = orjson.loads(lines[seen])
                        seen += 1
                        samples.add(point["t"], point["n"])
                        last = time.monotonic()
                    bar.update(task, completed=samples.last)
                    if proc.poll() is not None and samples.last < self.total:
                        raise BenchError(
                            f"B0: the passthrough worker exited {proc.returncode} at "
                            f"{samples.last:,} records:\n{_tail(log_path)}"
                        )
                    limit = self.cfg.stall_s + (90 if not samples.last else 0)
                    if time.monotonic() - max(last, started) > limit:
                        raise BenchError(
                            f"B0: no progress for {limit:.0f} s at {samples.last:,} records:\n"
                            f"{_tail(log_path)}"
                        )
        finally:
            stop_process(proc, 10)
            reader.join(5)
        eps = samples.rate(self.total)
        log.info("B0: bare Faust agent, default settings, at %s records/s", f"{eps:,.0f}")
        return eps

    # ----------------------------------------------------------------- phase P

    def _start_workers(
        self, settings: Settings, n: int
    ) -> list[tuple[subprocess.Popen[bytes], Path, int]]:
        workers = []
        for i in range(n):
            port = free_port()
            env = settings.model_copy(update={"metrics_port": port}).to_env()
            log_path = self.workdir / f"worker-{settings.group_id}-{i}.log"
            proc = spawn_worker(env, log_path)
            workers.append((proc, log_path, port))
            log.info("started segmenter worker %d (pid %d, metrics port %d)", i, proc.pid, port)
        return workers

    def _check_alive(self, workers: list[tuple[subprocess.Popen[bytes], Path, int]]) -> None:
        for proc, log_path, _ in workers:
            if proc.poll() is not None:
                raise BenchError(
                    f"worker pid {proc.pid} exited {proc.returncode}:\n{_tail(log_path)}"
                )

    @staticmethod
    def _sched(
        workers: list[tuple[subprocess.Popen[bytes], Path, int]],
    ) -> list[tuple[float, float]]:
        return [main_thread_sched(p.pid) for p, _, _ in workers]

    def _cpu(self, workers: list[tuple[subprocess.Popen[bytes], Path, int]]) -> dict[str, float]:
        """CPU seconds used so far by the workers, each embedded server and this process."""
        return {
            "workers": sum(cpu_seconds(p.pid) for p, _, _ in workers),
            **{role: cpu_seconds(pid) for role, pid in self.server_pids.items()},
            "bench driver": cpu_seconds(os.getpid()),
        }

    def _phase_one_worker(
        self, settings: Settings, result: BenchResult, tag: str = "one", workers: int = 1
    ) -> float:
        """P as a reference, on its own consumer group and key prefix, so that a
        ratio is measured in one run: one worker (``--workers N``), or the same
        workers without rule audiences (``--audiences N``)."""
        one = settings.model_copy(
            update={
                "group_id": f"{settings.group_id}-{tag}",
                "redis_prefix": f"{settings.redis_prefix}-{tag}",
            }
        )
        scratch = dataclasses.replace(result, breakdown={})
        procs = self._start_workers(one, workers)
        try:
            self._phase_pipeline(one, procs, scratch, profile=False)
        finally:
            for proc, _, _ in procs:
                stop_process(proc, 20)
            n = asyncio.run(_delete_prefix(one))
            log.info("%s reference: deleted its %d keys", tag, n)
        result.breakdown["one_worker" if tag == "one" else tag] = scratch.breakdown.get(
            "pipeline", {}
        )
        return scratch.pipeline_eps

    def _phase_pipeline(
        self,
        settings: Settings,
        workers: list[tuple[subprocess.Popen[bytes], Path, int]],
        result: BenchResult,
        profile: bool = True,
    ) -> None:
        from stream.store import StateStore

        samples = Samples()
        rss = 0.0
        group = _GroupWatch([log_path for _, log_path, _ in workers])
        # (time, records, metrics) at the start and the end of the measured window
        start: tuple[float, int, list[dict[str, float]]] | None = None
        end: tuple[float, int, list[dict[str, float]]] | None = None
        profiler: subprocess.Popen[bytes] | None = None
        cpu_start: dict[str, float] = {}
        cpu_end: dict[str, float] = {}
        sched_start: list[tuple[float, float]] = []
        sched_end: list[tuple[float, float]] = []
        profile_path = None
        if profile and self.cfg.profile_dir is not None:
            self.cfg.profile_dir.mkdir(parents=True, exist_ok=True)
            profile_path = self.cfg.profile_dir / f"worker-{self.run_id}.raw"
        with self._progress() as bar, asyncio.Runner() as runner:
            store = StateStore.from_settings(settings)
            label = f"P  segmenter worker x{len(workers)}"
            task = bar.add_task(label, total=self.total, rate="")
            began = last = time.monotonic()
            while samples.last < self.total:
                time.sleep(0.05)
                self._check_alive(workers)
                offsets = runner.run(store.partition_offsets())
                n = sum(v + 1 for v in offsets.values())
                now = time.monotonic()
                if n > samples.last:
                    last = now
                samples.add(now, n)
                rss = max([rss, *(vm_rss_mb(p.pid) for p, _, _ in workers)])
                bar.update(task, completed=n)
                if group.poll() and start is not None and end is None:
                    # A rebalance inside the window would be measured as slowness.
                    log.info("P: the group rebalanced at %s records; window restarts", f"{n:,}")
                    start = None
                if start is None and group.complete and n >= WINDOW[0] * self.total:
                    start = (now, n, [scrape(port) for _, _, port in workers])
                    cpu_start = self._cpu(workers)
                    sched_start = self._sched(workers)
                    if profile_path is not None and profiler is None:
                        profiler = self._start_profiler(workers[0][0].pid, profile_path)
                if start is not None and end is None and n >= WINDOW[1] * self.total:
                    end = (now, n, [scrape(port) for _, _, port in workers])
                    cpu_end = self._cpu(workers)
                    sched_end = self._sched(workers)
                    if profiler is not None:
                        profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                limit = self.cfg.stall_s + (120 if not n else 0)
                if now - max(last, began) > limit:
                    raise BenchError(
                        f"P: no progress for {limit:.0f} s at {n:,} records:\n"
                        f"{_tail(workers[0][1])}"
                    )
            runner.run(store.close())
        if start is None or end is None or end[1] - start[1] < 0.2 * self.total:
            raise BenchError(
                "P: the consumer group was not stable over enough of the backlog to measure "
                "(worker logs: " + ", ".join(str(p) for _, p, _ in workers) + ")"
            )
        result.pipeline_eps = (end[1] - start[1]) / (end[0] - start[0])
        result.worker_rss_mb = rss
        log.info(
            "P: full pipeline, %d worker(s), at %s records/s (worker RSS up to %.0f MB)",
            len(workers),
            f"{result.pipeline_eps:,.0f}",
            rss,
        )
        result.breakdown["pipeline"] = metrics_breakdown(start[2], end[2], end[0] - start[0])
        # Where the machine's cores went over the window: on a small machine
        # the broker and Redis share them with the workers, which bounds
        # what more workers can add.
        result.breakdown["pipeline"]["cpu_cores"] = {
            **cpu_shares(cpu_start, cpu_end, end[0] - start[0]),
            "machine": float(os.cpu_count() or 0),
        }
        result.breakdown["pipeline"]["agent_thread_pct"] = agent_thread_shares(
            sched_start, sched_end, end[0] - start[0]
        )
        if profiler is not None and profile_path is not None:
            try:
                profiler.wait(30)
            except subprocess.TimeoutExpired:
                profiler.kill()
            if profile_path.exists():
                result.breakdown["profile"] = {
                    "file": str(profile_path),
                    **profile_breakdown(profile_path.read_text()),
                }

    def _start_profiler(self, pid: int, out: Path) -> subprocess.Popen[bytes] | None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(exe).exists():
            log.warning("--profile needs py-spy (pip install py-spy); no profile taken")
            return None
        # Blocking sampling (accurate stacks; --nonblocking ones came out torn
        # under asyncio) at a low rate, so the worker is barely slowed.
        cmd = [exe, "record", "-p", str(pid), "--idle", "--threads", "-r", "50"]
        cmd += ["-f", "raw", "-o", str(out)]
        log.info("profiling worker pid %d: %s", pid, " ".join(cmd))
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    # ----------------------------------------------------------------- latency

    def _phase_latency(
        self,
        settings: Settings,
        workers: list[tuple[subprocess.Popen[bytes], Path, int]],
        live: Iterator[Any],
        result: BenchResult,
        rate: float,
    ) -> None:
        from confluent_kafka import Consumer, TopicPartition

        from stream.produce import make_producer

        rate = max(100.0, rate)
        result.latency_rate_eps = rate
        # Generated up front: generating while pacing would take CPU from the worker.
        traffic = [
            (e.topic, e.key.encode(), dict(e.value))
            for e in itertools.islice(live, int(rate * self.cfg.latency_s))
        ]
        # The breakdown's window opens after the first second of paced
        # traffic: the workers' wait for the phase's first records began
        # when P ended, and is not part of serving paced traffic.
        warm_up = int(rate)
        before: list[dict[str, float]] = []
        began = time.monotonic()
        cpu_before: dict[str, float] = {}
        sched_before: list[tuple[float, float]] = []
        ends = asyncio.run(self._end_offsets(settings, settings.topic_segments))
        consumer = Consumer(
            {
                **settings.kafka_client_config(),
                "group.id": f"bench-{self.run_id}-latency",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        consumer.assign(
            [TopicPartition(settings.topic_segments, p, off) for p, off in ends.items()]
        )
        latencies: list[float] = []
        per_second: dict[int, list[float]] = {}
        stop = threading.Event()
        phase_start_ms = int(time.time() * 1000)

        def read() -> None:
            while not stop.is_set():
                for msg in consumer.consume(1000, timeout=0.05):
                    received = time.time()
                    value = msg.value()
                    if msg.error() is not None or value is None:
                        continue
                    change = orjson.loads(value)
                    if change.get("trigger") != "events":
                        continue
                    at = datetime.fromisoformat(change["event_time"]).timestamp()
                    if at * 1000 >= phase_start_ms:
                        latencies.append((received - at) * 1000)
                        per_second.setdefault(int(received - phase_start_ms / 1000), []).append(
                            (received - at) * 1000
                        )

        # Connect the reader before pacing starts: librdkafka's first fetch
        # after assign() waits for a connection and metadata, and changes
        # published meanwhile would be timed as late by the reader, not the
        # worker. Nothing is produced yet, so nothing is missed.
        for _ in range(10):
            consumer.consume(1, timeout=0.1)
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        input_ends = {
            (topic, p): off
            for topic in settings.input_topics
            for p, off in asyncio.run(self._end_offsets(settings, topic)).items()
        }
        raw = RawReader(
            settings.kafka_client_config(),
            f"bench-{self.run_id}-raw",
            input_ends,
            phase_start_ms,
        ).start()
        producer = make_producer(settings.kafka_client_config(), **{"linger.ms": 1})
        # Likewise the producer: events are stamped when produced, so the
        # first ones would otherwise wait in librdkafka for its connection.
        for topic in settings.input_topics:
            producer.list_topics(topic, timeout=10)
        rss = result.worker_rss_mb
        sent = 0
        with self._progress() as bar:
            total = int(rate * self.cfg.latency_s)
            task = bar.add_task(f"latency at {rate:,.0f} ev/s", total=total, rate="")
            started = time.monotonic()
            for topic, key, value in traffic:
                value["timestamp"] = int(time.time() * 1000)
                produce_waiting(producer, topic, key, orjson.dumps(value))
                sent += 1
                if sent == warm_up:
                    before = [scrape(port) for _, _, port in workers]
                    began = time.monotonic()
                    cpu_before = self._cpu(workers)
                    sched_before = self._sched(workers)
                if sent % 100 == 0:
                    producer.poll(0)
                    bar.update(task, completed=sent, rate=f"{len(latencies):,} changes")
                    rss = max([rss, *(vm_rss_mb(p.pid) for p, _, _ in workers)])
                    self._check_alive(workers)
                    ahead = sent / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
            producer.flush(30)
            bar.update(task, completed=sent, rate=f"{len(latencies):,} changes")
        if not before:  # under a second of traffic: the window is what is left
            before = [scrape(port) for _, _, port in workers]
            began = time.monotonic()
            cpu_before = self._cpu(workers)
            sched_before = self._sched(workers)
        # The window closes with the paced traffic, before the idle tail.
        after = [scrape(port) for _, _, port in workers]
        wall = time.monotonic() - began
        cpu_after = self._cpu(workers)
        sched_after = self._sched(workers)
        time.sleep(2.0)  # the last batches' changes
        stop.set()
        reader.join(5)
        consumer.close()
        raw_latencies = raw.stop()
        if raw_latencies:
            result.raw_p50_ms = percentile(raw_latencies, 50)
            result.raw_p99_ms = percentile(raw_latencies, 99)
        result.breakdown["latency"] = metrics_breakdown(before, after, wall)
        # The driver's paced producer and the broker's ingest share the cores here.
        result.breakdown["latency"]["cpu_cores"] = {
            **cpu_shares(cpu_before, cpu_after, wall),
            "machine": float(os.cpu_count() or 0),
        }
        # Whether the agent's thread got a core when it wanted one.
        result.breakdown["latency"]["agent_thread_pct"] = agent_thread_shares(
            sched_before, sched_after, wall
        )
        published = _histogram_delta(before, after, "segmenter_event_to_publish_seconds")
        if published:
            result.breakdown["latency"]["event_to_publish_ms"] = published
        # Second by second, so a transient (a slow first batch) shows as one.
        result.breakdown["latency"]["p50_ms_by_second"] = [
            round(percentile(per_second[k], 50)) for k in sorted(per_second)
        ]
        result.worker_rss_mb = rss
        result.latency_samples = len(latencies)
        if latencies:
            result.p50_ms = percentile(latencies, 50)
            result.p99_ms = percentile(latencies, 99)
            log.info(
                "latency at %s ev/s: p50 %.1f ms, p99 %.1f ms over %d segment changes "
                "(raw transport: p50 %s ms, p99 %s ms)",
                f"{rate:,.0f}",
                result.p50_ms,
                result.p99_ms,
                len(latencies),
                f"{result.raw_p50_ms:.1f}" if result.raw_p50_ms is not None else "-",
                f"{result.raw_p99_ms:.1f}" if result.raw_p99_ms is not None else "-",
            )
        else:
            log.warning("latency: no segment change was published for the paced events")

    def _phase_curve(
        self,
        settings: Settings,
        workers: list[tuple[subprocess.Popen[bytes], Path, int]],
        live: Iterator[Any],
        result: BenchResult,
        out_dir: Path,
    ) -> None:
        """p50 and p99 from 10% to 80% of P, with the raw transport's beside them."""
        points: list[CurvePoint] = []
        for load in CURVE_LOADS:
            scratch = dataclasses.replace(result, breakdown={}, p50_ms=None, p99_ms=None)
            scratch.raw_p50_ms = scratch.raw_p99_ms = None
            self._phase_latency(settings, workers, live, scratch, load * result.pipeline_eps)
            result.worker_rss_mb = max(result.worker_rss_mb, scratch.worker_rss_mb)
            points.append(
                CurvePoint(
                    load,
                    scratch.latency_rate_eps or 0.0,
                    scratch.p50_ms,
                    scratch.p99_ms,
                    scratch.raw_p50_ms,
                    scratch.raw_p99_ms,
                )
            )
        result.latency_curve = [p.to_json() for p in points]
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "latency-curve.md").write_text(curve_table(points))
        title = (
            f"segmenter bench, {result.workers} worker(s), P = {result.pipeline_eps:,.0f} ev/s, "
            f"{time.strftime('%Y-%m-%d')}"
        )
        png = plot_curve(points, out_dir / "latency-curve.png", title)
        log.info("latency curve: %s and %s", png, out_dir / "latency-curve.md")

    async def _end_offsets(self, settings: Settings, topic: str) -> dict[int, int]:
        # aiokafka's end offsets, not librdkafka's watermarks, which
        # under-report on Tansu (docs/design.md).
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
            ends = await consumer.end_offsets(tps)
            return {tp.partition: off for tp, off in ends.items()}
        finally:
            await consumer.stop()


def run_bench(cfg: BenchConfig, console: Console | None = None) -> BenchResult:
    return Bench(cfg, console).run()


# --------------------------------------------------------------------------- output


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
        + (", on Redis Cluster (3 masters)" if result.redis_cluster else ""),
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


# --------------------------------------------------------------------------- B0 child


def passthrough_main(argv: list[str]) -> int:
    """The B0 worker: a bare Faust agent with default settings, reporting progress on stdout.

    Defaults except: a temp ``datadir``, no web server (a port we might not
    get), short group timeouts (the join only), and raw serializers on the
    topic (no JSON decoding: that would only make B0 slower). Logs at INFO,
    as the real worker does (at WARNING, Faust turns on a spinner that sets
    the root logger to DEBUG).
    """
    import faust

    p = argparse.ArgumentParser(prog="stream.bench passthrough")
    p.add_argument("--broker", required=True)
    p.add_argument("--topics", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--expect", type=int, required=True)
    p.add_argument("--datadir", required=True)
    p.add_argument("--logfile", required=True)
    args = p.parse_args(argv)

    app = faust.App(
        args.group,
        broker=args.broker,
        datadir=args.datadir,
        web_enabled=False,
        broker_session_timeout=6.0,
        broker_rebalance_timeout=6.0,
        broker_heartbeat_interval=1.0,
    )
    topic = app.topic(*args.topics.split(","), key_serializer="raw", value_serializer="raw")
    out = sys.stdout.buffer
    seen = {"n": 0}

    @app.agent(topic)
    async def passthrough(stream: Any) -> None:
        async for batch in stream.take(1000, within=0.05):
            seen["n"] += len(batch)
            out.write(orjson.dumps({"t": time.monotonic(), "n": seen["n"]}) + b"\n")
            out.flush()
            if seen["n"] >= args.expect:
                os._exit(0)  # measured; nothing to shut down cleanly for

    faust.Worker(
        app, loglevel="INFO", logfile=args.logfile, quiet=True, redirect_stdouts=False
    ).execute_from_commandline()
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "passthrough":
        sys.exit(passthrough_main(sys.argv[2:]))
    sys.exit("usage: python -m stream.bench passthrough ... (the bench itself: segmenter bench)")
