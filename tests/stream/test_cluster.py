"""Redis Cluster: three `redis-server --cluster-enabled yes` processes the
session starts (conftest.redis_cluster_url), a store spread over them, and two
workers counting exactly on it."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Callable

import pytest

from stream.devtools.embedded import cluster_binaries
from stream.settings import Settings
from stream.worker.state.keys import GROUPS
from stream.worker.state.record_codec import UserRecord
from stream.worker.state.store import StateStore, UserWrite
from tests.conftest import TopicReader, WorkerProcess
from tests.faults.scenario import PacedStream, finish_and_account, history, wait_progress

pytestmark = pytest.mark.integration
REDIS_CLI = cluster_binaries()[1]
DAY = 86_400_000


def _nodes(url: str) -> list[int]:
    out = subprocess.run(
        [REDIS_CLI, "-p", url.rsplit(":", 1)[1], "cluster", "nodes"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(int(line.split()[1].split("@")[0].rsplit(":", 1)[1]) for line in out.splitlines())


def test_the_store_spreads_over_the_masters_and_keeps_its_indexes_exact(
    redis_cluster_url: str,
) -> None:
    prefix = f"test-{uuid.uuid4().hex[:10]}"

    async def scenario() -> None:
        # The erasure list under its own prefix: its {group} tag keeps it in the
        # slot of the users' state, so one script still reads both.
        store = StateStore.from_url(
            redis_cluster_url,
            prefix,
            cluster=True,
            erasure_prefix=f"{prefix}-erasure",
            erasure_key=b"an-erasure-key-for-tests",
        )
        try:
            assert store.cluster
            await store.bind_classes(["a", "b"])
            writes = [
                UserWrite(
                    f"u{i}",
                    UserRecord(
                        segment="ab"[i % 2],
                        partition=i % 3,
                        due=5 * DAY + i,
                        audiences=("x",) if i % 5 == 0 else (),
                    ),
                    None,
                )
                for i in range(300)
            ]
            await store.commit(writes, {"orders:0": 5}, 1000, partition_times={"orders:0": 900})
            loaded, stream_time, ptimes = await store.load([f"u{i}" for i in range(310)])
            assert sum(r.exists for r in loaded.values()) == 300
            assert (stream_time, ptimes) == (1000, {"orders:0": 900})
            assert await store.segment_counts() == {"a": 150, "b": 150}
            assert await store.audience_counts() == {"x": 60}
            members = await store.members("a", limit=1000)
            assert sorted(members) == sorted(f"u{i}" for i in range(0, 300, 2))
            assert await store.partition_offsets() == {"orders:0": 5}
            due = await store.due_for_reevaluation(0, 6 * DAY, 1000)
            assert [u for u, _ in due] == [f"u{i}" for i in range(0, 300, 3)]
            # Every master holds some of the users: the groups spread.
            per_node: dict[str, int] = {}
            for node in store._r.get_primaries():
                n = await store._r.dbsize(target_nodes=node)
                per_node[node.name] = n
            assert len(per_node) == 3 and min(per_node.values()) > 0, per_node

            assert await store.forget("u1", now_ms=5, keep_ms=100)
            assert (await store.load(["u1"]))[0]["u1"].erased_at == 5
            await store._r.hdel(store.bucket_key("u3"), "u3")  # as an expired bucket would
            assert await store.reap("u3", 0, 5 * DAY + 3)
            await store.unschedule("u6", 0, 5 * DAY + 6)
            assert await store.segment_counts() == {"a": 150, "b": 148}
            assert len(await store.due_for_reevaluation(0, 6 * DAY, 1000)) == 98
            assert len(await store.scan_users()) == 298
        finally:
            await store.delete_prefix()
            async for key in store._r.scan_iter(match=f"{prefix}-erasure:*"):
                await store._r.delete(key)
            await store.close()

    asyncio.run(scenario())
    assert len(_nodes(redis_cluster_url)) == 3
    assert GROUPS >= 3


def test_two_workers_on_a_cluster_lose_and_double_nothing(
    redis_cluster_url: str,
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
    reader_factory: Callable[[str], TopicReader],
) -> None:
    settings = settings_factory(batch_max=100, redis_url=redis_cluster_url, redis_cluster=True)
    sent = history(settings, users=200)
    stream = PacedStream(settings, sent, head=len(sent) // 4, rate=800)
    a = worker_factory(settings)
    a.wait_ready()
    wait_progress(settings, len(sent) // 6, [a])
    b = worker_factory(settings)  # joins: the two share the partitions, and the cluster
    b.wait_ready()
    ends = stream.join()
    finish_and_account(settings, sent, ends, b, reader_factory, "two workers on a 3-master cluster")
    assert "partitions assigned" in b.log() and a.proc.poll() is None
    assert a.stop() == 0 and b.stop() == 0


def test_a_redis_that_may_evict_users_is_refused_unless_allowed(
    redis_cluster_url: str,
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
) -> None:
    port = str(_nodes(redis_cluster_url)[1])
    set_policy = [REDIS_CLI, "-p", port, "config", "set", "maxmemory-policy"]
    subprocess.run([*set_policy, "allkeys-lru"], check=True, capture_output=True)
    try:
        settings = settings_factory(redis_url=redis_cluster_url, redis_cluster=True)
        refused = worker_factory(settings)
        assert refused.proc.wait(60) == 1  # a settings error, as every other
        lines = refused.log().strip().splitlines()
        assert "maxmemory-policy is allkeys-lru" in lines[-1], lines
        assert "SEGMENTER_REDIS_ALLOW_EVICTION" in lines[-1]
        allowed = worker_factory(settings.model_copy(update={"redis_allow_eviction": True}))
        allowed.wait_ready()
        assert "users' state may be evicted" in allowed.log()
        time.sleep(0.5)
        assert allowed.stop() == 0
    finally:
        subprocess.run([*set_policy, "noeviction"], check=True, capture_output=True)
