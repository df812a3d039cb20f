"""The clock of each partition number just before each event of a batch (stream.core.clock)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from stream.core.clock import partition_clocks, partition_of, two_topic_clock
from stream.worker.records import RawRecord
from stream.worker.state.store import StateStore
from stream.worker.web.health import Health


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
        #: Each record's "topic:partition", built once (the caller reads it too).
        self.names = names = [r.tp for r in records]
        self._left: Counter[str] = Counter(names)
        last: dict[str, int] = {}
        for tp, r in zip(names, records, strict=True):
            last[tp] = max(last.get(tp, -1), r.offset)
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
        if len(tps) == 2:  # clicks and orders: the rule without building maps
            other = tps[1] if tps[0] == tp else tps[0]
            return two_topic_clock(
                self._running.get(tp, 0),
                self._running.get(other, 0),
                self._left[other] > 0 or other in self._beyond,
            )
        times = {t: self._running.get(t, 0) for t in tps}
        unread = [t for t in tps if t == tp or self._left[t] > 0 or t in self._beyond]
        return partition_clocks(times, unread).get(partition, 0)


class Clocks:
    """What the processor knows to run stream.core.clock: the per topic-partition
    times (in Redis), what is applied of each, and the consumer's end offsets."""

    def __init__(
        self,
        store: StateStore,
        highwater: Callable[[str], int | None] | None,
        health: Health | None,
    ) -> None:
        self._store = store
        #: The next offset the broker will write, per "topic:partition" as the
        #: consumer last heard (None = not known).
        self._highwater = highwater
        self._health = health
        #: Highest offset applied per "topic:partition": from each commit, and
        #: from Redis at each sweep (another worker may have applied them).
        self._marks: dict[str, int] = {}

    async def start(self) -> None:
        """Once per process: what earlier processes applied."""
        if not self._marks and self._highwater is not None:
            await self._refresh()

    async def _refresh(self) -> None:
        for tp, off in (await self._store.partition_offsets()).items():
            self._marks[tp] = max(self._marks.get(tp, -1), off)

    def applied(self, partition_offsets: dict[str, int]) -> None:
        """A batch committed up to these offsets."""
        for tp, off in partition_offsets.items():
            self._marks[tp] = max(self._marks.get(tp, -1), off)

    def unread_after(self, tp: str, upto: int | None) -> bool:
        """Whether ``tp`` holds records past offset ``upto`` and past what is applied.

        Unknown (no consumer, or it has not heard from the partition yet)
        counts as nothing to read: the clock then falls back to the largest
        time applied, as it would with a single input topic.
        """
        high = self._highwater(tp) if self._highwater is not None else None
        if high is None:
            return False
        done = self._marks.get(tp, -1)
        return high > max(done, -1 if upto is None else upto) + 1

    def batch(self, running: dict[str, int], records: Sequence[RawRecord]) -> BatchClocks:
        return BatchClocks(running, records, self.unread_after)

    async def until(self, part: int) -> int:
        """The clock of partition number ``part`` now, for its sweep."""
        times = await self._store.partition_times()
        await self._refresh()
        assigned = self._health.assigned if self._health is not None else ()
        tps = {tp for tp in (*times, *assigned) if partition_of(tp) == part}
        unread = {tp for tp in tps if self.unread_after(tp, None)}
        return partition_clocks({tp: times.get(tp, 0) for tp in tps}, unread).get(part, 0)
