"""Stream time per partition number, across the input topics that share it.

A user's clicks and orders sit on partition *p* of two topics (keyed by user
id, one partitioner), and the time-driven steps of the users of *p* (the
inactivity re-scores, retention) run on one clock for *p*. The consumer reads
the two topic-partitions independently: in a replay or a catch-up, one of them
can be days of event time ahead of the other. Had the clock been the largest
event time read from either, a buyer whose later orders were still unread
would be judged inactive as of a click read far ahead on the other topic, and
published `at_risk` before those orders arrived: the changes would depend on
how the topics interleave, not on what happened.

So the clock of *p* is the largest event time applied from its topic-partitions,
but never past one that still has records to read: there, the time of its
latest applied record (0 if none yet). This is what Kafka Streams does when it
waits for a partition with buffered or fetchable data before advancing its
task's time. A topic-partition that has nothing left to read (an idle orders
partition in a quiet shop) holds nothing back. Pure, so both the batch path
and the sweep use it (``stream/worker/pipeline.py``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping


def partition_of(tp: str) -> int:
    """The partition number of ``"topic:partition"``."""
    return int(tp.rsplit(":", 1)[1])


def partition_clocks(times: Mapping[str, int], unread: Collection[str]) -> dict[int, int]:
    """Stream time per partition number.

    ``times``: per ``"topic:partition"``, the largest event time applied from it.
    ``unread``: the topic-partitions known to hold records not applied yet.
    A partition number appears in the result once any of its topic-partitions
    has a time.
    """
    top: dict[int, int] = {}
    for tp, t in times.items():
        p = partition_of(tp)
        if t > top.get(p, 0) or p not in top:
            top[p] = t
    for tp in unread:
        p = partition_of(tp)
        if p in top:
            top[p] = min(top[p], times.get(tp, 0))
    return top


def two_topic_clock(own: int, other: int, other_unread: bool) -> int:
    """:func:`partition_clocks` for a partition number read from two
    topic-partitions (clicks and orders), asked before a record of the first.

    ``own`` and ``other`` are the two largest applied times (0 if none). The
    record's own topic-partition still has it to read, so the clock is held at
    ``own``; the other holds it back only while it has records left. The
    worker asks this before every event, where the general form (names parsed,
    maps built) cost about 6% of its time; ``tests/stream/test_clock.py``
    pins the two together.
    """
    if other_unread and other < own:
        return other
    return own
