"""The clock of each partition number just before each event of a batch (stream.core.clock)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from stream.core.clock import partition_clocks, partition_of
from stream.worker.records import RawRecord


class BatchClocks:
    """The clock of each partition number just before each event of a batch.

    stream.core.clock's rule, walked through the batch in its order: a
    topic-partition counts as unread while it has records later in this batch
    or on the broker past it; the event's own counts too (it is not applied
    yet). ``running`` is the caller's per topic-partition time, which it
    advances after each event.
    """

    def __init__(
        self,
        running: dict[str, int],
        records: Sequence[RawRecord],
        unread_after: Callable[[str, int | None], bool],
    ) -> None:
        self._running = running
        self._left: Counter[str] = Counter(r.tp for r in records)
        last: dict[str, int] = {}
        for r in records:
            last[r.tp] = max(last.get(r.tp, -1), r.offset)
        self._by_number: dict[int, tuple[str, ...]] = {}
        for tp in {*running, *last}:
            p = partition_of(tp)
            self._by_number[p] = (*self._by_number.get(p, ()), tp)
        #: Decided once, at the start: what the consumer has not handed over yet.
        self._beyond = {tp for tp in {*running, *last} if unread_after(tp, last.get(tp))}

    def before(self, tp: str, partition: int) -> int:
        self._left[tp] -= 1
        tps = self._by_number[partition]
        if len(tps) == 1:  # one input topic on this partition: its own time
            return self._running.get(tp, 0)
        times = {t: self._running.get(t, 0) for t in tps}
        unread = [t for t in tps if t == tp or self._left[t] > 0 or t in self._beyond]
        return partition_clocks(times, unread).get(partition, 0)
