"""Per-user state in Redis: one pipelined read and one atomic write per batch.

Delivery guarantee: **exactly once** for state. Each user record carries
the last applied offset of every partition it has been fed from (against a
redelivered record) and the user's deduplication memory (``stream.dedup``:
against an event re-sent as a new record); the batch commit is a single Lua script, so
the state, those marks, the per-partition offsets, the schedule, the segment
populations and stream time move together or not at all. A redelivered event
or re-sent event is recognised and skipped.

Concurrent writers (two workers owning the same user for a moment during a
rebalance) are caught by a per-record revision: the script refuses the whole
batch if any record changed since it was read, and the caller re-runs it.

Memory is budgeted per user (``segmenter bench`` reports it): records are a
fixed binary layout in shared hash buckets (no per-user key overhead), and the
two per-user index entries live in many small sorted sets, which Redis keeps
in its compact listpack encoding. Key layout (``P`` = prefix):

* ``P:b:{<n>}``            hash user id -> binary record (:func:`encode_record`);
                           bucket *n* = CRC32(user id) mod ``buckets``
* ``P:meta``               hash: ``classes`` (JSON), the order of the stored probabilities
* ``P:counts``             hash segment -> users currently in it
* ``P:m:<seg>:<k>``        sorted set (scores 0) of a segment's members, shard *k* =
                           CRC32(user id) mod 256; paged in (shard, id) order
* ``P:due:<n>:<d>:<k>``    sorted set user -> event time of their next time-driven step
                           (re-score or retention erasure), for partition number *n*, day
                           *d* of that time and sub-shard *k* (member shard mod 8): each
                           worker sweeps only the partitions it owns, oldest day first
* ``P:dueslots:<n>``       sorted set ``<d>:<k>`` (score *d*) of the non-empty schedule sets
* ``P:ptime``              hash partition number -> largest event time applied from it
* ``P:offsets``            hash ``topic:partition`` -> last applied offset
* ``P:stream_time``        the largest event time applied (epoch ms)
* ``P:drift``              hash worker -> its latest input-drift report (JSON; for
                           ``segmenter models show``), expiring when no worker writes
* ``P:erased``             sorted set: digest of an erased user id -> when it was erased
                           (epoch ms). The worker drops that user's events from before
                           then, so a replay or a rewound group cannot bring them back
"""

from __future__ import annotations

import hashlib
import random
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from stream import dedup
from stream.dedup import SeenEvents
from stream.events import DAY_MS
from stream.fold import HALF_LIVES, UserState
from stream.redis_client import client_from_url
from stream.settings import Settings

CODEC_VERSION = 5
#: Older codecs this code still reads. 2 and 3 kept rings of recent event-id
#: digests, which cannot be turned into order-id digests: their users start
#: with an empty deduplication memory (offset marks still hold). 4 had no
#: audiences (its users are in none until they are next scored) and other
#: click digests (its users' click memory starts empty).
_READABLE_CODECS = (2, 3, 4, CODEC_VERSION)
#: Audience memberships share the segment index (counts, members) under this
#: prefix, which no segment name has: ``a:<audience>``.
AUDIENCE_PREFIX = "a:"
_DECAYED = tuple(HALF_LIVES)
MEMBER_SHARDS = 256
#: Schedule sets per partition and day (keep each under Redis's listpack limit of 128).
SCHEDULE_SUBSHARDS = 8
DEFAULT_BUCKETS = 1024


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
    #: The events already counted, against re-sends (``stream.dedup``).
    seen: SeenEvents = field(default_factory=SeenEvents)
    #: Event time as of which the user was last scored: scoring never goes back
    #: in time, even for a late event (their state is then valued at this time).
    scored_at: int = 0
    #: Event time of the next time-driven step (re-score or erasure); 0 = none.
    due: int = 0
    #: Partition number the user's events arrive on (-1 = not known yet).
    partition: int = -1
    #: Storage revision for optimistic concurrency; 0 = not stored yet.
    rev: int = 0
    #: When the user was last erased on request (epoch ms; 0 = never, within
    #: the erasure list's keep time). Their events from before it are dropped.
    #: Stored only for a user who came back after erasure (8 bytes then).
    erased_at: int = 0
    #: Rule audiences the user is in (stream.audiences), sorted.
    audiences: tuple[str, ...] = ()
    #: Per-user counter of audience events: +1 on every enter or exit.
    audience_version: int = 0

    @property
    def exists(self) -> bool:
        return self.rev > 0


