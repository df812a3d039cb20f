"""The worker's own users' records, as it last committed them, kept in memory.

A worker is the only writer of the users of the partitions it owns (the
consumer group gives each partition one owner, and ``WorkerParts.one_writer``
serialises its batches and sweeps), so the record it has just committed is
what the next batch would read back from Redis. Keeping it saves that batch
the read's arguments, the script's work and decoding the reply: on a backlog
most users of a batch were in an earlier one.

Nothing here is trusted over Redis. A cached record keeps the revision it was
committed with, and the commit script refuses a batch if any user's stored
revision differs (another worker wrote during a rebalance, ``segmenter forget``
erased the user, the bucket's backstop TTL dropped it): the batch then re-runs
from Redis. To make that re-run read Redis, a record is *taken out* of the
cache when a batch reads it, and only put back once its commit has succeeded:
a batch that fails, is refused or is split leaves nothing stale behind.

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
        if not self._records:
            if self.capacity:
                metrics.STATE_CACHE_READS.labels("miss").inc(len(user_ids))
            return {}
        pop = self._records.pop
        hits = {}
        for uid in user_ids:
            rec = pop(uid, None)
            if rec is not None:
                hits[uid] = rec
        metrics.STATE_CACHE_READS.labels("hit").inc(len(hits))
        metrics.STATE_CACHE_READS.labels("miss").inc(len(user_ids) - len(hits))
        return hits

    def keep(self, committed: Iterable[tuple[str, UserRecord, int]]) -> None:
        """Records whose commit has succeeded: (user id, record, stored revision).

        Revision 0 means the user was erased: whatever was cached goes."""
        records, capacity = self._records, self.capacity
        for uid, rec, rev in committed:
            records.pop(uid, None)
            if rev and capacity:
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


__all__ = ["RecordCache"]
