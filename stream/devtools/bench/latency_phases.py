"""The latency phases: paced events against the pipeline, the raw transport
beside it, and the curve from 10% to 80% of P."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from rich.progress import Progress

from stream.devtools.bench.config import BenchConfig
from stream.devtools.bench.latency import (
    CURVE_LOADS,
    CurvePoint,
    RawReader,
    curve_table,
    plot_curve,
)
from stream.devtools.bench.measure import (
    agent_thread_shares,
    cpu_shares,
    histogram_delta,
    metrics_breakdown,
    percentile,
    scrape,
    vm_rss_mb,
)
from stream.devtools.bench.results import BenchResult
from stream.settings import Settings
from stream.sinks import produce_waiting

log = logging.getLogger("segmenter.bench")


Workers = list[tuple[subprocess.Popen[bytes], Path, int]]


class LatencyPhases:
    """Mixed into stream.devtools.bench.runner.Bench, which provides what is declared here."""

    cfg: BenchConfig
    run_id: str

    def _progress(self) -> Progress:
        raise NotImplementedError

    def _check_alive(self, workers: Workers) -> None:
        raise NotImplementedError

    def _cpu(self, workers: Workers) -> dict[str, float]:
        raise NotImplementedError

    @staticmethod
    def _sched(workers: Workers) -> list[tuple[float, float]]:
        raise NotImplementedError

    def _phase_latency(
        self,
        settings: Settings,
        workers: list[tuple[subprocess.Popen[bytes], Path, int]],
        live: Iterator[Any],
        result: BenchResult,
        rate: float,
    ) -> None:
        from confluent_kafka import Consumer, TopicPartition

        from stream.training.produce import make_producer

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
        published = histogram_delta(before, after, "segmenter_event_to_publish_seconds")
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
            + (", pinned (servers core 0, worker core 1)" if result.pinned else "")
        )
        png = plot_curve(points, out_dir / "latency-curve.png", title)
        log.info("latency curve: %s and %s", png, out_dir / "latency-curve.md")

    async def _end_offsets(self, settings: Settings, topic: str) -> dict[int, int]:
        # aiokafka's end offsets, not librdkafka's watermarks, which
        # under-report on Tansu (docs/design.md).
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from stream.devtools.bench.security import aiokafka_security

        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers, **aiokafka_security(settings)
        )
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
            ends = await consumer.end_offsets(tps)
            return {tp.partition: off for tp, off in ends.items()}
        finally:
            await consumer.stop()
