"""The asyncio Redis client the worker uses: redis-py, with commands packed by hiredis.

redis-py's sync client packs commands with hiredis's C encoder when hiredis is
installed (``redis.connection.HiredisRespSerializer``); its asyncio client
always uses a Python loop over the arguments. A batch commit sends about 11
arguments per user, and py-spy showed that loop (``pack_command`` and
``Encoder.encode``) at about 9% of a live-sized batch (600 records, ~1.6 per
user: docs/performance.md). This gives the asyncio connections the sync
client's packer.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.connection import HiredisRespSerializer

_PACKER = HiredisRespSerializer()


class _HiredisPacking:
    """Mixed into the pool's connection class (plain, TLS or Unix socket alike)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        return _PACKER.pack(*args)


def client_from_url(url: str, cluster: bool = False, **kwargs: Any) -> Any:
    """``redis.asyncio.Redis.from_url`` whose connections pack with hiredis, or
    with ``cluster`` a Redis Cluster client that discovers the cluster from the
    node ``url`` names (a cluster has no database numbers: the URL's is ignored)."""
    if cluster:
        return RedisCluster.from_url(_without_db(url), **kwargs)
    client = aioredis.Redis.from_url(url, **kwargs)
    pool = client.connection_pool
    base = pool.connection_class
    # Before the first connection is made: the pool builds each from this class.
    pool.connection_class = type(f"Hiredis{base.__name__}", (_HiredisPacking, base), {})
    return client


def sync_client_from_url(url: str, cluster: bool = False, **kwargs: Any) -> Any:
    """The blocking client (the retrain job's lock, the bench's clean-up)."""
    if cluster:
        return redis.RedisCluster.from_url(_without_db(url), **kwargs)
    return redis.Redis.from_url(url, **kwargs)


def is_cluster(client: Any) -> bool:
    return isinstance(client, (RedisCluster, redis.RedisCluster))


def _without_db(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="", query=""))
