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

import redis.asyncio as aioredis
from redis.connection import HiredisRespSerializer

_PACKER = HiredisRespSerializer()


class _HiredisPacking:
    """Mixed into the pool's connection class (plain, TLS or Unix socket alike)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        return _PACKER.pack(*args)


def client_from_url(url: str, **kwargs: Any) -> aioredis.Redis:
    """``redis.asyncio.Redis.from_url`` whose connections pack with hiredis."""
    client = aioredis.Redis.from_url(url, **kwargs)
    pool = client.connection_pool
    base = pool.connection_class
    # Before the first connection is made: the pool builds each from this class.
    pool.connection_class = type(f"Hiredis{base.__name__}", (_HiredisPacking, base), {})
    return client
