"""The key layout: every key of one user, and the clock's keys, share a hash slot.

Redis Cluster runs a script only if its keys share one slot; these check the
layout (stream.worker.state.keys) and what the store hands each script call.
"""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from stream.core.fold import UserState
from stream.worker.state.keys import GROUPS, MEMBER_SHARDS, KeyLayout, group_of, member_shard
from stream.worker.state.record_codec import UserRecord
from stream.worker.state.scripts import USER_ARGS, USER_KEYS
from stream.worker.state.store import StateStore, UserWrite, index_moves

user_ids = st.text(min_size=1, max_size=40)
DAY = 86_400_000


def slot(key: str) -> int:
    return key_slot(key.encode())


@given(user_ids, st.integers(0, 63), st.integers(1, 10**13), st.sampled_from(["regular", "a:x"]))
def test_every_key_of_a_user_shares_one_slot(uid: str, partition: int, due: int, name: str) -> None:
    keys = KeyLayout("seg")
    k = keys.user(uid)
    schedule, day_index, _ = keys.schedule(uid, partition, due)
    member = keys.member(name, member_shard(uid))
    slots = {slot(x) for x in (k.bucket, k.counts, k.erased, schedule, day_index, member)}
    assert slots == {slot(keys.tag(group_of(uid)))}
    assert k.shard % GROUPS == k.group == group_of(uid)


def test_the_clock_shares_a_slot_and_the_groups_spread() -> None:
    keys = KeyLayout("seg")
    assert len({slot(x) for x in (keys.offsets, keys.ptime, keys.stream_time)}) == 1
    # Groups land on distinct slots, so a cluster spreads them over its masters.
    assert len({slot(keys.tag(g)) for g in range(GROUPS)}) == GROUPS
    assert sorted({int(x.rsplit(":", 1)[1]) for x in keys.buckets_of(5)}) == list(
        range(5, keys.buckets, GROUPS)
    )
    assert MEMBER_SHARDS % GROUPS == 0


@given(
    st.one_of(st.none(), st.sampled_from(["a", "b"])),
    st.one_of(st.none(), st.sampled_from(["a", "b"])),
    st.lists(st.sampled_from(["x", "y", "z"]), unique=True),
    st.lists(st.sampled_from(["x", "y", "z"]), unique=True),
)
def test_index_moves_take_the_user_from_where_they_were_to_where_they_are(
    old_seg: str | None, new_seg: str | None, old_aud: list[str], new_aud: list[str]
) -> None:
    members = {old_seg} - {None} | {f"a:{a}" for a in old_aud}
    for sign, name in index_moves(old_seg, new_seg, sorted(old_aud), sorted(new_aud)):
        assert (name in members) == (sign == "-")  # never a move that changes nothing
        members = members - {name} if sign == "-" else members | {name}
    assert members == {new_seg} - {None} | {f"a:{a}" for a in new_aud}


def _writes(n: int) -> list[UserWrite]:
    return [
        UserWrite(
            f"user-{i}",
            UserRecord(state=UserState(), segment="a", partition=i % 4, due=DAY * 3 + i),
            "b" if i % 3 else None,
            old_partition=(i + 1) % 4,
            old_due=DAY * 2,
            old_audiences=("x",) if i % 2 else (),
        )
        for i in range(n)
    ]


def test_on_a_cluster_each_script_call_stays_in_one_slot() -> None:
    async def prepare() -> None:
        client = RedisCluster(host="127.0.0.1", port=1)  # never connects: only encodes
        store = StateStore(client, "seg")
        store._names = {"a", "b", "a:x"}
        prepared = store.prepare_commit(_writes(500), {"orders:0": 7}, DAY * 3, ttl_ms=DAY)
        assert prepared.clock is not None
        assert len({slot(k) for k in prepared.clock.keys}) == 1
        assert len(prepared.groups) == GROUPS
        users = 0
        for call in prepared.groups:
            assert len({slot(k) for k in call.keys}) == 1
            n = call.args[1]
            users += n
            moves = sum(call.args[4 + USER_ARGS * (u + 1)] for u in range(n))
            assert len(call.keys) == n * USER_KEYS + moves
        assert users == 500

    asyncio.run(prepare())
