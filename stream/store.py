"""Per-user state in Redis: one pipelined read and one atomic write per batch.

Delivery guarantee: **effectively once** for state. Each user record carries
the last applied offset of every partition it has been fed from and a bounded
ring of recent event-id digests; the batch commit is a single Lua script, so
the state, those marks, the per-partition offsets, the segment population
counts and stream time move together or not at all. A redelivered event is
recognised and skipped.

Concurrent writers (two workers owning the same user for a moment during a
rebalance) are caught by a per-record revision: the script refuses the whole
batch if any record changed since it was read, and the caller re-runs it.

Key layout (``P`` = prefix; ``{…}`` is a Redis Cluster hash tag):

* ``P:u:{<user_id>}``  hash ``d`` (record JSON), ``r`` (revision)
* ``P:counts``         hash segment -> users currently in it
* ``P:counts:<seg>``   sorted set (all scores 0) of the segment's members, paged by id
* ``P:reeval:<n>``     sorted set user -> event time of their next time-driven step
                       (re-score or retention erasure), one per partition number *n*,
                       so each worker sweeps only the users whose partition it owns
* ``P:ptime``          hash partition number -> largest event time applied from it
* ``P:offsets``        hash ``topic:partition`` -> last applied offset
* ``P:stream_time``    the largest event time applied (epoch ms)
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from stream.fold import HALF_LIVES, UserState
from stream.settings import Settings

CODEC_VERSION = 1
_DECAYED = tuple(HALF_LIVES)


@dataclass(slots=True)
class UserRecord:
    state: UserState = field(default_factory=UserState)
    segment: str | None = None
    probabilities: dict[str, float] | None = None
    #: Per-user change counter: +1 on every published segment change.
    version: int = 0
    model_version: str | None = None
    #: ``topic:partition`` -> last applied offset, for this user's events.
    offsets: dict[str, int] = field(default_factory=dict)
    #: Digests of the most recent event_ids, newest last (bounded).
    recent: list[str] = field(default_factory=list)
    #: Event time as of which the user was last scored: scoring never goes back
    #: in time, even for a late event (their state is then valued at this time).
    scored_at: int = 0
    #: Event time of the next time-driven step (re-score or erasure); 0 = none.
    due: int = 0
    #: Partition number the user's events arrive on (-1 = not known yet).
    partition: int = -1
    #: Storage revision for optimistic concurrency; not part of the data.
    rev: int = 0

    @property
    def exists(self) -> bool:
        return self.rev > 0


def event_digest(event_id: str) -> str:
    """Eight characters of BLAKE2b: enough to tell recent events apart, small in Redis."""
    return base64.b64encode(hashlib.blake2b(event_id.encode(), digest_size=6).digest()).decode()


def encode_state(s: UserState) -> list[Any]:
    # Positional, not keyed: roughly halves the bytes per user in Redis.
    return [
        s.first_seen,
        s.last_seen,
        s.last_order_at,
        s.order_count,
        s.cancel_count,
        s.refund_count,
        s.total_spend,
        s.returned_spend,
        s.product_views,
        s.cart_adds,
        s.events,
        s.session_count,
        s.recent_sessions,
        format(s.categories, "x"),
        [s.decayed[k] for k in _DECAYED],
    ]


def decode_state(row: list[Any]) -> UserState:
    s = UserState()
    (
        s.first_seen,
        s.last_seen,
        s.last_order_at,
        s.order_count,
        s.cancel_count,
        s.refund_count,
        s.total_spend,
        s.returned_spend,
        s.product_views,
        s.cart_adds,
        s.events,
        s.session_count,
        s.recent_sessions,
        categories,
        decayed,
    ) = row
    s.categories = int(categories, 16)
    s.decayed = {k: float(v) for k, v in zip(_DECAYED, decayed, strict=True)}
    s.total_spend = float(s.total_spend)
    s.returned_spend = float(s.returned_spend)
    return s


def encode_record(rec: UserRecord) -> bytes:
    return orjson.dumps(
        {
            "c": CODEC_VERSION,
            "s": encode_state(rec.state),
            "g": rec.segment,
            "p": rec.probabilities,
            "v": rec.version,
            "m": rec.model_version,
            "o": rec.offsets,
            "e": rec.recent,
            "t": rec.scored_at,
            "n": rec.due,
            "q": rec.partition,
        }
    )


def decode_record(data: bytes, rev: int) -> UserRecord:
    d = orjson.loads(data)
    if d.get("c") != CODEC_VERSION:
        raise ValueError(f"user record codec {d.get('c')!r}, this code reads {CODEC_VERSION}")
    return UserRecord(
        state=decode_state(d["s"]),
        segment=d["g"],
        probabilities=d["p"],
        version=d["v"],
        model_version=d["m"],
        offsets=d["o"],
        recent=d["e"],
        scored_at=d.get("t", 0),
        due=d.get("n", 0),
        partition=d.get("q", -1),
        rev=rev,
    )


# All-or-nothing batch commit. Revisions are checked for every user before
# anything is written, so a refused batch leaves Redis exactly as it was.
# KEYS: counts, offsets, stream_time, ptime, reeval (base name), user keys...
# ARGV: stream_time, n_offsets, n_ptimes, ttl_ms, (field, offset) * n_offsets,
#       (partition, time) * n_ptimes, then per user (8 each):
#       expected rev, record ('' = erase the user), old segment, new segment,
#       user id, next step time (0 = none), partition, previous partition
# (Per-segment member sets and per-partition schedules are named from KEYS
# inside the script: one reason this needs a single-shard Redis, see
# deploy/README.md.)
_COMMIT_LUA = """
local n_off = tonumber(ARGV[2])
local n_pt = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local base = 4 + 2 * n_off + 2 * n_pt
for i = 6, #KEYS do
  local j = base + (i - 6) * 8
  local rev = redis.call('HGET', KEYS[i], 'r') or '0'
  if rev ~= ARGV[j + 1] then
    return {'conflict', KEYS[i]}
  end