# Fixed part: rev, codec | first_seen, last_seen, last_order_at (-1 = none),
# order, cancel, refund counts, total and returned spend, views, carts, events,
# sessions, category bitmap, the decayed counters | version, scored_at, due,
# partition. Variable parts follow, each with a one-byte length.
_FIXED = struct.Struct(f"<IB qqqIIIddIIIIQ{len(_DECAYED)}d IqqhB")
_U32 = struct.Struct("<I")
_OFFSET = struct.Struct("<Hq")
_ERASED = struct.Struct("<q")
_PROB_SCALE = 10_000  # probabilities are kept to 4 decimals, as published


def _short(text: str | None) -> bytes:
    raw = b"" if text is None else text.encode()
    if len(raw) > 255:
        raise ValueError(f"{raw[:40]!r}… is longer than 255 bytes")
    return bytes([len(raw)]) + raw


def encode_record(rec: UserRecord, rev: int | None = None) -> bytes:
    """The binary record (about 300 bytes). ``rev`` defaults to the record's own."""
    s = rec.state
    parts = [
        _FIXED.pack(
            rec.rev if rev is None else rev,
            CODEC_VERSION,
            s.first_seen,
            s.last_seen,
            -1 if s.last_order_at is None else s.last_order_at,
            s.order_count,
            s.cancel_count,
            s.refund_count,
            s.total_spend,
            s.returned_spend,
            s.product_views,
            s.cart_adds,
            s.events,
            s.session_count,
            s.categories,
            *(s.decayed[k] for k in _DECAYED),
            rec.version,
            rec.scored_at,
            rec.due,
            rec.partition,
            len(s.recent_sessions),
        ),
        b"".join(_U32.pack(sid) for sid in s.recent_sessions),
        _short(rec.segment),
        _short(rec.model_version),
    ]
    probs = list((rec.probabilities or {}).values())
    parts.append(bytes([len(probs)]))
    parts.append(struct.pack(f"<{len(probs)}H", *(round(p * _PROB_SCALE) for p in probs)))
    parts.append(bytes([len(rec.offsets)]))
    for tp, off in rec.offsets.items():
        topic, _, part = tp.rpartition(":")
        parts += [_short(topic), _OFFSET.pack(int(part), off)]
    parts.append(dedup.encode(rec.seen))
    parts.append(bytes([len(rec.audiences)]))
    parts += [_short(name) for name in rec.audiences]
    parts.append(_U32.pack(rec.audience_version))
    if rec.erased_at:
        parts.append(_ERASED.pack(rec.erased_at))
    return b"".join(parts)


#: Seeded from the OS at start-up; unpredictability is not the point (an
#: attacker cannot write to Redis anyway), only that restarts do not repeat.
#: secrets/SystemRandom cost a system call per new user (py-spy: 1.5%).
_REV_RANDOM = random.Random()


def _next_rev(rev: int) -> int:
    """The revision a write stores. A new record starts at a random one, so a
    writer still holding the revision of an erased earlier record of the same
    id cannot pass the check by coincidence of counting from 1 again."""
    if rev == 0:
        return _REV_RANDOM.randrange(1, 2**32)
    return rev % (2**32 - 1) + 1


