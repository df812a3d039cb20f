"""How records reach the worker's agent, tuned: batch delivery, fetch wait, event loop, GC.

Every lever here was measured with ``segmenter bench`` (docs/performance.md):

* batch delivery (below): the agent gets whole fetches, not one event per record;
* the fetch long-poll (:class:`BatchConsumerThread`): Tansu answers a waiting
  fetch only when its wait is up, so Faust's fixed 1500 ms was most of the
  end-to-end latency;
* the event loop and a calmer garbage collector are in stream.worker.runtime_tuning.

Batch delivery: a fetch goes to the agent as one event, not one per record.

Why: with stock faust-streaming, every record costs a trip through
``Consumer._drain_messages`` (``wait_first``: four futures per record), the
Conductor (a lock, a decode, a queue put) and the Stream iterator (sensors,
context variables) before ``take()`` puts it in a list again. On this
project's machines that path alone tops out at ~15k records/s, whatever the
agent does (``segmenter bench``, phase B0). Our agent wants lists anyway.

What changes, and only for a channel that opted in with :func:`take_batches`:

* :class:`BatchConsumer` takes each fetch and does upstream ``getmany``'s
  bookkeeping (highwater, read offset, gaps, commit check) once per
  partition; each record becomes one :class:`RawRecord`, in upstream's
  order. It hands them to :meth:`BatchConductor.deliver_batch` in one call,
  still under ``wait_first(..., suspend_flow.wait())``: a delivery blocked on
  a full buffer is still interrupted by a rebalance, as upstream's
  per-record call is.
* :class:`BatchConductor` puts one carrier event (:class:`BatchMessage`) on
  the channel's queue. It honours the same flow control (paused during
  rebalances) and producer back-pressure as upstream's per-record handler,
  and bounds what is buffered to ``stream_buffer_maxsize`` *records*,
  upstream's meaning of the setting.
* :func:`take_batches` yields a :class:`Batch` of the carriers' records, kept
  in the consumer's unacked set by one token (so a rebalance waits for it),
  and :meth:`Batch.ack` does ``Consumer.ack``'s bookkeeping per partition
  (:func:`ack_offsets`): offsets commit exactly as they do upstream. Nothing
  waits for a batch to fill: a batch is what has been fetched (up to
  ``max_``), so batches grow under load and stay small, with low latency,
  when traffic is light.

Everything else (group membership, rebalancing, seeking, commits) is
upstream code, and records of topics no batch agent reads go one by one
through upstream's per-record handler. The carrier is never tracked
and never acked through: a carrier the Stream drops as stale (fetched before
a rebalance) leaves its records unacked, so they are fetched again rather
than committed unprocessed.

How it meets Faust: by subclassing, installed with :func:`install` (the
app's transport is this module's :class:`Transport`); no upstream function
is patched. Acks go through upstream's own ``Consumer.ack``
(:func:`ack_offsets`). One method is overridden with a copy of upstream's
loop, ``Consumer._drain_messages``, because Faust has no hook for handing a
whole fetch on: the hook it has, ``getmany``, is where upstream's drain
keeps each record's read offset and the gaps between them, so a ``getmany``
yielding one carrier per fetch would record one offset per fetch, and the
records in between would count as gaps, committed without being processed.
:meth:`BatchConsumer._deliver_fetch` does that per-record bookkeeping for
the whole fetch instead, and :class:`BatchConductor` reads
``Conductor._tp_index`` to find a partition's channels.

That copy is why pyproject pins faust-streaming to one release, and why
``tests/bench/test_consumer_internals.py`` fails if the upstream methods it
mirrors change.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import faust
from faust.transport.conductor import Conductor
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, EventT, Message
from faust.types.tuples import ack_lock
from mode import Service
from mode.utils.futures import notify

from stream import metrics
from stream.worker.records import RawRecord

log = logging.getLogger(__name__)

#: faust-streaming versions whose internals this module was checked against.
SUPPORTED_FAUST_VERSIONS = ("0.15.3",)


class BatchMessage(Message):
    """The carrier of one delivery: stands for ``records`` in the Stream.

    ``tracked`` is set so the Stream does not add it to the consumer's unacked
    set, and acking it through the Stream is a no-op: only
    :meth:`Batch.ack` moves offsets. :func:`take_batches` also uses one as
    the token that keeps a yielded batch in the consumer's unacked set (a
    rebalance waits for it) until the batch is acked.
    """

    __slots__ = ("records",)

    def __init__(self, records: list[RawRecord], generation_id: int) -> None:
        first, last = records[0], records[-1]
        super().__init__(
            first.topic,
            first.partition,
            last.offset,
            time.time(),
            0,
            None,
            None,
            None,
            None,
            serialized_key_size=0,
            serialized_value_size=0,
            tp=TP(first.topic, first.partition),
            generation_id=generation_id,
        )
        self.records = records
        self.tracked = True

    def on_final_ack(self, consumer: Any) -> bool:
        return False

    def __len__(self) -> int:
        return len(self.records)


def _buffered(queue: Any) -> int:
    """Records waiting in a channel queue (a carrier counts for its records)."""
    # asyncio.Queue keeps its items in ``_queue`` (mode's FlowControlQueue.clear
    # relies on the same attribute).
    n = 0
    for item in queue._queue:
        message = getattr(item, "message", None)
        n += len(message) if isinstance(message, BatchMessage) else 1
    return n


class BatchConductor(Conductor):
    """Conductor that can hand a whole fetch to a channel that asked for batches."""

    def __init__(self, app: Any, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._batch_queues: weakref.WeakSet[Any] = weakref.WeakSet()
        self._taken = asyncio.Event()

    def enable_batches(self, channel: Any) -> None:
        """Deliver whole fetches to ``channel`` (an iterating Topic) as carrier events."""
        self._batch_queues.add(channel.queue)

    def batch_target(self, tp: TP) -> Any | None:
        """The one batch channel reading ``tp``, or None (then upstream delivers it)."""
        channels = self._tp_index.get(tp)
        if not channels or len(channels) != 1:
            return None
        (channel,) = channels
        return channel if channel.queue in self._batch_queues else None

    def notify_taken(self) -> None:
        self._taken.set()

    async def deliver_batch(
        self, channel: Any, records: list[RawRecord], generation_id: int
    ) -> None:
        """Put ``records`` on ``channel`` as one event; wait while its buffer is full."""
        app = self.app
        # The same gates as upstream's per-record handler: nothing is
        # delivered while a rebalance has flow suspended, or while the
        # producer buffer is over its limit.
        await app.flow_control.acquire()
        await app.producer.buffer.wait_until_ebb()
        limit = app.conf.stream_buffer_maxsize
        queue = channel.queue
        while True:
            buffered = _buffered(queue)
            if not buffered or buffered + len(records) <= limit:
                break
            app.sensors.on_topic_buffer_full(TP(records[0].topic, records[0].partition))
            self._taken.clear()
            # Woken by take_batches; the timeout covers a queue cleared by a
            # rebalance (then the consumer's wait_first returns first anyway).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._taken.wait(), 0.1)
        carrier = BatchMessage(records, generation_id)
        event = app.create_event(None, records, None, carrier)
        queue.force_put_nowait(event)


class BatchConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """The thread owning the AIOKafkaConsumer; only its fetch long-poll time differs."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(transport, "fetch_max_wait_ms", None)
        if wait_ms is not None:
            # Faust passes a fixed fetch_max_wait_ms=1500. Tansu answers a
            # waiting fetch only when that time is up, not when a record
            # arrives (measured: median 540 ms from produce to fetch at 1500,
            # 32 ms at 100), which would be most of our end-to-end latency.
            # AIOKafkaConsumer keeps it here until start() builds its Fetcher.
            consumer._fetch_max_wait_ms = wait_ms
        return consumer


