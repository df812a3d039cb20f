"""Per-user state in Redis: one read and one atomic write per batch.

Delivery guarantee: **exactly once** for state. Each user record carries
the last applied offset of every partition it has been fed from (against a
redelivered record) and the user's deduplication memory (``stream.core.dedup``:
against an event re-sent as a new record). A user's record, their schedule
entry and their index memberships are written by one Lua script, so they move
together or not at all, and a redelivered or re-sent event is recognised and
skipped whatever was written before a crash.

On a single Redis the whole batch, the partitions' offsets and stream time
included, is one script call. On Redis Cluster (``SEGMENTER_REDIS_CLUSTER``)
it is one call per hash-tag group of users (stream.worker.state.keys), each atomic
on its node, then one for the clock: a crash in between leaves some users
written ahead of the offsets, and the replay skips them by their own offset
marks. Per user it is still exactly once.

Concurrent writers (two workers owning the same user for a moment during a
rebalance) are caught by a per-record revision: the script refuses the call
if any record changed since it was read, and the caller re-runs the batch.

A worker reads the users it committed last from memory instead
(stream.worker.state.record_cache); the revision check still guards each write.

Memory is budgeted per user (``segmenter bench`` reports it): records are a
fixed binary layout (stream.worker.state.record_codec) in shared hash buckets (no per-user
key overhead), and the per-user index entries live in many small sorted sets,
which Redis keeps in its compact listpack encoding. The key layout is in
stream.worker.state.keys.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from redis.exceptions import RedisError, ResponseError

from stream.core.events import DAY_MS
from stream.erasure import ErasureKeyError, check_key, erasure_digest, erasure_key, key_check
from stream.redis_client import client_from_url, is_cluster, packs_with_hiredis
from stream.settings import Settings
from stream.worker.state.audits import StoreAudits
from stream.worker.state.keys import (
    AUDIENCE_PREFIX,
    DEFAULT_BUCKETS,
    GROUPS,
    LAYOUT_VERSION,
    MEMBER_SHARDS,
    KeyLayout,
    by_group,
    member_shard,
    tp_times,
)
from stream.worker.state.record_cache import RecordCache
from stream.worker.state.record_codec import UserRecord, decode_record, encode_record
from stream.worker.state.scripts import COMMIT_LUA, LOAD_LUA, REAP_LUA, UNSCHEDULE_LUA
from stream.worker.state.topic_marks import RECORD_TOPIC_LUA
from stream.worker.state.writes import (
    REV_BYTES,
    PreparedCommit,
    UserWrite,
    encode_commit,
    index_moves,
)

log = logging.getLogger(__name__)


class ConflictError(RuntimeError):
    """Another writer changed a user since this batch read it; re-run the batch."""

    def __init__(self, message: str, gone: Sequence[str] = ()) -> None:
        super().__init__(message)
        #: Users whose record was deleted (erased) since the batch read it.
        self.gone = list(gone)


class StoreMismatch(RuntimeError):
    """The stored state cannot be served as it is: other segment classes than
    the model serves, or another release's key layout."""


