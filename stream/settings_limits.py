"""Limits a single setting has because of how the service stores what it reads.

Kept apart from :mod:`stream.settings` (near its size limit); each check
raises ``ValueError`` with what to set instead, which the settings report as
one line naming the variable.
"""

from __future__ import annotations


def event_time_floor(ms: int) -> int:
    """SEGMENTER_MIN_EVENT_TIME: not before 1970-01-01T00:00:00Z.

    A user's deduplication memory files clicks by hour and orders by day
    counted from the Unix epoch (stream.core.dedup), as unsigned numbers: an
    event before it would fail every batch that holds it.
    """
    if ms < 0:
        raise ValueError(
            "must be 1970-01-01 or later (event hours are counted from the Unix epoch); "
            "set it to 1970-01-01 or a later date"
        )
    return ms