def decode_record(data: bytes, classes: Sequence[str] | None) -> UserRecord:
    """Read a record; ``classes`` names the stored probabilities (None: leave them out)."""
    fixed = _FIXED.unpack_from(data)
    if fixed[1] not in _READABLE_CODECS:
        raise ValueError(f"user record codec {fixed[1]!r}, this code reads {_READABLE_CODECS}")
    n_dec = len(_DECAYED)
    s = UserState()
    (
        s.first_seen,
        s.last_seen,
        last_order_at,
        s.order_count,
        s.cancel_count,
        s.refund_count,
        s.total_spend,
        s.returned_spend,
        s.product_views,
        s.cart_adds,
        s.events,
        s.session_count,
        s.categories,
    ) = fixed[2:15]
    s.last_order_at = None if last_order_at < 0 else last_order_at
    s.decayed = dict(zip(_DECAYED, fixed[15 : 15 + n_dec], strict=True))
    version, scored_at, due, partition, n_sessions = fixed[15 + n_dec :]
    pos = _FIXED.size
    s.recent_sessions = [_U32.unpack_from(data, pos + 4 * i)[0] for i in range(n_sessions)]
    pos += 4 * n_sessions

    def short() -> str | None:
        nonlocal pos
        n = data[pos]
        pos += 1 + n
        return data[pos - n : pos].decode() if n else None

    segment, model_version = short(), short()
    n = data[pos]
    values = struct.unpack_from(f"<{n}H", data, pos + 1)
    pos += 1 + 2 * n
    probabilities = None
    if n and classes is not None and len(classes) == n:
        probabilities = {c: v / _PROB_SCALE for c, v in zip(classes, values, strict=True)}
    offsets = {}
    n = data[pos]
    pos += 1
    for _ in range(n):
        topic = short()
        part, off = _OFFSET.unpack_from(data, pos)
        pos += _OFFSET.size
        offsets[f"{topic}:{part}"] = off
    seen, erased_at = SeenEvents(), 0
    audiences: list[str] = []
    audience_version = 0
    if fixed[1] >= 4:
        seen, pos = dedup.decode(data, pos)
        if fixed[1] == 4:
            # Codec 4 kept BLAKE2 digests of click ids; 5 keeps CRC-32 ones. The
            # old ones would never match again: forget them (orders are as before).
            seen.clicks, seen.newest_hour = set(), -1
    if fixed[1] >= 5:
        n = data[pos]
        pos += 1
        audiences = [short() or "" for _ in range(n)]
        (audience_version,) = _U32.unpack_from(data, pos)
        pos += 4
    if fixed[1] >= 4 and len(data) >= pos + _ERASED.size:
        (erased_at,) = _ERASED.unpack_from(data, pos)
    return UserRecord(
        state=s,
        segment=segment,
        probabilities=probabilities,
        version=version,
        model_version=model_version,
        offsets=offsets,
        seen=seen,
        scored_at=scored_at,
        due=due,
        partition=partition,
        rev=fixed[0],
        erased_at=erased_at,
        audiences=tuple(audiences),
        audience_version=audience_version,
    )


def _day(slot: bytes) -> int:
    return int(slot.split(b":", 1)[0])


def member_shard(user_id: str) -> int:
    return zlib.crc32(user_id.encode()) % MEMBER_SHARDS


# A batch's read. KEYS: stream_time, ptime, erased. ARGV: (bucket key, user
# id, erased digest) per user. Reply: stream time (or nil), the flat HGETALL of
# ptime, the erasure times (one per user without a record, nil if never
# erased, in ARGV order), then each user's record (nil if none) in ARGV order.
# Only a user without a record can have been erased: the others cost nothing.
_LOAD_LUA = """
local out = {redis.call('GET', KEYS[1]) or false, redis.call('HGETALL', KEYS[2]), {}}
for i = 1, #ARGV, 3 do
  local rec = redis.call('HGET', ARGV[i], ARGV[i + 1])
  out[#out + 1] = rec
  if not rec then table.insert(out[3], redis.call('ZSCORE', KEYS[3], ARGV[i + 2]) or '') end
end
return out
"""

