"""What a batch holds while it is processed: each touched user's timeline of
steps, the result, and whether a user record already counts an event."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from stream.core.dedup import admit
from stream.core.events import Fact
from stream.worker.state.record_codec import UserRecord


class Step(NamedTuple):
    """A point on a user's timeline where the change rule is applied."""

    at: int  # event time
    #: "audience": a re-evaluation of the rule audiences only, where a condition
    #: on a clock feature can flip (stream.worker.rules.audiences.Audiences.clock_offsets);
    #: segments are decided at the other steps only, as without audiences.
    trigger: Literal["events", "inactivity", "retention", "audience"]
    row: int  # into the batch's stacked feature matrix; -1 for retention erasure


@dataclass(slots=True)
class Timeline:
    """One user's record through a batch, and the steps taken on it, in order."""

    record: UserRecord
    old_segment: str | None
    old_partition: int
    old_due: int
    steps: list[Step] = field(default_factory=list)
    #: The audiences the stored record was in (the index moves from these).
    old_audiences: tuple[str, ...] = ()


@dataclass
class BatchResult:
    records: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    changes: list[dict[str, Any]] = field(default_factory=list)
    users: int = 0
    attempts: int = 1


def merged(a: BatchResult, b: BatchResult) -> BatchResult:
    return BatchResult(
        records=a.records + b.records,
        applied=a.applied + b.applied,
        duplicates=a.duplicates + b.duplicates,
        dead_lettered=a.dead_lettered + b.dead_lettered,
        changes=a.changes + b.changes,
        users=a.users + b.users,
        attempts=a.attempts + b.attempts,
    )


def redelivered(rec: UserRecord, tp: str, offset: int) -> bool:
    """Whether ``rec`` already holds this very record (at or below its partition's mark)."""
    return offset <= rec.offsets.get(tp, -1)


def known(
    rec: UserRecord,
    tp: str,
    offset: int,
    event: Fact,
    click_window_ms: int,
    order_memory_ms: int,
) -> bool:
    """Whether ``rec`` already counts ``event``, as a redelivery or a re-send; changes nothing."""
    return redelivered(rec, tp, offset) or not admit(
        rec.seen.copy(), event, rec.state.last_seen, click_window_ms, order_memory_ms
    )
