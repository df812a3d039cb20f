"""The servers a run uses: embedded ones started and stopped, and the clean-up
of its topics and keys."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from stream.devtools.apache_kafka import ApacheKafka
from stream.devtools.bench.config import BenchConfig
from stream.devtools.embedded import (
    EmbeddedKafka,
    EmbeddedRedis,
    EmbeddedRedisCluster,
)
from stream.settings import Settings

log = logging.getLogger("segmenter.bench")


@contextlib.contextmanager
def run_servers(
    cfg: BenchConfig, console: Console, pids: dict[str, int]
) -> Iterator[tuple[str, str, bool]]:
    """(kafka_url, redis_url, embedded_redis) for the run; embedded ones are stopped after.

    Fills ``pids`` with the embedded servers' process ids (for CPU accounting).
    """
    started: list[ApacheKafka | EmbeddedKafka | EmbeddedRedis | EmbeddedRedisCluster] = []
    try:
        kafka_url = cfg.kafka_url
        if kafka_url is None and cfg.broker == "kafka":
            kafka = ApacheKafka().start()
            started.append(kafka)
            kafka_url = kafka.url
            if kafka.proc is not None:
                pids["broker (Apache Kafka)"] = kafka.proc.pid
            log.info("Apache Kafka on %s (pid %s)", kafka.bootstrap, kafka.proc and kafka.proc.pid)
        elif kafka_url is None:
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


def delete_topics(settings: Settings, topics: list[str]) -> None:
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


async def delete_prefix(settings: Settings) -> int:
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
    stream/worker/state/store.py uses (states in hashes, indexes in sorted sets, ...).
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
    """Mean bytes of the users' deduplication memory (stream.core.dedup) inside their
    records, over the users of ``groups`` hash-tag groups: a part of the records' size."""
    from stream.worker.state.store import StateStore, decode_record

    store = StateStore.from_settings(settings)
    sizes: list[int] = []
    try:
        for group in range(groups):
            records = await store.bucket_records(group)
            sizes += [decode_record(v, None).seen.encoded_size() for v in records]
    finally:
        await store.close()
    return sum(sizes) / max(1, len(sizes))


class GroupWatch:
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