# All-or-nothing batch commit. Revisions are checked for every user before
# anything is written, so a refused batch leaves Redis exactly as it was.
# KEYS: counts, offsets, stream_time, ptime (the fixed keys; bucket, member and
# schedule keys are named inside from the prefix: one reason this needs a
# single-shard Redis, see deploy/README.md).
# ARGV: prefix, stream_time, n_offsets, n_ptimes, ttl_ms, (field, offset) * n,
#       (partition, time) * n, then per user (11 each): user id, bucket key,
#       expected stored rev ('' = none), record ('' = erase), old segment,
#       new segment, old partition, old due, new partition, new due, member shard,
#       audience changes ('+name' or '-name', space-separated; '' = none)
_COMMIT_LUA = """
local P = ARGV[1]
local n_off, n_pt, ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local base = 5 + 2 * n_off + 2 * n_pt
local users = (#ARGV - base) / 12
local refused, gone = false, {}
for u = 0, users - 1 do
  local j = base + u * 12
  local cur = redis.call('HGET', ARGV[j + 2], ARGV[j + 1])
  local rev = ''
  if cur then rev = string.sub(cur, 1, 4) end
  if rev ~= ARGV[j + 3] then
    refused = true
    if not cur then table.insert(gone, ARGV[j + 1]) end
  end
end
if refused then return {'conflict', cjson.encode(gone)} end
local DAY, SUB = {day_ms}, {subshards}  -- event-time day; SCHEDULE_SUBSHARDS
for u = 0, users - 1 do
  local j = base + u * 12
  local uid, bucket = ARGV[j + 1], ARGV[j + 2]
  if ARGV[j + 4] == '' then
    redis.call('HDEL', bucket, uid)
  else
    redis.call('HSET', bucket, uid, ARGV[j + 4])
    if ttl > 0 then redis.call('PEXPIRE', bucket, ttl) end
  end
  local old, new, shard = ARGV[j + 5], ARGV[j + 6], ARGV[j + 11]
  if ARGV[j + 3] == '' then
    -- A new record: drop any membership left by an earlier life of this id
    -- whose bucket expired (the backstop TTL), so populations stay exact.
    for _, seg in ipairs(redis.call('HKEYS', KEYS[1])) do
      if redis.call('ZREM', P .. ':m:' .. seg .. ':' .. shard, uid) == 1 then
        redis.call('HINCRBY', KEYS[1], seg, -1)
      end
    end
  end
  if old ~= new then
    if old ~= '' then
      redis.call('HINCRBY', KEYS[1], old, -1)
      redis.call('ZREM', P .. ':m:' .. old .. ':' .. shard, uid)
    end
    if new ~= '' then
      redis.call('HINCRBY', KEYS[1], new, 1)
      redis.call('ZADD', P .. ':m:' .. new .. ':' .. shard, 0, uid)
    end
  end
  for sign, name in string.gmatch(ARGV[j + 12], '([+-])(%S+)') do
    local field = 'a:' .. name
    if sign == '+' then
      if redis.call('ZADD', P .. ':m:' .. field .. ':' .. shard, 0, uid) == 1 then
        redis.call('HINCRBY', KEYS[1], field, 1)
      end
    elseif redis.call('ZREM', P .. ':m:' .. field .. ':' .. shard, uid) == 1 then
      redis.call('HINCRBY', KEYS[1], field, -1)
    end
  end
  local op, od, np, nd = ARGV[j + 7], tonumber(ARGV[j + 8]), ARGV[j + 9], tonumber(ARGV[j + 10])
  if op ~= np or od ~= nd then
    local sub = tonumber(shard) % SUB
    if op ~= '-1' and od > 0 then
      local slot = math.floor(od / DAY) .. ':' .. sub
      local k = P .. ':due:' .. op .. ':' .. slot
      redis.call('ZREM', k, uid)
      if redis.call('EXISTS', k) == 0 then redis.call('ZREM', P .. ':dueslots:' .. op, slot) end
    end
    if np ~= '-1' and nd > 0 then
      local day = math.floor(nd / DAY)
      local slot = day .. ':' .. sub
      redis.call('ZADD', P .. ':due:' .. np .. ':' .. slot, nd, uid)
      redis.call('ZADD', P .. ':dueslots:' .. np, day, slot)
    end
  end
end
for k = 0, n_off - 1 do
  local f, off = ARGV[6 + 2 * k], tonumber(ARGV[7 + 2 * k])
  local cur = redis.call('HGET', KEYS[2], f)
  if (not cur) or tonumber(cur) < off then redis.call('HSET', KEYS[2], f, off) end
end
for k = 0, n_pt - 1 do
  local f, t = ARGV[6 + 2 * n_off + 2 * k], tonumber(ARGV[7 + 2 * n_off + 2 * k])
  local cur = redis.call('HGET', KEYS[4], f)
  if (not cur) or tonumber(cur) < t then redis.call('HSET', KEYS[4], f, t) end
end
local st = tonumber(ARGV[2])
local cur = tonumber(redis.call('GET', KEYS[3]) or '0')
if st > cur then redis.call('SET', KEYS[3], ARGV[2]) end
return {'ok', ''}
""".replace("{day_ms}", str(DAY_MS)).replace("{subshards}", str(SCHEDULE_SUBSHARDS))

# A schedule entry whose user is gone (erased, or its bucket expired by the
# wall-clock backstop TTL): drop it, and the user's membership of any segment,
# fixing the population count if the member was still counted.
# KEYS: bucket, counts, schedule set, slot index. ARGV: uid, prefix, member shard, slot.
_REAP_LUA = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
redis.call('ZREM', KEYS[3], ARGV[1])
if redis.call('EXISTS', KEYS[3]) == 0 then redis.call('ZREM', KEYS[4], ARGV[4]) end
for _, seg in ipairs(redis.call('HKEYS', KEYS[2])) do
  if redis.call('ZREM', ARGV[2] .. ':m:' .. seg .. ':' .. ARGV[3], ARGV[1]) == 1 then
    redis.call('HINCRBY', KEYS[2], seg, -1)
  end
