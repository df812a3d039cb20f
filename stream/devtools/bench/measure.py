"""Measuring helpers: percentiles, CPU and RSS of processes, the workers' metrics, profiles."""

from __future__ import annotations

import logging
import os
import re
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

log = logging.getLogger("segmenter.bench")


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


def log_tail(path: Path, n: int = 3000) -> str:
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


def histogram_delta(
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
    ("decode + validate", re.compile(r"BatchProcessor\._decode|\(stream/core/events\.py")),
    ("dead-letter", re.compile(r"_dead_letter")),
    ("redis client (round trips)", re.compile(r"\(redis/")),
    (
        "store: encode/decode records",
        re.compile(r"\(stream/worker/(store|store_writes|store_keys|record_codec)\.py"),
    ),
    ("fold", re.compile(r"\(stream/core/(fold|dedup)\.py")),
    ("features", re.compile(r"\(model/features\.py")),
    ("score + explain", re.compile(r"\(model/(scorer|explain|training/network)\.py")),
    ("publish changes", re.compile(r"FaustSink|Topic\.send|\(aiokafka/producer/")),
    ("metrics", re.compile(r"\(prometheus_client/")),
    (
        "pipeline (other)",
        re.compile(
            r"\(stream/worker/(pipeline|playbook|batch|checkpoint|changes|schedule)\.py"
            r"|\(model/segments\.py"
        ),
    ),
)
# Only when no pipeline stage is on the stack: what the rest of the loop does.
_GENERIC: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "faust: fetch, deliver, ack",
        re.compile(r"\(stream/worker/consumer\.py|\(faust/|\(aiokafka/|\(mode/(services|threads)"),
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
