"""A batch's commit order, owned in one place.

The order that keeps the worker's guarantees (docs/architecture.md):

1. **dead letters**, acknowledged by the broker (:meth:`Checkpoint.dead_letter`);
2. **the batch's changes**, acknowledged by the broker;
3. **the users' state** in Redis: records with their offset marks and
   deduplication memory, schedule, indexes, stream time (one script, or one
   per hash-tag group on a cluster: stream.worker.state.store);
4. the caller **acks** the batch's records, and Faust commits their offsets.

Steps 2 and 3 are :meth:`Checkpoint.commit`. A crash before 3 replays the
batch from the old state: its changes are published again with the same
per-user versions (at least once), and its state is written once (the offset
marks make the replay a no-op for users already written). Nothing is acked
before 3, so no offset passes an event that is not in Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from stream import metrics
from stream.sinks import Outgoing
from stream.worker.state.store import PreparedCommit, StateStore


class Sink(Protocol):
    """Where messages go: ``publish`` produces them in order and resolves once the
    broker has every one (:class:`stream.sinks.ConfluentSink`)."""

    def publish(self, records: Sequence[Outgoing]) -> Awaitable[Any]: ...


class Checkpoint:
    """Publishes and commits a batch in the order above."""

    def __init__(self, sink: Sink, store: StateStore) -> None:
        self.sink = sink
        self.store = store

    async def dead_letter(self, letters: Sequence[Outgoing]) -> None:
        """Step 1: the rejects, acknowledged by the broker."""
        if letters:
            await self.sink.publish(letters)

    async def commit(
        self, changes: Sequence[Outgoing], prepare: Callable[[], PreparedCommit]
    ) -> None:
        """Steps 2 and 3: the changes, then, once the broker has every one, the state.

        ``prepare`` encodes the state's commit; it runs while the broker
        acknowledges the changes (librdkafka sends them from its own threads),
        and nothing it encodes is written before they are acknowledged.
        """
        # A future (a task if the sink returned a coroutine), so it can be cancelled.
        acked = asyncio.ensure_future(self.sink.publish(changes)) if changes else None
        t_pub = time.perf_counter()
        try:
            prepared = prepare()
        except BaseException:
            if acked is not None:
                acked.cancel()  # the batch re-runs; nobody will await this one
            raise
        if acked is not None:
            await acked
            # From the end of producing to the last acknowledgement (or to the
            # end of the encoding above, which overlaps it).
            metrics.PUBLISH_SECONDS.observe(time.perf_counter() - t_pub)
        t_commit = time.perf_counter()
        await self.store.send_commit(prepared)
        metrics.REDIS_SECONDS.labels("commit").observe(time.perf_counter() - t_commit)