class BatchConsumer(faust_aiokafka.Consumer):
    """aiokafka Consumer whose drain loop delivers a fetch per channel, not per record.

    ``_drain_messages`` mirrors faust-streaming 0.15.3's
    ``faust.transport.consumer.Consumer._drain_messages`` line for line, except
    where marked BATCH. With the transport's ``batching`` off it is upstream's.
    """

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return BatchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover
        if not getattr(self.transport, "batching", False):
            await super()._drain_messages(fetcher)
            return
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        flag_consumer_fetching = CONSUMER_FETCHING
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag

        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(flag_consumer_fetching)
                await self.sleep(0)
                if not self.should_stop:
                    # BATCH: upstream's getmany() up to its per-record loop;
                    # the loop itself is _deliver_fetch, per partition.
                    fetched, active = await self._wait_next_records(1.0)
                    if fetched is not None and not self.should_stop:
                        if self.flow_active:
                            await self._deliver_fetch(fetched, active)
                        else:
                            self.log.dev(
                                "getmany called while flow not active. "
                                "Seek back to committed offsets."
                            )
                            try:
                                await self.perform_seek()
                            except Exception as ex:
                                self.log.warning(
                                    f"exception performing seek when flow not active {ex}"
                                )
                unset_flag(flag_consumer_fetching)

        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(flag_consumer_fetching)

    async def _deliver_fetch(self, fetched: Any, active: set[TP] | None) -> None:
        """One fetch to its channels: a batch channel gets its records in one event.

        Upstream's getmany and drain loop do this per record (a highwater
        lookup, a ``ConsumerMessage``, an async generator step and the
        read-offset checks each); here the bookkeeping is per partition and a
        record becomes one :class:`RawRecord`, which is all the agent reads.
        The order within a delivery is upstream's: round robin over topics,
        and within a topic over partitions (``DefaultSchedulingStrategy``).
        """
        app = self.app
        generation = app.consumer_generation_id
        conductor = cast(BatchConductor, app.topics)
        track_end = app.monitor.track_tp_end_offset
        buffered = self._buffered_partitions
        # channel id -> (channel, topic -> one record list per partition)
        deliveries: dict[int, tuple[Any, dict[str, list[list[RawRecord]]]]] = {}
        one_by_one: list[tuple[TP, list[Any]]] = []
        for tp, recs in fetched.items():
            if not recs or not (active is None or tp in active or tp in buffered):
                continue
            track_end(tp, self.highwater(tp))
            recs = await self._advance_read_offset(tp, recs)
            if not recs:
                continue
            channel = conductor.batch_target(tp)
            if channel is None:
                one_by_one.append((tp, recs))
                continue
            topic, partition = tp.topic, tp.partition
            rows = [RawRecord(topic, partition, r.offset, r.key, r.value) for r in recs]
            by_topic = deliveries.setdefault(id(channel), (channel, {}))[1]
            by_topic.setdefault(topic, []).append(rows)
            if app.consumer_generation_id != generation or not self.flow_active:
                break  # a rebalance during the awaits above: as upstream, stop here
        for channel, by_topic in deliveries.values():
            records = _round_robin([_round_robin(parts) for parts in by_topic.values()])
            await self.wait_first(
                conductor.deliver_batch(channel, records, generation), self.suspend_flow.wait()
            )
        # Records of topics no batch agent reads: upstream's per-record delivery.
        for tp, recs in one_by_one:
            for record in recs:
                if app.consumer_generation_id != generation or not self.flow_active:
                    return
                await self.wait_first(
                    self.callback(self._to_message(tp, record)), self.suspend_flow.wait()
                )

    async def _advance_read_offset(self, tp: TP, recs: list[Any]) -> list[Any]:
        """Upstream's per-record read-offset, gap and commit checks, for one partition's
        records (in offset order): returns those not read before."""
        r_offset = self._read_offset[tp]
        if r_offset is not None and recs[0].offset < r_offset:
            recs = [r for r in recs if r.offset >= r_offset]
            if not recs:
                return recs
        if self._commit_every is not None and self._n_acked >= self._commit_every:
            self._n_acked = 0
            await self.commit()
        if self.app.topics.acks_enabled_for(tp.topic):
            first, last = recs[0].offset, recs[-1].offset
            # Contiguous offsets (the usual case): only the first record can
            # follow a gap. Upstream skips a gap after offset 0 (``and r_offset``).
            offsets = [first] if last - first == len(recs) - 1 else [r.offset for r in recs]
            previous = r_offset
            for offset in offsets:
                if previous and offset - previous > 1:
                    await self._add_gap(tp, previous + 1, offset)
                previous = offset
        self._read_offset[tp] = recs[-1].offset
        return recs