class StateStore(StoreAudits):
    """Redis adapter. On a single Redis each method is one round trip (a
    process's first read also fetches the stored classes); on a cluster the
    per-group calls of one method run concurrently. Errors surface as
    ``RedisError``."""

    def __init__(
        self,
        client: Any,
        prefix: str,
        buckets: int = DEFAULT_BUCKETS,
        erasure_prefix: str | None = None,
        erasure_key: bytes | None = None,
        cache_users: int = 0,
    ) -> None:
        # Any: redis-py's stubs type replies as bytes | str, we always get bytes.
        self._r: Any = client
        self.cluster = is_cluster(client)
        self.prefix = prefix
        self.keys = KeyLayout(prefix, buckets, erasure_prefix)
        self.erasure_prefix = erasure_prefix or prefix
        #: Without a key nothing can have been erased (`forget` refuses), and an
        #: empty digest matches no entry.
        self._erasure_key = erasure_key
        self._commit = client.register_script(COMMIT_LUA)
        self._reap = client.register_script(REAP_LUA)
        self._load = client.register_script(LOAD_LUA)
        self._unschedule = client.register_script(UNSCHEDULE_LUA)
        self._record_topic = client.register_script(RECORD_TOPIC_LUA)
        self._classes: tuple[str, ...] | None = None
        #: Index names (segments, ``a:<audience>``) a new record is cleaned
        #: out of when buckets can expire (see :meth:`prepare_commit`).
        self._names: set[str] = set()
        self.cache = RecordCache(cache_users)

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str,
        cluster: bool = False,
        erasure_prefix: str | None = None,
        erasure_key: bytes | None = None,
        cache_users: int = 0,
        **redis_kwargs: Any,
    ) -> StateStore:
        client = client_from_url(
            url,
            cluster=cluster,
            socket_timeout=5.0,
            socket_connect_timeout=3.0,
            health_check_interval=15,
            **redis_kwargs,
        )
        if not packs_with_hiredis(client):
            log.warning(
                "redis-py packs commands in Python here (about 9%% of a batch's CPU): "
                "install redis[hiredis]>=8.2"
            )
        return cls(client, prefix, DEFAULT_BUCKETS, erasure_prefix, erasure_key, cache_users)

    @classmethod
    def from_settings(cls, settings: Settings, cache: bool = False) -> StateStore:
        """``cache``: keep committed records (the worker's batches: record_cache)."""
        return cls.from_url(
            settings.redis_url,
            settings.redis_prefix,
            cluster=settings.redis_cluster,
            erasure_prefix=settings.erasure_prefix,
            erasure_key=erasure_key(settings),
            cache_users=settings.state_cache_users if cache else 0,
            **settings.redis_client_kwargs(),
        )

    def erased_digest(self, user_id: str) -> bytes:
        """What the erasure list keeps of ``user_id`` (b"" without a key)."""
        key = self._erasure_key
        return b"" if key is None else erasure_digest(key, user_id)

    async def check_erasure_key(self) -> None:
        """Refuse (:class:`StoreMismatch`) a key the erasure list was not written with."""
        try:
            check_key(
                await self._r.get(self.keys.erasure_check), self._erasure_key, self.erasure_prefix
            )
        except ErasureKeyError as exc:
            raise StoreMismatch(str(exc)) from None

    def bucket_key(self, user_id: str) -> str:
        return self.keys.bucket(user_id)

    async def ping(self) -> bool:
        return bool(await self._r.ping())

    async def close(self) -> None:
        await self._r.aclose()

    async def eviction_policy(self) -> list[str]:
        """``maxmemory-policy`` of every node that holds data (one on a single Redis).

        Empty if Redis refuses CONFIG (managed services may rename it)."""
        try:
            if self.cluster:
                replies = await self._r.config_get(
                    "maxmemory-policy", target_nodes=self._r.PRIMARIES
                )
                if isinstance(replies, dict) and "maxmemory-policy" not in replies:
                    return sorted({str(r.get("maxmemory-policy")) for r in replies.values()})
                return [str(replies.get("maxmemory-policy"))]
            reply = await self._r.config_get("maxmemory-policy")
        except ResponseError:
            return []
        return [str(reply.get("maxmemory-policy", ""))]

    async def bind_classes(self, classes: Sequence[str]) -> None:
        """Record the classes stored probabilities are ordered by; refuse a mismatch.

        A model with other classes cannot read what an earlier one stored, nor
        can this code read another release's key layout: the worker stops at
        start-up with what to do, rather than mislabel users.
        """
        wanted = list(classes)
        meta = self.keys.meta
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.hsetnx(meta, "classes", orjson.dumps(wanted))
            pipe.hsetnx(meta, "layout", LAYOUT_VERSION)
            pipe.hmget(meta, ["classes", "layout"])
            _, _, (stored, layout) = await pipe.execute()
        if int(layout) != LAYOUT_VERSION:
            raise StoreMismatch(
                f"Redis prefix {self.prefix!r} holds state in key layout {int(layout)}, this "
                f"release reads layout {LAYOUT_VERSION}: use a new SEGMENTER_REDIS_PREFIX "
                "and replay the topics into it"
            )
        if orjson.loads(stored) != wanted:
            raise StoreMismatch(
                f"Redis prefix {self.prefix!r} holds state scored with classes "
                f"{orjson.loads(stored)}, the model serves {wanted}: use a new "
                "SEGMENTER_REDIS_PREFIX, or erase the old state first"
            )
        await self.check_erasure_key()
        self._classes = tuple(wanted)
        self._names.update(wanted)
        self._names.update(await self._index_names())

    def know_audiences(self, names: Iterable[str]) -> None:
        """Audience names served now (their index entries are cleaned like segments')."""
        self._names.update(AUDIENCE_PREFIX + n for n in names)

    async def _index_names(self) -> set[str]:
        async with self._r.pipeline(transaction=False) as pipe:
            for key in self.keys.all_counts():
                pipe.hkeys(key)
            return {n.decode() for names in await pipe.execute() for n in names}

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
        self._take_classes(await self._r.hget(self.keys.meta, "classes"))
        self._names.update(self._classes or ())
        self._names.update(await self._index_names())

    async def load(
        self, user_ids: Sequence[str], cached: bool = True
    ) -> tuple[dict[str, UserRecord], int, dict[str, int]]:
        """Records for ``user_ids`` (new ones for unknown users), stored stream time,
        and each input topic-partition's stream time, in one round trip on a single
        Redis (two on a process's first read, which also fetches the classes).

        A record this store committed last is taken from memory if Redis still
        holds it at that revision (``cached``; the read API passes False). A user
        erased within the erasure list's keep time comes back as a new record
        with ``erased_at`` set: their events from before it are not theirs to
        count any more."""
        if self._classes is None:
            await self._fetch_classes()
        # One script call with one flat reply, not a pipeline of reads:
        # redis-py's asyncio client parses each reply of a pipeline in Python,
        # and a live-sized batch has hundreds of users. Not in a pipeline
        # either: a pipeline with a script first asks SCRIPT EXISTS, a second
        # round trip; a bare call sends EVALSHA and loads the script only if
        # Redis answers NOSCRIPT.
        clock = [self.keys.stream_time, self.keys.ptime]
        held = self.cache.take(user_ids) if cached else {}
        if not self.cluster:
            stream_time, ptimes, erased, datas = await self._load_call(clock, user_ids, held)
        else:
            groups = by_group(user_ids)
            replies = await asyncio.gather(
                self._load_call(clock, [], held),
                *(self._load_call(None, g, held) for g in groups.values()),
            )
            stream_time, ptimes = replies[0][0], replies[0][1]
            order = [u for g in groups.values() for u in g]
            erased = [e for r in replies[1:] for e in r[2]]
            by_user = dict(zip(order, [d for r in replies[1:] for d in r[3]], strict=True))
            datas = [by_user[u] for u in user_ids]
            # Erasure times in ``user_ids`` order, for the users without a record.
            missing = iter(erased)
            times = {u: next(missing) for u in order if by_user[u] is None}
            erased = [times[u] for u in user_ids if by_user[u] is None]
        out: dict[str, UserRecord] = {}
        erased_at = iter(erased)
        for uid, data in zip(user_ids, datas, strict=True):
            if data is None:
                out[uid] = UserRecord(erased_at=int(float(next(erased_at) or 0)))
            elif type(data) is int:  # still at the revision held in memory
                out[uid] = held[uid]
            else:
                out[uid] = self._decode(data)
        if cached and self.cache.capacity:
            # Counted with an empty cache too (after a rebalance): every read is then a miss.
            self.cache.counted(len(user_ids), sum(type(d) is int for d in datas) if held else 0)
        it = iter(ptimes)
        partition_times = tp_times(zip(it, it, strict=True))
        return out, int(stream_time or 0), partition_times

    async def _load_call(
        self, clock: list[str] | None, user_ids: Sequence[str], held: dict[str, UserRecord]
    ) -> tuple[Any, list[Any], list[Any], list[Any]]:
        keys: list[str] = list(clock or ())
        args: list[str | bytes] = ["1" if clock else "0"]
        for uid in user_ids:
            k = self.keys.user(uid)
            keys += (k.bucket, k.erased)
            rec = held.get(uid)
            rev = rec.rev.to_bytes(REV_BYTES, "little") if rec is not None else b""
            args += (uid, self.erased_digest(uid), rev)
        stream_time, ptimes, erased, *datas = await self._load(keys=keys, args=args)
        return stream_time, ptimes, erased, datas

    async def get(self, user_id: str) -> UserRecord | None:
        if self._classes is None:
            await self._fetch_classes()
        data = await self._r.hget(self.bucket_key(user_id), user_id)
        return None if data is None else self._decode(data)

    async def commit(
        self,
        writes: Iterable[UserWrite],
        partition_offsets: dict[str, int],
        stream_time: int,
        ttl_ms: int = 0,
        partition_times: dict[str, int] | None = None,
    ) -> None:
        """Write a batch; raise :class:`ConflictError` if anyone else wrote first.

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
        partition_times: dict[str, int] | None = None,
    ) -> PreparedCommit:
        """Encode a batch's commit without sending it (:meth:`send_commit` does).

        Split from the sending so the pipeline can encode while the broker
        acknowledges the batch's changes: nothing is written until it is sent.
        """
        # Only a bucket that can expire leaves index entries without a record.
        clean = sorted(self._names) if ttl_ms > 0 else []
        return encode_commit(
            self.keys,
            self.cluster,
            writes,
            partition_offsets,
            stream_time,
            ttl_ms,
            partition_times or {},
            clean,
        )

    async def send_commit(self, prepared: PreparedCommit) -> None:
        """Run a prepared commit; raise :class:`ConflictError` if anyone else wrote first."""
        if len(prepared.groups) == 1:
            replies = [await self._commit(*prepared.groups[0])]
        else:
            replies = await asyncio.gather(*(self._commit(*c) for c in prepared.groups))
        gone: list[str] = []
        refused = False
        for status, detail in replies:
            if status != b"ok":
                refused = True
                gone += orjson.loads(detail) if detail not in (b"", b"{}") else []
        if refused:
            raise ConflictError(
                f"a user of the batch was written by someone else{' or erased' if gone else ''}",
                gone,
            )
        if prepared.clock is not None:
            await self._commit(*prepared.clock)
        self.cache.keep(prepared.written)

    async def forget(self, user_id: str, now_ms: int = 0, keep_ms: int = 0) -> bool:
        """Erase one user (right to erasure). True if there was state to erase.

        With ``keep_ms`` > 0 the user's id digest is kept that long in the
        erasure list, with ``now_ms``: the worker then drops the user's events
        from before the erasure (a replay, a rewound group) instead of
        rebuilding them from those. Entries past their keep time are pruned here.
        """
        if keep_ms > 0:
            # The list names its key (a check value) so another key is refused.
            await self._r.set(self.keys.erasure_check, key_check(self._erasure_key), nx=True)
            await self.check_erasure_key()
            # First: from here on no batch can re-create the user from old events.
            await self._r.zadd(
                self.keys.user(user_id).erased, {self.erased_digest(user_id): now_ms}
            )
            async with self._r.pipeline(transaction=False) as pipe:
                for key in self.keys.all_erased():
                    pipe.zremrangebyscore(key, "-inf", now_ms - keep_ms)
                await pipe.execute()
        while True:
            rec = await self.get(user_id)
            if rec is None:
                return False
            write = UserWrite(
                user_id, rec, rec.segment, rec.partition, rec.due, True, rec.audiences
            )
            try:
                await self.commit([write], {}, 0)
            except ConflictError:
                continue  # a worker wrote the user meanwhile: erase what is there now
            await self._r.incr(self.keys.forgotten)
            return True

    async def reap(self, user_id: str, partition: int, due: int) -> bool:
        """Drop a schedule entry whose user no longer exists, and the user's index
        entries. True if one was dropped."""
        k = self.keys.user(user_id)
        names = sorted(n.decode() for n in await self._r.hkeys(k.counts))
        schedule, slots, day = self.keys.schedule(user_id, partition, due)
        keys = [k.bucket, k.counts, schedule, slots]
        keys += [self.keys.member(name, k.shard) for name in names]
        return bool(await self._reap(keys=keys, args=[user_id, day, *names]))

    async def unschedule(self, user_id: str, partition: int, due: int) -> None:
        """Drop a stale schedule entry (the user has moved to another partition)."""
        schedule, slots, day = self.keys.schedule(user_id, partition, due)
        await self._unschedule(keys=[schedule, slots], args=[user_id, day])

    async def due_for_reevaluation(
        self, partition: int, until_ms: int, limit: int
    ) -> list[tuple[str, int]]:
        """Users of ``partition`` whose next step is at or before ``until_ms``, earliest first."""
        async with self._r.pipeline(transaction=False) as pipe:
            for g in range(GROUPS):
                pipe.zrangebyscore(self.keys.dueslots(g, partition), "-inf", until_ms // DAY_MS)
            days = sorted(
                (int(day), g) for g, page in enumerate(await pipe.execute()) for day in page
            )
        out: list[tuple[str, int]] = []
        i = 0
        while i < len(days) and len(out) < limit:
            # Read whole days only (at least 32 sets' worth per round trip): an
            # earlier day's entries are all earlier than a later day's, so once
            # a page is full no later day can change it.
            j = min(i + 32, len(days))
            while j < len(days) and days[j][0] == days[j - 1][0]:
                j += 1
            async with self._r.pipeline(transaction=False) as pipe:
                for day, g in days[i:j]:
                    pipe.zrangebyscore(
                        self.keys.due(g, partition, day),
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

    async def partition_times(self) -> dict[str, int]:
        """Per "topic:partition", the largest event time applied from it."""
        return tp_times((await self._r.hgetall(self.keys.ptime)).items())

    async def forgotten_total(self) -> int:
        return int(await self._r.get(self.keys.forgotten) or 0)

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
                        self.keys.member(segment, k),
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
        return int(await self._r.get(self.keys.stream_time) or 0)

    async def _index_counts(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        async with self._r.pipeline(transaction=False) as pipe:
            for key in self.keys.all_counts():
                pipe.hgetall(key)
            for raw in await pipe.execute():
                for k, v in raw.items():
                    totals[k.decode()] = totals.get(k.decode(), 0) + int(v)
        # Names other workers added (a newer audiences file) are learnt here,
        # by the worker's housekeeping every few seconds: new records are
        # cleaned out of those indexes too (prepare_commit).
        self._names.update(totals)
        # An index everyone has left keeps 0 fields: no members, not listed.
        return {k: v for k, v in totals.items() if v}

    async def segment_counts(self) -> dict[str, int]:
        counts = await self._index_counts()
        return {k: v for k, v in counts.items() if not k.startswith(AUDIENCE_PREFIX)}

    async def audience_counts(self) -> dict[str, int]:
        """Members per rule audience (those with none are not listed)."""
        n = len(AUDIENCE_PREFIX)
        counts = await self._index_counts()
        return {k[n:]: v for k, v in counts.items() if k.startswith(AUDIENCE_PREFIX)}

    async def record_topic_id(self, topic: str, topic_id: str) -> tuple[int, bool]:
        """The generation of ``topic``'s identity, and whether this call began it
        (stream.worker.state.topic_marks)."""
        keys = [self.keys.topic_ids, self.keys.offsets]
        gen, began = await self._record_topic(keys=keys, args=[topic, topic_id])
        return int(gen), bool(began)

    async def partition_offsets(self) -> dict[str, int]:
        raw = await self._r.hgetall(self.keys.offsets)
        return {k.decode(): int(v) for k, v in raw.items()}

    async def put_drift(self, worker: str, report: dict[str, Any], ttl_s: int) -> None:
        """Store one worker's latest drift report (one round trip, off the batch path)."""
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.hset(self.keys.drift, worker, orjson.dumps(report))
            # Reports of workers long gone go with the key once nobody writes.
            pipe.expire(self.keys.drift, ttl_s)
            await pipe.execute()

    async def drift_reports(self) -> list[dict[str, Any]]:
        """Every worker's latest drift report (readers judge freshness by ``at``)."""
        raw = await self._r.hgetall(self.keys.drift)
        return [orjson.loads(v) for v in raw.values()]


__all__ = [
    "ConflictError",
    "RedisError",
    "StateStore",
    "StoreMismatch",
    "UserRecord",
    "UserWrite",
    "decode_record",
    "encode_record",
    "index_moves",
    "member_shard",
]
