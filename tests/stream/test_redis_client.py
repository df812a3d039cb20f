"""The Redis clients: commands packed by hiredis, binary values round-trip."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio.connection import Connection
from redis.connection import HiredisRespSerializer

from stream.redis_client import client_from_url, packs_with_hiredis


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:1/3", "rediss://127.0.0.1:1/3", "unix:///tmp/none.sock?db=3"]
)
def test_every_kind_of_connection_packs_with_hiredis(url: str) -> None:
    # What pyproject's redis[hiredis]>=8.2 floor buys: py-spy measured
    # redis-py's Python packer at ~9% of a batch (docs/performance.md).
    assert packs_with_hiredis(client_from_url(url))
    assert packs_with_hiredis(client_from_url("redis://127.0.0.1:1", cluster=True))


def test_the_check_sees_a_connection_that_packs_in_python() -> None:
    class PythonPacking(Connection):
        def __init__(self, **kwargs: object) -> None:
            super().__init__(**kwargs)  # type: ignore[arg-type]
            self._command_packer = None

    client = client_from_url("redis://127.0.0.1:1/0", connection_class=PythonPacking)
    assert not packs_with_hiredis(client)
    assert isinstance(Connection()._command_packer, HiredisRespSerializer)


@pytest.mark.integration
def test_the_client_round_trips_binary_values(redis_url: str, prefix: str) -> None:
    async def scenario() -> None:
        client = client_from_url(redis_url)
        try:
            value = bytes(range(256)) * 3
            await client.hset(f"{prefix}:h", mapping={"a": value, "b": 7})
            assert await client.hmget(f"{prefix}:h", ["a", "b", "missing"]) == [value, b"7", None]
        finally:
            await client.delete(f"{prefix}:h")
            await client.aclose()

    asyncio.run(scenario())
