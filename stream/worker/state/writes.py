"""A batch's writes, encoded as the commit script's calls (pure: no Redis here).

stream.worker.state.store sends what :func:`encode_commit` builds; the script is
stream.worker.state.scripts.COMMIT_LUA, and its argument layout is described there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple
from zlib import crc32

from stream.worker.state.keys import AUDIENCE_PREFIX, GROUPS, MEMBER_SHARDS, KeyLayout
from stream.worker.state.record_codec import UserRecord, encode_record, next_rev

REV_BYTES = 4  # a stored record starts with its revision (stream.worker.state.record_codec)


class ScriptCall(NamedTuple):
    keys: list[str]
    args: list[Any]


class PreparedCommit(NamedTuple):
    """A batch's commit, encoded and not yet sent: the script calls, in order.

    One call on a single Redis; on a cluster, one per hash-tag group of users
    and then the clock's (``clock``, None if there is nothing to advance)."""

    groups: list[ScriptCall]
    clock: ScriptCall | None
    #: Per user written: (user id, record, the revision stored (0 = erased), its
    #: stored size), for stream.worker.state.record_cache once the commit succeeded.
    written: list[tuple[str, UserRecord, int, int]]


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


def index_moves(
    old_segment: str | None,
    new_segment: str | None,
    old_audiences: Sequence[str],
    new_audiences: Sequence[str],
    clean: Sequence[str] = (),
) -> list[tuple[str, str]]:
    """The index moves of one write, in order: ('-', name) out, ('+', name) in.

    ``clean`` names indexes to leave first whatever the stored record says (a
    new record whose earlier life expired with its bucket may still be listed).
    An audience's index name is ``a:<audience>``."""
    moves = [("-", name) for name in clean]
    if old_segment != new_segment:
        if old_segment:
            moves.append(("-", old_segment))
        if new_segment:
            moves.append(("+", new_segment))
    if tuple(old_audiences) != tuple(new_audiences):
        gone, came = (
            set(old_audiences) - set(new_audiences),
            set(new_audiences) - set(old_audiences),
        )
        moves += [("-", AUDIENCE_PREFIX + a) for a in sorted(gone)]
        moves += [("+", AUDIENCE_PREFIX + a) for a in sorted(came)]
    return moves


def encode_commit(
    layout: KeyLayout,
    cluster: bool,
    writes: Iterable[UserWrite],
    partition_offsets: dict[str, int],
    stream_time: int,
    ttl_ms: int,
    partition_times: dict[str, int],
    clean: Sequence[str],
) -> PreparedCommit:
    """A batch's commit as script calls (stream.worker.state.scripts.COMMIT_LUA): one
    in all on a single Redis, one per hash-tag group and then the clock's on a
    cluster. ``clean`` names the indexes a new record is taken out of first."""
    head: list[Any] = [stream_time, len(partition_offsets), len(partition_times)]
    for tp, off in partition_offsets.items():
        head += [tp, off]
    for part, t in partition_times.items():
        head += [part, t]
    clock_keys = [layout.offsets, layout.ptime, layout.stream_time]
    # Per hash-tag group: (keys, args, users). One loop, no call per user
    # beyond the record's encoding: this runs for every user of every batch.
    calls: dict[int, tuple[list[Any], list[Any], list[int]]] = {}
    # A new record is first taken out of every index named in ``clean``.
    buckets, n_buckets = layout.bucket_keys, layout.buckets
    written: list[tuple[str, UserRecord, int, int]] = []
    for w in writes:
        rec, uid = w.record, w.user_id
        h = crc32(uid.encode())
        g, shard = h % GROUPS, h % MEMBER_SHARDS
        keys, args, n = calls.get(g if cluster else 0) or calls.setdefault(
            g if cluster else 0, ([], [], [0])
        )
        n[0] += 1
        erase = w.erase
        moves = index_moves(
            w.old_segment,
            None if erase else rec.segment,
            w.old_audiences,
            () if erase else rec.audiences,
            clean if clean and not rec.exists else (),
        )
        bucket = buckets[h % n_buckets]
        new_part, new_due = rec.partition, 0 if erase else rec.due
        old_day = new_day = ""
        due_arg: Any = ""
        old_set = old_slots = new_set = new_slots = bucket  # unused places in the key block
        if w.old_partition != new_part or w.old_due != new_due:
            if w.old_partition != -1 and w.old_due > 0:
                old_set, old_slots, day = layout.group_schedule(g, w.old_partition, w.old_due)
                old_day = str(day)
            if new_part != -1 and new_due > 0:
                new_set, new_slots, day = layout.group_schedule(g, new_part, new_due)
                new_day, due_arg = str(day), new_due
        keys += (bucket, layout.counts(g), old_set, old_slots, new_set, new_slots)
        if moves:
            keys += [layout.members(name)[shard] for _, name in moves]
        rev = 0 if erase else next_rev(rec.rev)
        stored = b"" if erase else encode_record(rec, rev=rev)
        written.append((uid, rec, rev, len(stored)))
        args += (
            uid,
            rec.rev.to_bytes(REV_BYTES, "little") if rec.exists else b"",
            stored,
            old_day,
            due_arg,
            new_day,
            " ".join(sign + name for sign, name in moves) if moves else "",
            len(moves),
        )
    if not cluster:
        keys, args, n = calls.get(0, ([], [], [0]))
        return PreparedCommit(
            [ScriptCall(clock_keys + keys, [ttl_ms, n[0], *head, *args])], None, written
        )
    groups = [ScriptCall(keys, [ttl_ms, n[0], "", 0, 0, *args]) for keys, args, n in calls.values()]
    advance = partition_offsets or partition_times or stream_time
    clock = ScriptCall(clock_keys, [0, 0, *head]) if advance else None
    return PreparedCommit(groups, clock, written)
