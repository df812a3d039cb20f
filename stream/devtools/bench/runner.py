"""The bench's phases R, B0 and P, in one run.

The latency phases are in :mod:`stream.devtools.bench.latency`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
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

from stream.devtools.bench.audiences import write_bench_audiences
from stream.devtools.bench.config import WINDOW, BenchConfig, BenchError, Samples
from stream.devtools.bench.latency import (
    SERVERS_CORE,
    WORKER_CORE,
    pin_process,
)
from stream.devtools.bench.latency_phases import LatencyPhases
from stream.devtools.bench.measure import (
    agent_thread_shares,
    cpu_seconds,
    cpu_shares,
    log_tail,
    main_thread_sched,
    metrics_breakdown,
    profile_breakdown,
    scrape,
    vm_rss_mb,
)
from stream.devtools.bench.peers import follow_child, run_peer, run_topics
from stream.devtools.bench.results import BenchResult
from stream.devtools.bench.servers import (
    GroupWatch,
    dedup_bytes_per_user,
    delete_prefix,
    delete_topics,
    redis_footprint,
    run_servers,
)
from stream.devtools.embedded import (
    free_port,
    spawn_worker,
    stop_process,
)
from stream.settings import Settings, load_settings

log = logging.getLogger("segmenter.bench")


class Bench(LatencyPhases):
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
            with run_servers(cfg, self.console, self.server_pids) as (
                kafka_url,
                redis_url,
                embedded_redis,
            ):
                settings = self._settings(kafka_url, redis_url)
                if cfg.pin:
                    for pid in [os.getpid(), *self.server_pids.values()]:
                        pin_process(pid, SERVERS_CORE)
                    log.info(
                        "pinned: the driver and %s on core %d, workers on core %d",
                        ", ".join(self.server_pids) or "no embedded server",
                        SERVERS_CORE,
                        WORKER_CORE,
                    )
                try:
                    return self._run(settings)
                finally:
                    if cfg.kafka_url is not None:
                        # The peers' topics too (their outputs, quix's changelogs).
                        theirs = run_topics(settings, self.run_id) if cfg.peers else []
                        delete_topics(settings, sorted({*settings.all_topics, *theirs}))
                    if not embedded_redis:
                        n = asyncio.run(delete_prefix(settings))
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
            pinned=cfg.pin,
            broker=cfg.broker_label,
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
                    "state_cache_users",
                    "commit_interval_s",
                    "consumer_fetch_max_wait_ms",
                    "producer_linger_ms",
                )
            },
        )
        for peer in cfg.peers:
            self._phase_peer(settings, result, peer)
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
        from stream.training.generate import GeneratorConfig, generate
        from stream.training.produce import make_producer, produce

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

        from stream.devtools.bench.security import aiokafka_security

        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **aiokafka_security(settings),
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
            "stream.devtools.bench",
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
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=settings.to_env()
        )
        if self.cfg.pin:
            pin_process(proc.pid, WORKER_CORE)
        with self._progress() as bar:
            task = bar.add_task("B0 bare Faust take(1000)", total=self.total, rate="")
            samples = follow_child(
                proc,
                "B0: the passthrough worker",
                self.total,
                log_path,
                self.cfg.stall_s,
                lambda n: bar.update(task, completed=n),
            ).samples
        eps = samples.rate(self.total)
        log.info("B0: bare Faust agent, default settings, at %s records/s", f"{eps:,.0f}")
        return eps

    def _phase_peer(self, settings: Settings, result: BenchResult, peer: str) -> None:
        """A peer's trivial fold on the same backlog (stream.devtools.bench.peers)."""
        with self._progress() as bar:
            task = bar.add_task(f"peer {peer}", total=self.total, rate="")
            eps, version = run_peer(
                peer,
                settings,
                run_id=self.run_id,
                total=self.total,
                workdir=self.workdir,
                stall_s=self.cfg.stall_s,
                on_start=lambda pid: pin_process(pid, WORKER_CORE) if self.cfg.pin else None,
                on_progress=lambda n: bar.update(task, completed=n),
            )
        setattr(result, f"{peer}_eps", eps)
        result.peer_versions[peer] = version

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
            if self.cfg.pin:
                pin_process(proc.pid, WORKER_CORE)
            workers.append((proc, log_path, port))
            log.info("started segmenter worker %d (pid %d, metrics port %d)", i, proc.pid, port)
        return workers

    def _check_alive(self, workers: list[tuple[subprocess.Popen[bytes], Path, int]]) -> None:
        for proc, log_path, _ in workers:
            if proc.poll() is not None:
                raise BenchError(
                    f"worker pid {proc.pid} exited {proc.returncode}:\n{log_tail(log_path)}"
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
            n = asyncio.run(delete_prefix(one))
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
        from stream.worker.state.store import StateStore

        samples = Samples()
        rss = 0.0
        group = GroupWatch([log_path for _, log_path, _ in workers])
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
                        f"{log_tail(workers[0][1])}"
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


def run_bench(cfg: BenchConfig, console: Console | None = None) -> BenchResult:
    return Bench(cfg, console).run()
