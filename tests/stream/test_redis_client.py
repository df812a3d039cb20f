"""Commands packed by hiredis are byte-for-byte what redis-py's own packer sends."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from stream.redis_client import _HiredisPacking, client_from_url

args = st.lists(
    st.one_of(
        st.binary(max_size=64),
        st.text(max_size=32),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.binary(max_size=16).map(bytearray),
        st.binary(max_size=16).map(memoryview),
    ),
    max_size=40,
)


class _Packing(_HiredisPacking, Connection):
    pass


@given(st.sampled_from(["HSET", b"EVALSHA", "CONFIG GET", b"SCRIPT LOAD"]), args)
def test_hiredis_packing_matches_redis_py(name: str | bytes, rest: list[object]) -> None:
    ours, theirs = _Packing(), Connection()
    assert b"".join(ours.pack_command(name, *rest)) == b"".join(theirs.pack_command(name, *rest))


def test_an_unencodable_argument_is_a_data_error_as_in_redis_py() -> None:
    with pytest.raises(DataError):
        _Packing().pack_command("SET", "k", None)


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