_GAP = object()


def _round_robin(lists: list[list[RawRecord]]) -> list[RawRecord]:
    """One item of each list in turn, skipping lists that ran out (Faust's TopicBuffer order)."""
    if len(lists) == 1:
        return lists[0]
    rounds = itertools.zip_longest(*lists, fillvalue=_GAP)
    return [x for group in rounds for x in group if x is not _GAP]  # type: ignore[misc]


class Transport(faust_aiokafka.Transport):
    """The aiokafka transport with :class:`BatchConsumer` and :class:`BatchConductor`."""

    Consumer = BatchConsumer
    Conductor = BatchConductor

    #: Whole fetches to agents that use :func:`take_batches` (else per record).
    batching: bool = True
    #: The consumer's fetch long-poll (None: Faust's 1500 ms).
    fetch_max_wait_ms: int | None = None


def install(app: faust.App, *, batching: bool = True, fetch_max_wait_ms: int | None = None) -> None:
    """Use this module's transport for ``app``'s consumer. Call right after ``faust.App()``.

    Must run before anything touches ``app.topics`` (declaring a topic or an
    agent does): the conductor is built from the transport on first use.
    With ``batching=False`` records reach agents one by one, as upstream.
    """
    if faust.__version__ not in SUPPORTED_FAUST_VERSIONS:
        log.warning(
            "faust-streaming %s: the batching consumer was checked against %s only",
            faust.__version__,
            ", ".join(SUPPORTED_FAUST_VERSIONS),
        )
    if "topics" in vars(app):  # mode's cached_property keeps the conductor there
        raise RuntimeError("install() must run before app.topics is used")
    transport = Transport(app.conf.broker_consumer, app)
    transport.batching = batching
    transport.fetch_max_wait_ms = fetch_max_wait_ms
    app.transport = transport