end
return 1
"""


_DROP_EMPTY_SLOT_LUA = (
    "if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], ARGV[1]) end"
)


class ConflictError(RuntimeError):
    """Another writer changed a user since this batch read it; re-run the batch."""

    def __init__(self, message: str, gone: Sequence[str] = ()) -> None:
        super().__init__(message)
        #: Users whose record was deleted (erased) since the batch read it.
        self.gone = list(gone)


class StoreMismatch(RuntimeError):
    """The stored state was written for other segment classes than the model serves."""


class PreparedCommit(NamedTuple):
    """A batch's commit, encoded and not yet sent: the Lua script's keys and arguments."""

    keys: list[str]
    args: list[Any]


class UserWrite(NamedTuple):
    user_id: str
    record: UserRecord
    old_segment: str | None
    #: The partition number the stored record named (its schedule entry lives there).
    old_partition: int = -1
    #: The stored record's next step time (where its schedule entry is filed).
    old_due: int = 0
    #: Erase the user (retention) instead of writing ``record``.
    erase: bool = False
    #: The audiences the stored record was in (the index is moved from these).
    old_audiences: tuple[str, ...] = ()


def _audience_changes(old: Sequence[str], new: Sequence[str]) -> str:
    """The commit script's moves in the audience index: '+name' in, '-name' out."""
    if old == new:
        return ""
    gone, came = set(old) - set(new), set(new) - set(old)
    return " ".join([f"-{a}" for a in sorted(gone)] + [f"+{a}" for a in sorted(came)])


def erased_digest(user_id: str) -> bytes:
    """What the erasure list keeps of a user id: a digest, not the id itself."""
    return hashlib.blake2b(user_id.encode(), digest_size=16, person=b"segmenter-erased").digest()


