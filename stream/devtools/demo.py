"""`segmenter demo`: the whole path on one machine, in one command.

With no SEGMENTER_KAFKA_URL / SEGMENTER_REDIS_URL in the environment it starts
an embedded Tansu broker (or, with ``--broker kafka``, a local Apache Kafka:
stream/devtools/apache_kafka.py) and an embedded redis-server on free loopback ports;
with them set it uses those servers (under the prefix ``demo`` unless
SEGMENTER_REDIS_PREFIX says otherwise). It then runs a real `segmenter worker`
process, streams generated traffic, shows segment changes as they are
published, and ends with a summary. Every process it started is stopped by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from stream.devtools.apache_kafka import ApacheKafka
from stream.devtools.embedded import (
    EmbeddedKafka,
    EmbeddedRedis,
    free_port,
    spawn_worker,
    stop_process,
)
from stream.settings import ENV_PREFIX, Settings, load_settings
from stream.sinks import produce_waiting
from stream.topics import ensure_topics
from stream.training.generate import GeneratorConfig, generate
from stream.training.produce import encode_generated, make_producer
from stream.worker.state.store import StateStore
from stream.worker.web.lookup import lookup_user

console = Console()


@dataclass
class DemoState:
    produced: int = 0
    users: set[str] = field(default_factory=set)
    end_offsets: dict[str, int] = field(default_factory=dict)
    changes: Counter[str] = field(default_factory=Counter)
    transitions: Counter[tuple[str, str]] = field(default_factory=Counter)
    recent: deque[dict[str, object]] = field(default_factory=lambda: deque(maxlen=12))
    received: int = 0
    errors: list[str] = field(default_factory=list)
    producing_done: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextlib.contextmanager
def _servers(broker_kind: str = "tansu") -> Iterator[dict[str, str]]:
    """Environment overrides for whichever servers we had to start ourselves."""
    env: dict[str, str] = {}
    started: list[ApacheKafka | EmbeddedKafka | EmbeddedRedis] = []
    try:
        if not os.environ.get(f"{ENV_PREFIX}KAFKA_URL") and broker_kind == "kafka":
            console.print("starting Apache Kafka (a JVM: a few seconds)")
            kafka = ApacheKafka().start()
            started.append(kafka)
            env[f"{ENV_PREFIX}KAFKA_URL"] = kafka.url
            console.print(f"started Apache Kafka on {kafka.bootstrap}")
        elif not os.environ.get(f"{ENV_PREFIX}KAFKA_URL"):
            broker = EmbeddedKafka().start()
            started.append(broker)
            env[f"{ENV_PREFIX}KAFKA_URL"] = broker.url
            console.print(f"started embedded Tansu broker on {broker.bootstrap}")
        if not os.environ.get(f"{ENV_PREFIX}REDIS_URL"):
            redis = EmbeddedRedis().start()
            started.append(redis)
            env[f"{ENV_PREFIX}REDIS_URL"] = redis.url
            console.print(f"started embedded Redis on 127.0.0.1:{redis.port}")
        if not os.environ.get(f"{ENV_PREFIX}REDIS_PREFIX"):
            env[f"{ENV_PREFIX}REDIS_PREFIX"] = "demo"
        yield env
    finally:
        for server in reversed(started):
            server.stop()


def _produce(settings: Settings, cfg: GeneratorConfig, rate: float, st: DemoState) -> None:
    producer = make_producer(settings.kafka_client_config(), **{"linger.ms": 5})

    def delivered(err: object, msg: object) -> None:
        if err is not None:
            st.errors.append(str(err))
            return
        tp = f"{msg.topic()}:{msg.partition()}"  # type: ignore[attr-defined]
        with st.lock:
            st.end_offsets[tp] = max(st.end_offsets.get(tp, -1), msg.offset())  # type: ignore[attr-defined]

    started = time.monotonic()
    for i, (topic, key, value) in enumerate(encode_generated(generate(cfg)), 1):
        produce_waiting(producer, topic, key, value, on_delivery=delivered)
        st.produced = i
        st.users.add(key.decode())
        if rate > 0 and i % 100 == 0:
            ahead = i / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
            producer.poll(0)
    producer.flush(60)
    st.producing_done = True


def _consume(kafka: dict[str, object], topic: str, st: DemoState, stop: threading.Event) -> None:
    # Manual assignment from the beginning: no group join to wait for, and we
    # see every change the worker publishes during the run.
    consumer = Consumer(
        {
            **kafka,
            "group.id": "segmenter-demo-viewer",
            "enable.auto.commit": False,
        }
    )
    meta = consumer.list_topics(topic, timeout=10)
    parts = [TopicPartition(topic, p, -2) for p in meta.topics[topic].partitions]
    consumer.assign(parts)
    try:
        while not stop.is_set():
            for msg in consumer.consume(500, timeout=0.2):
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        st.errors.append(str(err))
                    continue
                change = orjson.loads(msg.value() or b"null")
                if change is None:
                    continue  # a tombstone (`segmenter forget`)
                with st.lock:
                    st.received += 1
                    st.changes[change["segment"]] += 1
                    st.transitions[(change["previous_segment"] or "-", change["segment"])] += 1
                    st.recent.appendleft(change)
    finally:
        consumer.close()


def _view(st: DemoState, total_hint: int, elapsed: float) -> Group:
    table = Table(title="latest segment changes (customer-segments)", expand=True)
    for col in ("user", "from", "to", "p", "event time", "model"):
        table.add_column(col)
    with st.lock:
        recent = list(st.recent)
        changes = dict(st.changes)
    for c in recent:
        probs = c["probabilities"]
        assert isinstance(probs, dict)
        table.add_row(
            str(c["user_id"]),
            str(c["previous_segment"] or "-"),
            f"[bold]{c['segment']}",
            f"{probs[c['segment']]:.2f}",
            str(c["event_time"])[:19],
            str(c["model_version"]),
        )
    counts = "  ".join(f"{k}: {v}" for k, v in sorted(changes.items()))
    header = (
        f"produced {st.produced:,}/{total_hint:,} events, {len(st.users):,} users, "
        f"{st.received:,} changes received, {elapsed:.0f}s  |  changes into: {counts}"
    )
    return Group(header, table)


async def _caught_up(settings: Settings, st: DemoState) -> bool:
    store = StateStore.from_settings(settings)
    try:
        applied = await store.partition_offsets()
    finally:
        await store.close()
    with st.lock:
        wanted = dict(st.end_offsets)
    return bool(wanted) and all(applied.get(tp, -1) >= off for tp, off in wanted.items())


def run_demo(
    *,
    users: int,
    days: float,
    seed: int,
    rate: float,
    timeout_s: float = 600.0,
    broker: str = "tansu",
) -> int:
    with _servers(broker) as env:
        os.environ.update(env)
        metrics_port = free_port()
        settings = load_settings(
            broker_session_timeout_s=6.0,
            broker_rebalance_timeout_s=6.0,
            broker_heartbeat_interval_s=1.0,
            metrics_port=metrics_port,
        )
        ensure_topics(settings)
        asyncio.run(_reset(settings))
        # The same settings, with a quieter log: the demo's own screen is the output.
        worker_env = settings.model_copy(update={"log_level": "WARNING"}).to_env()
        log_path = settings.data_dir.parent / "demo-worker.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        worker = spawn_worker(worker_env, log_path)
        try:
            return _drive(settings, worker, users, days, seed, rate, timeout_s, log_path)
        finally:
            stop_process(worker, 30)


async def _reset(settings: Settings) -> None:
    store = StateStore.from_settings(settings)
    try:
        await store.delete_prefix()
    finally:
        await store.close()


def _drive(
    settings: Settings,
    worker: subprocess.Popen[bytes],
    users: int,
    days: float,
    seed: int,
    rate: float,
    timeout_s: float,
    log_path: object,
) -> int:
    cfg = GeneratorConfig(users=users, days=days, seed=seed)
    total = sum(1 for _ in generate(cfg))
    st = DemoState()
    stop = threading.Event()
    viewer = threading.Thread(
        target=_consume,
        args=(settings.kafka_client_config(), settings.topic_segments, st, stop),
        daemon=True,
    )
    viewer.start()
    producer = threading.Thread(target=_produce, args=(settings, cfg, rate, st), daemon=True)
    started = time.monotonic()
    producer.start()
    caught_up_at: float | None = None
    with Live(_view(st, total, 0), console=console, refresh_per_second=4) as live:
        while time.monotonic() - started < timeout_s:
            time.sleep(0.5)
            live.update(_view(st, total, time.monotonic() - started))
            if worker.poll() is not None:
                console.print(f"[red]worker exited with code {worker.returncode}; see {log_path}")
                stop.set()
                return 1
            if st.producing_done and asyncio.run(_caught_up(settings, st)):
                caught_up_at = time.monotonic()
                break
        time.sleep(1.0)  # let the viewer read the last changes
        live.update(_view(st, total, time.monotonic() - started))
    stop.set()
    viewer.join(5)
    if caught_up_at is None:
        console.print(f"[red]the worker did not catch up within {timeout_s:.0f}s; see {log_path}")
        return 1
    elapsed = caught_up_at - started
    counts = asyncio.run(_segment_counts(settings))
    summary = Table(title="demo summary")
    summary.add_column("what")
    summary.add_column("value", justify="right")
    summary.add_row("events produced and applied", f"{st.produced:,}")
    summary.add_row("users", f"{len(st.users):,}")
    summary.add_row("segment changes published", f"{st.received:,}")
    for segment, n in sorted(st.changes.items()):
        summary.add_row(f"  changes into {segment}", f"{n:,}")
    for segment, n in sorted(counts.items()):
        summary.add_row(f"  users now in {segment}", f"{n:,}")
    summary.add_row("wall time to catch up", f"{elapsed:.1f} s")
    summary.add_row(
        "events/s (paced by --rate)" if rate else "events/s", f"{st.produced / elapsed:,.0f}"
    )
    console.print(summary)
    if st.errors:
        console.print(f"[red]{len(st.errors)} Kafka errors, first: {st.errors[0]}")
        return 1
    example = next(
        (str(c["user_id"]) for c in st.recent if c["segment"] == "high_value"),
        next(iter(sorted(st.users))),
    )
    found = asyncio.run(lookup_user(settings, example))
    console.print(f"what `segmenter user {example} --json` answers:")
    console.print_json(orjson.dumps(found).decode())
    return 0


async def _segment_counts(settings: Settings) -> dict[str, int]:
    store = StateStore.from_settings(settings)
    try:
        return await store.segment_counts()
    finally:
        await store.close()