end
for i = 6, #KEYS do
  local j = base + (i - 6) * 8
  local uid, due, part, was = ARGV[j + 5], tonumber(ARGV[j + 6]), ARGV[j + 7], ARGV[j + 8]
  if ARGV[j + 2] == '' then
    redis.call('DEL', KEYS[i])
  else
    redis.call('HSET', KEYS[i], 'd', ARGV[j + 2], 'r', tonumber(ARGV[j + 1]) + 1)
    if ttl > 0 then redis.call('PEXPIRE', KEYS[i], ttl) end
  end
  local old, new = ARGV[j + 3], ARGV[j + 4]
  if old ~= new then
    if old ~= '' then
      redis.call('HINCRBY', KEYS[1], old, -1)
      redis.call('ZREM', KEYS[1] .. ':' .. old, uid)
    end
    if new ~= '' then
      redis.call('HINCRBY', KEYS[1], new, 1)
      redis.call('ZADD', KEYS[1] .. ':' .. new, 0, uid)
    end
  end
  if was ~= part and was ~= '-1' then redis.call('ZREM', KEYS[5] .. ':' .. was, uid) end
  if due > 0 then
    redis.call('ZADD', KEYS[5] .. ':' .. part, due, uid)
  else
    redis.call('ZREM', KEYS[5] .. ':' .. part, uid)
  end
end
for k = 0, n_off - 1 do
  local f, off = ARGV[5 + 2 * k], tonumber(ARGV[6 + 2 * k])
  local cur = redis.call('HGET', KEYS[2], f)
  if (not cur) or tonumber(cur) < off then redis.call('HSET', KEYS[2], f, off) end
end
for k = 0, n_pt - 1 do
  local f, t = ARGV[5 + 2 * n_off + 2 * k], tonumber(ARGV[6 + 2 * n_off + 2 * k])
  local cur = redis.call('HGET', KEYS[4], f)
  if (not cur) or tonumber(cur) < t then redis.call('HSET', KEYS[4], f, t) end
end
local st = tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[3]) or '0')
if st > cur then redis.call('SET', KEYS[3], ARGV[1]) end
return {'ok', ''}
"""

# Delete one user: state, their place in the re-evaluation schedule and in the
# segment population, together.
# KEYS: user key, counts, reeval (base name). ARGV: uid.
_FORGET_LUA = """
local d = redis.call('HGET', KEYS[1], 'd')
if not d then return 0 end
local rec = cjson.decode(d)
local g = rec['g']
if g and g ~= cjson.null then
  redis.call('HINCRBY', KEYS[2], g, -1)
  redis.call('ZREM', KEYS[2] .. ':' .. g, ARGV[1])
