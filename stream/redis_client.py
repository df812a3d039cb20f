"""The Redis clients the worker and the retrain job use: redis-py, single node or cluster.

Commands are packed by hiredis's C encoder. A batch commit sends about 11
arguments per user, and py-spy showed redis-py's pure-Python packer
(``pack_command`` and ``Encoder.encode``) at about 9% of a live-sized batch
(600 records, ~1.6 per user: docs/performance.md). redis-py's asyncio
connections use hiredis's packer themselves from 8.2 on (before, only its sync
client did), so pyproject requires ``redis[hiredis]>=8.2`` and
:func:`packs_with_hiredis` lets the worker and a test confirm it, rather than
this module swapping the pool's connection class as it once had to.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection as AsyncConnection
from redis.connection import HiredisRespSerializer


def client_from_url(url: str, cluster: bool = False, **kwargs: Any) -> Any:
    """``redis.asyncio.Redis.from_url``, or with ``cluster`` a Redis Cluster client
    that discovers the cluster from the node ``url`` names (a cluster has no
    database numbers: the URL's is ignored)."""
    if cluster:
        return RedisCluster.from_url(_without_db(url), **kwargs)
    return aioredis.Redis.from_url(url, **kwargs)


def sync_client_from_url(url: str, cluster: bool = False, **kwargs: Any) -> Any:
    """The blocking client (the retrain job's lock, the bench's clean-up)."""
    if cluster:
        return redis.RedisCluster.from_url(_without_db(url), **kwargs)
    return redis.Redis.from_url(url, **kwargs)


def packs_with_hiredis(client: Any) -> bool:
    """Whether ``client``'s asyncio connections pack with hiredis (no connection is made)."""
    if isinstance(client, RedisCluster):
        # Its node connections are redis.asyncio's plain Connection class.
        connection = AsyncConnection()
    else:
        pool = client.connection_pool
        connection = pool.connection_class(**pool.connection_kwargs)
    return isinstance(getattr(connection, "_command_packer", None), HiredisRespSerializer)


def is_cluster(client: Any) -> bool:
    return isinstance(client, (RedisCluster, redis.RedisCluster))


def _without_db(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="", query=""))
