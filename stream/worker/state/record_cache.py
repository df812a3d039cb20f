"""The worker's own users' records, as it last committed them, kept in memory.

A worker is the only writer of the users of the partitions it owns (the
consumer group gives each partition one owner, and ``WorkerParts.one_writer``
serialises its batches and sweeps), so the record it has just committed is
what the next batch would read back from Redis. Keeping it saves that batch
the read's arguments, the script's work and decoding the reply: on a backlog
most users of a batch were in an earlier one.

Nothing here is trusted over Redis. A cached record keeps the revision it was
committed with, and the batch's read still asks Redis for every user: the
load script answers "the same" (1) only if the stored record is still at that
revision, and sends the record otherwise (another worker wrote during a
rebalance, ``segmenter forget`` erased the user, the bucket's backstop TTL
dropped it). What is saved is sending and decoding the record. A record is
also *taken out* of the cache while a batch works on it, and only put back
once the batch's commit has succeeded, so a failed, refused or split batch
leaves no half-applied record behind.

Only small records are kept: a user whose dedup memory holds many clicks (a
bot, as a rule) costs ten times its stored size in Python objects or more,
and is read from Redis each time.

What is put back is exactly what decoding the stored bytes would give
(:func:`stream.worker.state.record_codec.as_stored`), so a batch behaves the
same whether its users came from here or from Redis; the tests hold the
worker's output to that.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import islice

from stream import metrics
from stream.worker.state.record_codec import UserRecord, as_stored

#: Largest stored record kept, in bytes: a typical user's is 300-450 (about
#: 2.5-5 KB in Python), one of 640 about 10 KB (docs/performance.md).
MAX_STORED_BYTES = 640


class RecordCache:
    """At most ``capacity`` users' records, least recently committed dropped first.

    ``capacity`` 0 keeps nothing (every read goes to Redis)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # A dict keeps insertion order: re-inserting on every commit makes
        # the first key the least recently committed.
        self._records: dict[str, UserRecord] = {}

    def __len__(self) -> int:
        return len(self._records)

    def take(self, user_ids: Sequence[str]) -> dict[str, UserRecord]:
        """The cached records of ``user_ids``, removed from the cache (see the module)."""
        records = self._records
        if not records:
            return {}
        pop = records.pop
        held = {}
        for uid in user_ids:
            rec = pop(uid, None)
            if rec is not None:
                held[uid] = rec
        return held

    def counted(self, reads: int, hits: int) -> None:
        """Count a read of ``reads`` users, ``hits`` of them still current in the cache."""
        metrics.STATE_CACHE_READS.labels("hit").inc(hits)
        metrics.STATE_CACHE_READS.labels("miss").inc(reads - hits)
        metrics.STATE_CACHE_USERS.set(len(self._records))

    def keep(self, committed: Iterable[tuple[str, UserRecord, int, int]]) -> None:
        """Records whose commit has succeeded: (user id, record, stored revision,
        stored size). Revision 0 means the user was erased: whatever was cached goes."""
        records, capacity = self._records, self.capacity
        for uid, rec, rev, size in committed:
            records.pop(uid, None)
            if rev and capacity and size <= MAX_STORED_BYTES:
                as_stored(rec, rev)
                records[uid] = rec
        if len(records) > capacity:
            for uid in list(islice(records, len(records) - capacity)):
                del records[uid]
        metrics.STATE_CACHE_USERS.set(len(records))

    def clear(self) -> None:
        """Forget everything (partitions were revoked or assigned)."""
        self._records.clear()
        metrics.STATE_CACHE_USERS.set(0)


__all__ = ["MAX_STORED_BYTES", "RecordCache"]