end
local q = rec['q']
if q and q ~= cjson.null then redis.call('ZREM', KEYS[3] .. ':' .. q, ARGV[1]) end
redis.call('DEL', KEYS[1])
return 1
"""

# A schedule entry whose user is gone (erased, or its key expired by the
# wall-clock backstop TTL): drop it, and the user's membership of any segment
# set, fixing the population count if the member was still counted.
# KEYS: user key, counts, schedule. ARGV: uid.
_REAP_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('ZREM', KEYS[3], ARGV[1])
for _, seg in ipairs(redis.call('HKEYS', KEYS[2])) do
  if redis.call('ZREM', KEYS[2] .. ':' .. seg, ARGV[1]) == 1 then
    redis.call('HINCRBY', KEYS[2], seg, -1)
  end
end
return 1
"""


_RELEASE_LUA = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)


class ConflictError(RuntimeError):
    """Another writer changed a user since this batch read it; re-run the batch."""


@dataclass(frozen=True, slots=True)
class UserWrite:
    user_id: str
    record: UserRecord
    old_segment: str | None
    #: The partition number the stored record named (its schedule entry lives there).
    old_partition: int = -1
    #: Erase the user (retention) instead of writing ``record``.
    erase: bool = False


class StateStore:
    """Redis adapter. Every method is one round trip; errors surface as ``RedisError``."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        # Any: redis-py's stubs type replies as bytes | str, we always get bytes.
        self._r: Any = client
        self.prefix = prefix
        self._commit = client.register_script(_COMMIT_LUA)
        self._forget = client.register_script(_FORGET_LUA)
        self._reap = client.register_script(_REAP_LUA)
        self.k_counts = f"{prefix}:counts"
        self.k_ptime = f"{prefix}:ptime"
        self.k_reeval = f"{prefix}:reeval"
        self.k_forgotten = f"{prefix}:forgotten_total"
        self.k_offsets = f"{prefix}:offsets"
        self.k_stream_time = f"{prefix}:stream_time"

    @classmethod
    def from_url(cls, url: str, prefix: str, **redis_kwargs: Any) -> StateStore:
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=5.0,
            socket_connect_timeout=3.0,
            health_check_interval=15,
            **redis_kwargs,
        )
        return cls(client, prefix)

    @classmethod
    def from_settings(cls, settings: Settings) -> StateStore:
        return cls.from_url(
            settings.redis_url, settings.redis_prefix, **settings.redis_client_kwargs()
        )

    def user_key(self, user_id: str) -> str:
        return f"{self.prefix}:u:{{{user_id}}}"

    async def ping(self) -> bool:
        return bool(await self._r.ping())

    async def close(self) -> None:
        await self._r.aclose()

    async def load(
        self, user_ids: Sequence[str]
    ) -> tuple[dict[str, UserRecord], int, dict[int, int]]:
        """Records for ``user_ids`` (new ones for unknown users), stored stream time,
        and each partition number's stream time, in one round trip."""
        async with self._r.pipeline(transaction=False) as pipe:
            for uid in user_ids:
                pipe.hmget(self.user_key(uid), "d", "r")
            pipe.get(self.k_stream_time)
            pipe.hgetall(self.k_ptime)
            replies = await pipe.execute()
        out: dict[str, UserRecord] = {}
        for uid, (data, rev) in zip(user_ids, replies[:-2], strict=True):
            out[uid] = UserRecord() if data is None else decode_record(data, int(rev))
        stream_time = int(replies[-2] or 0)
        ptimes = {int(k): int(v) for k, v in replies[-1].items()}
        return out, stream_time, ptimes

    async def get(self, user_id: str) -> UserRecord | None:
        data, rev = await self._r.hmget(self.user_key(user_id), "d", "r")
        return None if data is None else decode_record(data, int(rev))

    async def commit(
        self,
        writes: Iterable[UserWrite],
        partition_offsets: dict[str, int],
        stream_time: int,
        ttl_ms: int = 0,
        partition_times: dict[int, int] | None = None,
    ) -> None:
        """Write a batch atomically; raise :class:`ConflictError` if anyone else wrote first.

        A write whose record is ``None`` erases that user. ``ttl_ms`` (0 = none)
        is a wall-clock backstop on each written user key; the authoritative,
        event-time retention is the erasure step of the re-evaluation schedule.
        """
        writes = list(writes)
        partition_times = partition_times or {}
        keys = [self.k_counts, self.k_offsets, self.k_stream_time, self.k_ptime, self.k_reeval]
        args: list[Any] = [stream_time, len(partition_offsets), len(partition_times), ttl_ms]
        for tp, off in partition_offsets.items():
            args += [tp, off]
        for part, t in partition_times.items():
            args += [part, t]
        for w in writes:
            rec = w.record
            keys.append(self.user_key(w.user_id))
            args += [
                rec.rev,
                b"" if w.erase else encode_record(rec),
                w.old_segment or "",
                "" if w.erase else rec.segment or "",
                w.user_id,
                0 if w.erase else rec.due,
                rec.partition,
                w.old_partition,
            ]
        status, detail = await self._commit(keys=keys, args=args)
        if status != b"ok":
            raise ConflictError(f"concurrent write to {detail.decode()}")

    async def forget(self, user_id: str) -> bool:
        """Erase one user (right to erasure). True if there was state to erase."""
        erased = bool(
            await self._forget(
                keys=[self.user_key(user_id), self.k_counts, self.k_reeval], args=[user_id]
            )
        )
        if erased:
            await self._r.incr(self.k_forgotten)
        return erased

    async def reap(self, user_id: str, partition: int) -> bool:
        """Drop a schedule entry whose user no longer exists. True if one was dropped."""
        return bool(
            await self._reap(
                keys=[self.user_key(user_id), self.k_counts, f"{self.k_reeval}:{partition}"],
                args=[user_id],
            )
        )

    async def unschedule(self, user_id: str, partition: int) -> None:
        """Drop a stale schedule entry (the user has moved to another partition)."""
        await self._r.zrem(f"{self.k_reeval}:{partition}", user_id)

    async def due_for_reevaluation(
        self, partition: int, until_ms: int, limit: int
    ) -> list[tuple[str, int]]:
        """Users of ``partition`` whose next step is at or before ``until_ms``, earliest first."""
        raw = await self._r.zrangebyscore(
            f"{self.k_reeval}:{partition}", "-inf", until_ms, start=0, num=limit, withscores=True
        )
        return [(u.decode(), int(score)) for u, score in raw]

    async def partition_times(self) -> dict[int, int]:
        """Stream time per partition number: the largest event time applied from it."""
        raw = await self._r.hgetall(self.k_ptime)
        return {int(k): int(v) for k, v in raw.items()}

    async def try_lock(self, name: str, ttl_ms: int) -> str | None:
        """A short lease (SET NX PX); the token releases it. None if someone holds it."""
        token = uuid.uuid4().hex
        ok = await self._r.set(f"{self.prefix}:lock:{name}", token, nx=True, px=ttl_ms)
        return token if ok else None

    async def unlock(self, name: str, token: str) -> None:
        await self._r.eval(_RELEASE_LUA, 1, f"{self.prefix}:lock:{name}", token)

    async def forgotten_total(self) -> int:
        return int(await self._r.get(self.k_forgotten) or 0)

    async def members(self, segment: str, after: str = "", limit: int = 100) -> list[str]:
        """A page of a segment's members in id order, starting after ``after``."""
        start = f"({after}" if after else "-"
        raw = await self._r.zrange(
            f"{self.k_counts}:{segment}", start, "+", bylex=True, offset=0, num=limit
        )
        return [u.decode() for u in raw]

    async def stream_time(self) -> int:
        return int(await self._r.get(self.k_stream_time) or 0)

    async def segment_counts(self) -> dict[str, int]:
        raw = await self._r.hgetall(self.k_counts)
        return {k.decode(): int(v) for k, v in raw.items()}

    async def partition_offsets(self) -> dict[str, int]:
        raw = await self._r.hgetall(self.k_offsets)
        return {k.decode(): int(v) for k, v in raw.items()}

    async def scan_users(self, count: int = 1000) -> list[str]:
        """Every user id under this prefix (for tests, export and audits; not the hot path)."""
        users = []
        pattern = f"{self.prefix}:u:*"
        async for key in self._r.scan_iter(match=pattern, count=count):
            text = key.decode()
            users.append(text[len(self.prefix) + 4 : -1])
        return users

    async def delete_prefix(self) -> int:
        """Delete every key under this prefix (tests and `segmenter demo` clean-up only)."""
        n = 0
        async for key in self._r.scan_iter(match=f"{self.prefix}:*", count=1000):
            n += await self._r.delete(key)
        return n


__all__ = [
    "ConflictError",
    "RedisError",
    "StateStore",
    "UserRecord",
    "UserWrite",
    "decode_record",
    "encode_record",
    "event_digest",
]