class Batch:
    """One delivery to a batch agent: its records, and the way to ack them.

    ``records`` are :class:`RawRecord` tuples (topic, partition, offset, key,
    value). Ack them, all or some, with :meth:`ack` once they are applied:
    only acked records' offsets are ever committed.
    """

    __slots__ = ("_events", "_left", "_messages", "_stream", "_token", "records")

    def __init__(
        self,
        stream: Any,
        records: list[RawRecord],
        *,
        events: list[EventT] | None = None,
        token: BatchMessage | None = None,
        messages: list[Message] | None = None,
    ) -> None:
        self._stream = stream
        self.records = records
        #: On stock Faust the records came as Stream events, acked through it.
        self._events = events
        #: Batching transport: keeps the batch in the consumer's unacked set.
        self._token = token
        #: Records delivered one by one (before batches were enabled): tracked
        #: by the Stream as messages, so marked acked as messages too.
        self._messages = messages or []
        #: (topic, partition, offset) not acked yet, once only some have been.
        self._left: set[tuple[str, int, int]] | None = None

    def __len__(self) -> int:
        return len(self.records)

    async def ack(self, records: Sequence[RawRecord] | None = None) -> None:
        """Ack ``records`` (default: the whole batch)."""
        wanted = None if records is None else {(r.topic, r.partition, r.offset) for r in records}
        if self._events is not None:
            for event in self._events:
                m = event.message
                if wanted is None or (m.topic, m.partition, m.offset) in wanted:
                    await self._stream.ack(event)
            return
        # Batching transport: straight to the consumer's offset bookkeeping,
        # per partition. Stream.ack would add a Faust Event, a reference count
        # and four sensor calls per record; the records never went through the
        # Stream, so there is nothing else to undo.
        consumer = self._stream.app.consumer
        ack_offsets(consumer, self.records if records is None else records)
        for m in self._messages:
            if wanted is None or (m.topic, m.partition, m.offset) in wanted:
                m.acked = True
                consumer.unacked.discard(m)
        if wanted is not None:
            if self._left is None:
                self._left = {(r.topic, r.partition, r.offset) for r in self.records}
            self._left -= wanted
            if self._left:
                return
        token = self._token
        if token is not None and not token.acked:
            token.acked = True
            consumer.unacked.discard(token)
            notify(consumer._waiting_for_ack)

    def abandon(self) -> None:
        """Give the batch up unapplied (the worker is stopping): out of the unacked
        set, so the consumer's stop does not wait on it for ever, and never acked,
        so no offset of it is committed: the next owner reads it again."""
        consumer = self._stream.app.consumer
        held = [e.message for e in self._events or ()] + self._messages
        for m in [*held, self._token] if self._token is not None else held:
            consumer.unacked.discard(m)
        notify(consumer._waiting_for_ack)


class _AckedRecord:
    """What ``Consumer.ack`` reads of a message, for one record at a time.

    Upstream's ack takes a Message; building one per record (with its
    headers, timestamps and refcount) would cost more than the ack itself, so
    one of these is filled in and handed over per record.
    """

    __slots__ = ("__weakref__", "acked", "offset", "topic", "tp")

    def __init__(self) -> None:
        self.acked = False
        self.topic = ""
        self.tp: TP | None = None
        self.offset = -1