class StateStore:
    """Redis adapter. Each method is one round trip (a process's first read also
    fetches the stored classes, in one more for ``load``); errors surface as
    ``RedisError``."""

    def __init__(self, client: aioredis.Redis, prefix: str, buckets: int = DEFAULT_BUCKETS) -> None:
        # Any: redis-py's stubs type replies as bytes | str, we always get bytes.
        self._r: Any = client
        self.prefix = prefix
        self.buckets = buckets
        self._commit = client.register_script(_COMMIT_LUA)
        self._reap = client.register_script(_REAP_LUA)
        self._load = client.register_script(_LOAD_LUA)
        self.k_meta = f"{prefix}:meta"
        self.k_counts = f"{prefix}:counts"
        self.k_ptime = f"{prefix}:ptime"
        self.k_forgotten = f"{prefix}:forgotten_total"
        self.k_offsets = f"{prefix}:offsets"
        self.k_stream_time = f"{prefix}:stream_time"
        self.k_drift = f"{prefix}:drift"
        self.k_erased = f"{prefix}:erased"
        self._classes: tuple[str, ...] | None = None

    @classmethod
    def from_url(cls, url: str, prefix: str, **redis_kwargs: Any) -> StateStore:
        client = client_from_url(
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

    def bucket_key(self, user_id: str) -> str:
        return f"{self.prefix}:b:{{{zlib.crc32(user_id.encode()) % self.buckets}}}"

    def _schedule_keys(self, user_id: str, partition: int, due: int) -> tuple[str, str, str]:
        """The schedule set, the slot index and the slot of ``user_id`` due at ``due``."""
        slot = f"{due // DAY_MS}:{member_shard(user_id) % SCHEDULE_SUBSHARDS}"
        return (
            f"{self.prefix}:due:{partition}:{slot}",
            f"{self.prefix}:dueslots:{partition}",
            slot,
        )

    async def ping(self) -> bool:
        return bool(await self._r.ping())

    async def close(self) -> None:
        await self._r.aclose()

    async def bind_classes(self, classes: Sequence[str]) -> None:
        """Record the classes stored probabilities are ordered by; refuse a mismatch.

        A model with other classes cannot read what an earlier one stored: the
        worker stops at start-up with what to do, rather than mislabel users.
        """
        wanted = list(classes)
        await self._r.hsetnx(self.k_meta, "classes", orjson.dumps(wanted))
        stored = orjson.loads(await self._r.hget(self.k_meta, "classes"))
        if stored != wanted:
            raise StoreMismatch(
                f"Redis prefix {self.prefix!r} holds state scored with classes {stored}, "
                f"the model serves {wanted}: use a new SEGMENTER_REDIS_PREFIX, or "
                "erase the old state first"
            )
        self._classes = tuple(wanted)

    @property
    def classes(self) -> tuple[str, ...] | None:
        """The classes stored probabilities are ordered by, once known."""
        return self._classes

    def _decode(self, data: bytes) -> UserRecord:
        return decode_record(data, self._classes)

    def _take_classes(self, stored: bytes | None) -> None:
        if stored is not None:
            self._classes = tuple(orjson.loads(stored))

    async def _fetch_classes(self) -> None:
        self._take_classes(await self._r.hget(self.k_meta, "classes"))

    async def _read(self, pipe: Any) -> list[Any]:
        if self._classes is None:
            pipe.hget(self.k_meta, "classes")
            *replies, classes = await pipe.execute()
            self._take_classes(classes)
            return list(replies)
        return list(await pipe.execute())

    async def load(
        self, user_ids: Sequence[str]
    ) -> tuple[dict[str, UserRecord], int, dict[int, int]]:
        """Records for ``user_ids`` (new ones for unknown users), stored stream time,
        and each partition number's stream time, in one round trip (two on a
        process's first read, which also fetches the stored classes).

        A user erased within the erasure list's keep time comes back as a new
        record with ``erased_at`` set: their events from before it are not theirs
        to count any more."""
        if self._classes is None:
            await self._fetch_classes()
        # One script call with one flat reply, not a pipeline of reads:
        # redis-py's asyncio client parses each reply of a pipeline in Python,
        # and a live-sized batch has hundreds of users. Not in a pipeline
        # either: a pipeline with a script first asks SCRIPT EXISTS, a second
        # round trip; a bare call sends EVALSHA and loads the script only if
        # Redis answers NOSCRIPT.
        args: list[str | bytes] = []
        for uid in user_ids:
            args += (self.bucket_key(uid), uid, erased_digest(uid))
        stream_time, ptimes, erased, *datas = await self._load(
            keys=[self.k_stream_time, self.k_ptime, self.k_erased], args=args
        )
        out: dict[str, UserRecord] = {}
        erased_at = iter(erased)
        for uid, data in zip(user_ids, datas, strict=True):
            if data is None:
                out[uid] = UserRecord(erased_at=int(float(next(erased_at) or 0)))
            else:
                out[uid] = self._decode(data)
        it = iter(ptimes)
        partition_times = {int(k): int(v) for k, v in zip(it, it, strict=True)}
        return out, int(stream_time or 0), partition_times

    async def get(self, user_id: str) -> UserRecord | None:
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.hget(self.bucket_key(user_id), user_id)
            (data,) = await self._read(pipe)
        return None if data is None else self._decode(data)

    async def commit(
        self,
        writes: Iterable[UserWrite],
        partition_offsets: dict[str, int],
        stream_time: int,
        ttl_ms: int = 0,
        partition_times: dict[int, int] | None = None,
    ) -> None:
        """Write a batch atomically; raise :class:`ConflictError` if anyone else wrote first.

        A write with ``erase`` deletes that user. ``ttl_ms`` (0 = none) is a
        wall-clock backstop on each written bucket; the authoritative,
        event-time retention is the erasure step of the re-evaluation schedule.
        """
        await self.send_commit(
            self.prepare_commit(writes, partition_offsets, stream_time, ttl_ms, partition_times)
        )

    def prepare_commit(
        self,
        writes: Iterable[UserWrite],
        partition_offsets: dict[str, int],
        stream_time: int,
        ttl_ms: int = 0,
        partition_times: dict[int, int] | None = None,
    ) -> PreparedCommit:
        """Encode a batch's commit without sending it (:meth:`send_commit` does).

        Split from the sending so the pipeline can encode while the broker
        acknowledges the batch's changes: nothing is written until it is sent.
        """
        partition_times = partition_times or {}
        keys = [self.k_counts, self.k_offsets, self.k_stream_time, self.k_ptime]
        args: list[Any] = [
            self.prefix,
            stream_time,
            len(partition_offsets),
            len(partition_times),
            ttl_ms,
        ]
        for tp, off in partition_offsets.items():
            args += [tp, off]
        for part, t in partition_times.items():
            args += [part, t]
        for w in writes:
            rec = w.record
            args += [
                w.user_id,
                self.bucket_key(w.user_id),
                _U32.pack(rec.rev) if rec.exists else b"",
                b"" if w.erase else encode_record(rec, rev=_next_rev(rec.rev)),
                w.old_segment or "",
                "" if w.erase else rec.segment or "",
                w.old_partition,
                w.old_due,
                rec.partition,
                0 if w.erase else rec.due,
                member_shard(w.user_id),
                _audience_changes(w.old_audiences, () if w.erase else rec.audiences),
            ]
        return PreparedCommit(keys, args)

    async def send_commit(self, prepared: PreparedCommit) -> None:
        """Run a prepared commit; raise :class:`ConflictError` if anyone else wrote first."""
        status, detail = await self._commit(keys=prepared.keys, args=prepared.args)
        if status != b"ok":
            gone = orjson.loads(detail) if detail not in (b"", b"{}") else []
            raise ConflictError(
                f"a user of the batch was written by someone else{' or erased' if gone else ''}",
                gone,
            )

    async def forget(self, user_id: str, now_ms: int = 0, keep_ms: int = 0) -> bool:
        """Erase one user (right to erasure). True if there was state to erase.

        With ``keep_ms`` > 0 the user's id digest is kept that long in the
        erasure list, with ``now_ms``: the worker then drops the user's events
        from before the erasure (a replay, a rewound group) instead of
        rebuilding them from those. Entries past their keep time are pruned here.
        """
        if keep_ms > 0:
            # First: from here on no batch can re-create the user from old events.
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.zadd(self.k_erased, {erased_digest(user_id): now_ms})
                pipe.zremrangebyscore(self.k_erased, "-inf", now_ms - keep_ms)
                await pipe.execute()
        while True:
            rec = await self.get(user_id)
            if rec is None:
                return False
            try:
                await self.commit(
                    [
                        UserWrite(
                            user_id,
                            rec,
                            rec.segment,
                            rec.partition,
                            rec.due,
                            erase=True,
                            old_audiences=rec.audiences,
                        )
                    ],
                    {},
                    0,
                )
            except ConflictError:
                continue  # a worker wrote the user meanwhile: erase what is there now
            await self._r.incr(self.k_forgotten)
            return True

    async def reap(self, user_id: str, partition: int, due: int) -> bool:
        """Drop a schedule entry whose user no longer exists. True if one was dropped."""
        schedule, slots, slot = self._schedule_keys(user_id, partition, due)
        return bool(
            await self._reap(
                keys=[self.bucket_key(user_id), self.k_counts, schedule, slots],
                args=[user_id, self.prefix, member_shard(user_id), slot],
            )
        )

    async def unschedule(self, user_id: str, partition: int, due: int) -> None:
        """Drop a stale schedule entry (the user has moved to another partition)."""
        schedule, slots, slot = self._schedule_keys(user_id, partition, due)
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.zrem(schedule, user_id)
            pipe.execute_command("EVAL", _DROP_EMPTY_SLOT_LUA, 2, schedule, slots, slot)
            await pipe.execute()

    async def due_for_reevaluation(
        self, partition: int, until_ms: int, limit: int
    ) -> list[tuple[str, int]]:
        """Users of ``partition`` whose next step is at or before ``until_ms``, earliest first."""
        slots = await self._r.zrangebyscore(
            f"{self.prefix}:dueslots:{partition}", "-inf", until_ms // DAY_MS
        )
        out: list[tuple[str, int]] = []
        i = 0
        while i < len(slots) and len(out) < limit:
            # Read whole days only (at least 32 slots' worth per round trip):
            # an earlier day's entries are all earlier than a later day's, so
            # once a page is full no later day can change it.
            j = min(i + 32, len(slots))
            while j < len(slots) and _day(slots[j]) == _day(slots[j - 1]):
                j += 1
            async with self._r.pipeline(transaction=False) as pipe:
                for slot in slots[i:j]:
                    pipe.zrangebyscore(
                        f"{self.prefix}:due:{partition}:{slot.decode()}",
                        "-inf",
                        until_ms,
                        start=0,
                        num=limit,
                        withscores=True,
                    )
                for page in await pipe.execute():
                    out += [(u.decode(), int(score)) for u, score in page]
            i = j
        out.sort(key=lambda pair: pair[1])
        return out[:limit]

    async def partition_times(self) -> dict[int, int]:
        """Stream time per partition number: the largest event time applied from it."""
        raw = await self._r.hgetall(self.k_ptime)
        return {int(k): int(v) for k, v in raw.items()}

    async def forgotten_total(self) -> int:
        return int(await self._r.get(self.k_forgotten) or 0)

    async def members(self, segment: str, after: str = "", limit: int = 100) -> list[str]:
        """A page of a segment's members after ``after``, in (shard, id) order.

        The order is stable and a user id is a complete cursor: its shard says
        where to go on. Up to 32 shards are read per round trip.
        """
        shard = member_shard(after) if after else 0
        out: list[str] = []
        start = f"({after}" if after else "-"
        while shard < MEMBER_SHARDS and len(out) < limit:
            batch = range(shard, min(shard + 32, MEMBER_SHARDS))
            async with self._r.pipeline(transaction=False) as pipe:
                for k in batch:
                    pipe.zrange(
                        f"{self.prefix}:m:{segment}:{k}",
                        start if k == shard else "-",
                        "+",
                        bylex=True,
                        offset=0,
                        num=limit,
                    )
                pages = await pipe.execute()
            for page in pages:
                out += [u.decode() for u in page]
                if len(out) >= limit:
                    break
            shard = batch.stop
            start = "-"
        return out[:limit]

    async def stream_time(self) -> int:
        return int(await self._r.get(self.k_stream_time) or 0)

    async def segment_counts(self) -> dict[str, int]:
        raw = await self._r.hgetall(self.k_counts)
        # A segment everyone has left keeps a 0 field, or none if nobody entered
        # it between two commits: both mean no members, so neither is listed.
        return {
            k.decode(): int(v)
            for k, v in raw.items()
            if int(v) and not k.startswith(AUDIENCE_PREFIX.encode())
        }

    async def audience_counts(self) -> dict[str, int]:
        """Members per rule audience (those with none are not listed)."""
        raw = await self._r.hgetall(self.k_counts)
        n = len(AUDIENCE_PREFIX)
        return {
            k.decode()[n:]: int(v)
            for k, v in raw.items()
            if int(v) and k.startswith(AUDIENCE_PREFIX.encode())
        }

    async def partition_offsets(self) -> dict[str, int]:
        raw = await self._r.hgetall(self.k_offsets)
        return {k.decode(): int(v) for k, v in raw.items()}

    async def put_drift(self, worker: str, report: dict[str, Any], ttl_s: int) -> None:
        """Store one worker's latest drift report (one round trip, off the batch path)."""
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.hset(self.k_drift, worker, orjson.dumps(report))
            # Reports of workers long gone go with the key once nobody writes.
            pipe.expire(self.k_drift, ttl_s)
            await pipe.execute()

    async def drift_reports(self) -> list[dict[str, Any]]:
        """Every worker's latest drift report (readers judge freshness by ``at``)."""
        raw = await self._r.hgetall(self.k_drift)
        return [orjson.loads(v) for v in raw.values()]

    async def scan_users(self, count: int = 1000) -> list[str]:
        """Every user id under this prefix (for tests, export and audits; not the hot path)."""
        users = []
        async for key in self._r.scan_iter(match=f"{self.prefix}:b:*", count=count):
            users += [u.decode() for u in await self._r.hkeys(key)]
        return users

    async def memory_per_user(self) -> dict[str, float]:
        """Bytes Redis holds per stored user, by kind of key (MEMORY USAGE; for benchmarks)."""
        kinds = {"records": ":b:", "members": ":m:", "schedule": ":due"}  # :due and :dueslots
        totals = dict.fromkeys([*kinds, "other"], 0)
        async for key in self._r.scan_iter(match=f"{self.prefix}:*", count=1000):
            text = key.decode()[len(self.prefix) :]
            kind = next((k for k, marker in kinds.items() if text.startswith(marker)), "other")
            totals[kind] += int(await self._r.memory_usage(key, samples=0) or 0)
        users = max(1, len(await self.scan_users()))
        out = {k: v / users for k, v in totals.items()}
        out["total"] = sum(totals.values()) / users
        return out

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
    "StoreMismatch",
    "UserRecord",
    "UserWrite",
    "decode_record",
    "encode_record",
    "erased_digest",
]
