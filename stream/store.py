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
* ``P:active``         sorted set user -> last event time (retention)
* ``P:reeval``         sorted set user -> event time of their next time-driven re-score
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
        rev=rev,
    )


# All-or-nothing batch commit. Revisions are checked for every user before
# anything is written, so a refused batch leaves Redis exactly as it was.
# KEYS: counts, offsets, stream_time, active, reeval, user keys...
# ARGV: stream_time, n_offsets, ttl_ms, (field, offset) * n, then per user:
#       expected rev, record, old segment, new segment, user id, last_seen,
#       next re-evaluation time (0 = none)
# (Per-segment member sets are named from KEYS[1] inside the script: one
# reason this needs a single-shard Redis, see deploy/README.md.)
_COMMIT_LUA = """
local n_off = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local base = 3 + 2 * n_off
for i = 6, #KEYS do
  local j = base + (i - 6) * 7
  local rev = redis.call('HGET', KEYS[i], 'r') or '0'
  if rev ~= ARGV[j + 1] then
    return {'conflict', KEYS[i]}
  end
end
for i = 6, #KEYS do
  local j = base + (i - 6) * 7
  redis.call('HSET', KEYS[i], 'd', ARGV[j + 2], 'r', tonumber(ARGV[j + 1]) + 1)
  if ttl > 0 then redis.call('PEXPIRE', KEYS[i], ttl) end
  local old, new = ARGV[j + 3], ARGV[j + 4]
  if old ~= new then
    if old ~= '' then
      redis.call('HINCRBY', KEYS[1], old, -1)
      redis.call('ZREM', KEYS[1] .. ':' .. old, ARGV[j + 5])
    end
    if new ~= '' then
      redis.call('HINCRBY', KEYS[1], new, 1)
      redis.call('ZADD', KEYS[1] .. ':' .. new, 0, ARGV[j + 5])
    end
  end
  redis.call('ZADD', KEYS[4], ARGV[j + 6], ARGV[j + 5])
  if tonumber(ARGV[j + 7]) > 0 then
    redis.call('ZADD', KEYS[5], ARGV[j + 7], ARGV[j + 5])
  else
    redis.call('ZREM', KEYS[5], ARGV[j + 5])
  end
end
for k = 0, n_off - 1 do
  local f, off = ARGV[4 + 2 * k], tonumber(ARGV[5 + 2 * k])
  local cur = redis.call('HGET', KEYS[2], f)
  if (not cur) or tonumber(cur) < off then redis.call('HSET', KEYS[2], f, off) end
end
local st = tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[3]) or '0')
if st > cur then redis.call('SET', KEYS[3], ARGV[1]) end
return {'ok', ''}
"""

# Delete one user: state, membership of the activity and re-evaluation indexes,
# and their place in the segment population, together.
# KEYS: user key, counts, active, reeval. ARGV: uid.
_FORGET_LUA = """
local d = redis.call('HGET', KEYS[1], 'd')
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
if not d then return 0 end
local g = cjson.decode(d)['g']
if g and g ~= cjson.null then
  redis.call('HINCRBY', KEYS[2], g, -1)
  redis.call('ZREM', KEYS[2] .. ':' .. g, ARGV[1])
end
redis.call('DEL', KEYS[1])
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


class StateStore:
    """Redis adapter. Every method is one round trip; errors surface as ``RedisError``."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        # Any: redis-py's stubs type replies as bytes | str, we always get bytes.
        self._r: Any = client
        self.prefix = prefix
        self._commit = client.register_script(_COMMIT_LUA)
        self._forget = client.register_script(_FORGET_LUA)
        self.k_counts = f"{prefix}:counts"
        self.k_active = f"{prefix}:active"
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

    async def load(self, user_ids: Sequence[str]) -> tuple[dict[str, UserRecord], int]:
        """Records for ``user_ids`` (new ones for unknown users) and stored stream time."""
        async with self._r.pipeline(transaction=False) as pipe:
            for uid in user_ids:
                pipe.hmget(self.user_key(uid), "d", "r")
            pipe.get(self.k_stream_time)
            replies = await pipe.execute()
        out: dict[str, UserRecord] = {}
        for uid, (data, rev) in zip(user_ids, replies[:-1], strict=True):
            out[uid] = UserRecord() if data is None else decode_record(data, int(rev))
        stream_time = int(replies[-1] or 0)
        return out, stream_time

    async def get(self, user_id: str) -> UserRecord | None:
        data, rev = await self._r.hmget(self.user_key(user_id), "d", "r")
        return None if data is None else decode_record(data, int(rev))

    async def commit(
        self,
        writes: Iterable[UserWrite],
        partition_offsets: dict[str, int],
        stream_time: int,
        ttl_ms: int = 0,
        dues: dict[str, int] | None = None,
    ) -> None:
        """Write a batch atomically; raise :class:`ConflictError` if anyone else wrote first.

        ``ttl_ms`` (0 = none) is a wall-clock backstop on each written user key;
        the authoritative, event-time retention is :meth:`expire_inactive`.
        """
        writes = list(writes)
        keys = [self.k_counts, self.k_offsets, self.k_stream_time, self.k_active, self.k_reeval]
        dues = dues or {}
        args: list[Any] = [stream_time, len(partition_offsets), ttl_ms]
        for tp, off in partition_offsets.items():
            args += [tp, off]
        for w in writes:
            keys.append(self.user_key(w.user_id))
            args += [
                w.record.rev,
                encode_record(w.record),
                w.old_segment or "",
                w.record.segment or "",
                w.user_id,
                w.record.state.last_seen,
                dues.get(w.user_id, 0),
            ]
        status, detail = await self._commit(keys=keys, args=args)
        if status != b"ok":
            raise ConflictError(f"concurrent write to {detail.decode()}")

    async def forget(self, user_id: str) -> bool:
        """Erase one user (right to erasure). True if there was state to erase."""
        erased = bool(
            await self._forget(
                keys=[self.user_key(user_id), self.k_counts, self.k_active, self.k_reeval],
                args=[user_id],
            )
        )
        if erased:
            await self._r.incr(self.k_forgotten)
        return erased

    async def inactive_users(self, before_ms: int, limit: int) -> list[str]:
        """Users whose last event is older than ``before_ms`` (event time), oldest first."""
        raw = await self._r.zrangebyscore(
            self.k_active, "-inf", f"({before_ms}", start=0, num=limit
        )
        return [u.decode() for u in raw]

    async def expire_inactive(self, before_ms: int, limit: int = 500) -> list[str]:
        """Retention in event time: erase up to ``limit`` users inactive since ``before_ms``."""
        users = await self.inactive_users(before_ms, limit)
        for user in users:
            await self._forget(
                keys=[self.user_key(user), self.k_counts, self.k_active, self.k_reeval], args=[user]
            )
        return users

    async def due_for_reevaluation(self, until_ms: int, limit: int) -> list[tuple[str, int]]:
        """Users whose next re-evaluation time is at or before ``until_ms``, earliest first."""
        raw = await self._r.zrangebyscore(
            self.k_reeval, "-inf", until_ms, start=0, num=limit, withscores=True
        )
        return [(u.decode(), int(score)) for u, score in raw]

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
