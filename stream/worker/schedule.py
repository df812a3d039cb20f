"""When a user's next time-driven step falls: a re-score after inactivity, a
re-evaluation of the rule audiences, or erasure by retention."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from stream.core.fold import UserState
from stream.worker.rules.audiences import Audiences


def next_due(
    state: UserState,
    at_ms: int,
    step_offsets: Sequence[int],
    audiences: Audiences | None,
    retention_ms: int,
) -> int:
    """Event time of the next time-driven step after ``at_ms`` (0 = none left).

    A function of the user's state and the audiences file only, never of
    the user's memberships: then a replay in any batches takes the same
    steps as living through the stream.
    """
    last_seen, due = state.last_seen, 0
    for offset in step_offsets:
        if last_seen + offset > at_ms:
            due = last_seen + offset
            break
    if audiences is None or not audiences.clock_offsets:
        return due
    for field_name, offsets in audiences.clocks:
        anchor = getattr(state, field_name)
        if anchor is None:  # never ordered: that clock never reaches a threshold
            continue
        k = bisect.bisect_right(offsets, at_ms - anchor)  # the first one still ahead
        if k < len(offsets):
            t = anchor + offsets[k]
            if due == 0 or t < due:
                due = t
    if retention_ms > 0:
        due = min(due, last_seen + retention_ms) if due else due
    return due
