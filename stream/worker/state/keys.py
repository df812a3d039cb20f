"""Where the store keeps things in Redis: the key layout, one place.

The layout works unchanged on a single Redis and on Redis Cluster. Every key
of one user lives in one of :data:`GROUPS` hash-tag groups (``{<g>}``, *g* =
CRC32(user id) mod ``GROUPS``): their record bucket, their entries in the
segment and audience indexes, the index counts they move, their schedule
entry and the erasure list they are looked up in. So one Lua script can write
a group's users atomically on whichever cluster node holds that slot, and a
batch touches at most ``GROUPS`` slots. The partitions' bookkeeping (offsets,
per-partition and overall stream time) shares the ``{clock}`` tag.

Key layout (``P`` = prefix, ``T`` = ``P:{g}`` for the user's group *g*):

* ``T:b:<n>``           hash user id -> binary record (stream.worker.state.record_codec);
                        bucket *n* = CRC32(user id) mod ``buckets`` (n mod GROUPS = g)
* ``T:m:<name>:<k>``    sorted set (scores 0) of an index's members: a segment, or
                        ``a:<audience>``; shard *k* = CRC32(user id) mod
                        ``MEMBER_SHARDS`` (k mod GROUPS = g); paged in (shard, id) order
* ``T:counts``          hash index name -> members of that group in it
* ``T:due:<p>:<d>``     sorted set user -> event time of their next time-driven step
                        (re-score or retention erasure), for partition *p* and day *d*
* ``T:dueslots:<p>``    sorted set of the days *d* with a non-empty ``T:due:<p>:<d>``
* ``E:{g}:erased``      sorted set: keyed digest of an erased user id -> when it was
                        erased (stream.erasure). ``E`` is the erasure list's own prefix,
                        which a rebuild under a new ``P`` keeps; the ``{g}`` tag keeps
                        it in the user's hash slot
* ``E:key_check``       a check value of the key the list is digested with
* ``P:{clock}:offsets``      hash ``topic:partition`` -> last applied offset
* ``P:{clock}:ptime``        hash "topic:partition" -> largest event time applied from it
* ``P:{clock}:stream_time``  the largest event time applied (epoch ms)
* ``P:meta``            hash: ``classes`` (JSON), the order of the stored probabilities;
                        ``layout``, this layout's number
* ``P:forgotten_total``, ``P:drift``  counters and reports, one key each
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import NamedTuple

from stream.core.events import DAY_MS
from stream.erasure import check_value_key, erased_key

#: Bumped when keys move: a store written in another layout is refused at start.
LAYOUT_VERSION = 2
#: Hash-tag groups. A batch's commit is one script per group on a cluster (one
#: script in all on a single Redis), so this bounds both the scripts per batch
#: and how many cluster nodes the users can spread over.
GROUPS = 64
MEMBER_SHARDS = 256
DEFAULT_BUCKETS = 1024
#: Audience memberships share the index (counts, members) under this prefix,
#: which no segment name has: ``a:<audience>``.
AUDIENCE_PREFIX = "a:"


def user_hash(user_id: str) -> int:
    return zlib.crc32(user_id.encode())


def member_shard(user_id: str) -> int:
    return user_hash(user_id) % MEMBER_SHARDS


def group_of(user_id: str) -> int:
    return user_hash(user_id) % GROUPS


class UserKeys(NamedTuple):
    """The keys one user's writes touch, all in the user's hash-tag group."""

    group: int
    bucket: str
    counts: str
    erased: str
    shard: int


class KeyLayout:
    """Key names under one prefix (see the module docstring)."""

    def __init__(
        self, prefix: str, buckets: int = DEFAULT_BUCKETS, erasure_prefix: str | None = None
    ) -> None:
        if buckets % GROUPS or MEMBER_SHARDS % GROUPS:
            raise ValueError(f"buckets and member shards must be multiples of {GROUPS}")
        self.prefix = prefix
        self.buckets = buckets
        self.meta = f"{prefix}:meta"
        self.forgotten = f"{prefix}:forgotten_total"
        self.drift = f"{prefix}:drift"
        clock = f"{prefix}:{{clock}}"
        self.offsets = f"{clock}:offsets"
        self.topic_ids = f"{clock}:topic_ids"  # stream.worker.state.topic_marks
        self.ptime = f"{clock}:ptime"
        self.stream_time = f"{clock}:stream_time"
        # Built once: a batch names several keys per user, and formatting them
        # per user was measurable (timeit of the commit's encoding).
        self.bucket_keys = [f"{self.tag(n % GROUPS)}:b:{n}" for n in range(buckets)]
        self._counts = [f"{self.tag(g)}:counts" for g in range(GROUPS)]
        erasure = erasure_prefix or prefix
        self.erasure_check = check_value_key(erasure)
        self._erased = [erased_key(erasure, g) for g in range(GROUPS)]
        self._members: dict[str, list[str]] = {}
        self._due = [f"{self.tag(g)}:due:" for g in range(GROUPS)]
        self._dueslots = [f"{self.tag(g)}:dueslots:" for g in range(GROUPS)]

    def tag(self, group: int) -> str:
        return f"{self.prefix}:{{{group}}}"

    def user(self, user_id: str) -> UserKeys:
        h = user_hash(user_id)
        g = h % GROUPS
        return UserKeys(
            g,
            self.bucket_keys[h % self.buckets],
            self._counts[g],
            self._erased[g],
            h % MEMBER_SHARDS,
        )

    def bucket(self, user_id: str) -> str:
        return self.bucket_keys[user_hash(user_id) % self.buckets]

    def buckets_of(self, group: int) -> list[str]:
        return self.bucket_keys[group::GROUPS]

    def member(self, name: str, shard: int) -> str:
        return self.members(name)[shard]

    def members(self, name: str) -> list[str]:
        """An index's member keys, by shard."""
        keys = self._members.get(name)
        if keys is None:
            keys = [f"{self.tag(k % GROUPS)}:m:{name}:{k}" for k in range(MEMBER_SHARDS)]
            self._members[name] = keys
        return keys

    def counts(self, group: int) -> str:
        return self._counts[group]

    def erased(self, group: int) -> str:
        return self._erased[group]

    def due(self, group: int, partition: int, day: int) -> str:
        return f"{self._due[group]}{partition}:{day}"

    def dueslots(self, group: int, partition: int) -> str:
        return f"{self._dueslots[group]}{partition}"

    def schedule(self, user_id: str, partition: int, due: int) -> tuple[str, str, int]:
        """The schedule set, the day index and the day of ``user_id`` due at ``due``."""
        return self.group_schedule(group_of(user_id), partition, due)

    def group_schedule(self, group: int, partition: int, due: int) -> tuple[str, str, int]:
        day = due // DAY_MS
        return f"{self._due[group]}{partition}:{day}", f"{self._dueslots[group]}{partition}", day

    def all_counts(self) -> list[str]:
        return [self.counts(g) for g in range(GROUPS)]

    def all_erased(self) -> list[str]:
        return [self.erased(g) for g in range(GROUPS)]

    def kind(self, key: str) -> str:
        """What a key under the prefix holds: records, members, schedule or other."""
        rest = key[len(self.prefix) :]
        if rest.startswith(":{") and not rest.startswith(":{clock}"):
            rest = rest[rest.index("}") + 1 :]
            for kind, marker in (("records", ":b:"), ("members", ":m:"), ("schedule", ":due")):
                if rest.startswith(marker):
                    return kind
        return "other"


__all__ = [
    "AUDIENCE_PREFIX",
    "DEFAULT_BUCKETS",
    "GROUPS",
    "LAYOUT_VERSION",
    "MEMBER_SHARDS",
    "KeyLayout",
    "UserKeys",
    "group_of",
    "member_shard",
]


def by_group(user_ids: Iterable[str]) -> dict[int, list[str]]:
    """User ids by their hash-tag group."""
    groups: dict[int, list[str]] = {}
    for uid in user_ids:
        groups.setdefault(group_of(uid), []).append(uid)
    return groups


def tp_times(pairs: Iterable[tuple[bytes | str, bytes | str]]) -> dict[str, int]:
    """The clock hash, per "topic:partition" (stream.core.clock). Fields without a
    topic are per partition number, from releases before the clock knew topics:
    left out, so each topic-partition's time starts again with its next record."""
    out = {}
    for k, v in pairs:
        tp = k.decode() if isinstance(k, bytes) else k
        if ":" in tp:
            out[tp] = int(v)
    return out