def ack_offsets(consumer: Any, records: Sequence[RawRecord]) -> int:
    """Ack many records through upstream's own ``Consumer.ack``; return how many were new.

    One ``ack_lock`` hold for the batch (the lock is reentrant, so each
    ``ack`` inside re-enters it cheaply). Upstream keeps all the bookkeeping:
    offsets of topics without acks, below the committed offset or acked
    before are left out exactly as for a record delivered one by one.
    """
    ack = consumer.ack
    message = _AckedRecord()
    tps: dict[tuple[str, int], TP] = {}
    new = 0
    with ack_lock:
        for r in records:
            tp = tps.get((r.topic, r.partition))
            if tp is None:
                tp = tps[(r.topic, r.partition)] = TP(r.topic, r.partition)
            message.acked = False
            message.topic = r.topic
            message.tp = tp
            message.offset = r.offset
            new += ack(message)
    return new


async def take_batches(stream: Any, max_: int, within: float) -> AsyncIterator[Batch]:
    """Batches of records, like ``stream.noack_take(max_, within)``; ack them yourself.

    On the batching transport a batch is whatever has been fetched, up to
    ``max_`` records (``within`` is not needed: nothing waits for a batch to
    fill). On any other transport this is ``stream.noack_take``.
    """
    app = stream.app
    conductor = app.topics
    if not isinstance(conductor, BatchConductor) or not getattr(app.transport, "batching", False):
        async for events in stream.noack_take(max_, within=within):
            messages = [e.message for e in events]
            records = [RawRecord(m.topic, m.partition, m.offset, m.key, m.value) for m in messages]
            yield Batch(stream, records, events=events)
        return
    conductor.enable_batches(stream.channel)
    stream.enable_acks = False  # the caller acks each record, after applying it
    queue = stream.channel.queue
    consumer = app.consumer
    unacked = consumer.unacked
    # Deliveries not yet handed over: (generation, records, the message when
    # it came one by one), oldest first.
    pending: collections.deque[tuple[int | None, list[RawRecord], Message | None]] = (
        collections.deque()
    )
    n_pending = 0
    it = stream.__aiter__()
    while True:
        while not n_pending or (n_pending < max_ and not queue.empty()):
            idle = not n_pending and queue.empty()
            waited_from = time.perf_counter()
            try:
                await it.__anext__()
            except StopAsyncIteration:
                # The stream stopped (shutdown, agent restart): what is still
                # pending stays unacked and is read again, as with noack_take.
                return
            if idle:
                metrics.AGENT_WAIT_SECONDS.observe(time.perf_counter() - waited_from)
            event = stream.current_event
            conductor.notify_taken()
            if event is None:
                continue
            carrier = event.message
            if isinstance(carrier, BatchMessage):
                pending.append((carrier.generation_id, carrier.records, None))
                n_pending += len(carrier.records)
                continue
            # Delivered before we enabled batches: the Stream has tracked it
            # as unacked already (as for any record of an acking topic).
            if not carrier.tracked:
                carrier.tracked = True
                unacked.add(carrier)
            record = RawRecord(
                carrier.topic, carrier.partition, carrier.offset, carrier.key, carrier.value
            )
            pending.append((carrier.generation_id, [record], carrier))
            n_pending += 1
        generation = app.consumer_generation_id
        batch: list[RawRecord] = []
        one_by_one: list[Message] = []
        while pending and len(batch) < max_:
            gen, records, message = pending.popleft()
            n_pending -= len(records)
            if gen != generation:
                # Fetched before a rebalance and not yet handed over: dropped
                # unacked (the Stream does the same with stale events it
                # reads); whoever owns their partitions now reads them again.
                if message is not None:
                    unacked.discard(message)
                continue
            room = max_ - len(batch)
            if len(records) > room:  # the rest waits for the next batch
                pending.appendleft((gen, records[room:], message))
                n_pending += len(records) - room
                records = records[:room]
            batch.extend(records)
            if message is not None:
                one_by_one.append(message)
        if not batch:
            continue
        # Tracked as unacked, as the Stream tracks each record it yields
        # upstream: a rebalance then waits for this batch's ack before
        # committing. (Faust's sensors do not see these records: our own
        # Prometheus metrics count them.)
        token = BatchMessage(batch, generation)  # tracked, not yet acked
        unacked.add(token)
        yield Batch(stream, batch, token=token, messages=one_by_one)
