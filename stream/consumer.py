"""How records reach the worker's agent, tuned: batch delivery, fetch wait, event loop, GC.

Every lever here was measured with ``segmenter bench`` (README "Performance"):

* batch delivery (below): the agent gets whole fetches, not one event per record;
* the fetch long-poll (:class:`BatchConsumerThread`): Tansu answers a waiting
  fetch only when its wait is up, so Faust's fixed 1500 ms was most of the
  end-to-end latency;
* the event loop (:func:`use_event_loop`) and a calmer garbage collector
  (:func:`tune_gc_on_start`).

Batch delivery: a fetch goes to the agent as one event, not one per record.

Why: with stock faust-streaming, every record costs a trip through
``Consumer._drain_messages`` (``wait_first``: four futures per record), the
Conductor (a lock, a decode, a queue put) and the Stream iterator (sensors,
context variables) before ``take()`` puts it in a list again. On this
project's machines that path alone tops out at ~15k records/s, whatever the
agent does (``segmenter bench``, phase B0). Our agent wants lists anyway.

What changes, and only for a channel that opted in with :func:`take_batches`:

* :class:`BatchConsumer` collects the records of one ``getmany`` and hands
  them to :meth:`BatchConductor.deliver_batch` in one call, still under
  ``wait_first(..., suspend_flow.wait())``: a delivery blocked on a full
  buffer is still interrupted by a rebalance, as upstream's per-record call is.
* :class:`BatchConductor` puts one carrier event (value: the list of
  ``ConsumerMessage``) on the channel's queue. It honours the same flow
  control (paused during rebalances) and producer back-pressure as
  upstream's per-record handler, and bounds what is buffered to
  ``stream_buffer_maxsize`` *records*, upstream's meaning of the setting.
* :func:`take_batches` unpacks carriers into ordinary ``faust.Event`` objects,
  one per record, tracked as unacked (so a rebalance waits for them) and
  acked one by one with ``stream.ack(event)``: offsets commit exactly as they
  do upstream. Nothing waits for a batch to fill: a batch is what has been
  fetched (up to ``max_``), so batches grow under load and stay small, with
  low latency, when traffic is light.

Everything else (group membership, rebalancing, seeking, commits, records of
topics no batch agent reads) is upstream code. The carrier is never tracked
and never acked through: a carrier the Stream drops as stale (fetched before
a rebalance) leaves its records unacked, so they are fetched again rather
than committed unprocessed.

This reaches into faust-streaming internals (``Consumer._drain_messages``,
``Conductor._tp_index``), so pyproject pins faust-streaming to the versions
it was checked against, and ``tests/bench/test_consumer_internals.py`` fails
if the upstream methods it mirrors change. Installed with :func:`install`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
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
from mode import Service

from stream import metrics

log = logging.getLogger(__name__)

#: faust-streaming versions whose internals this module was checked against.
SUPPORTED_FAUST_VERSIONS = ("0.15.3",)


class BatchMessage(Message):
    """The carrier of one delivery: stands for ``messages`` in the Stream.

    ``tracked`` is set so the Stream does not add it to the consumer's unacked
    set (its records are tracked one by one), and acking it is a no-op: only
    the records' own acks move offsets.
    """

    __slots__ = ("messages",)

    def __init__(self, messages: Sequence[Message]) -> None:
        first, last = messages[0], messages[-1]
        super().__init__(
            first.topic,
            first.partition,
            last.offset,
            first.timestamp,
            first.timestamp_type,
            None,
            None,
            None,
            None,
            serialized_key_size=0,
            serialized_value_size=0,
            tp=first.tp,
            generation_id=first.generation_id,
        )
        self.messages = messages
        self.tracked = True

    def on_final_ack(self, consumer: Any) -> bool:
        return False

    def __len__(self) -> int:
        return len(self.messages)


_UNKNOWN = object()


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

    async def deliver_batch(self, channel: Any, messages: list[Message]) -> None:
        """Put ``messages`` on ``channel`` as one event; wait while its buffer is full."""
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
            if not buffered or buffered + len(messages) <= limit:
                break
            app.sensors.on_topic_buffer_full(messages[0].tp)
            self._taken.clear()
            # Woken by take_batches; the timeout covers a queue cleared by a
            # rebalance (then the consumer's wait_first returns first anyway).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._taken.wait(), 0.1)
        carrier = BatchMessage(messages)
        event = app.create_event(None, messages, None, carrier)
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
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set

        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        flag_consumer_fetching = CONSUMER_FETCHING
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        conductor = cast(BatchConductor, self.app.topics)
        batch_target = conductor.batch_target

        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep

        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(flag_consumer_fetching)
                ait = cast(AsyncIterator, getmany(timeout=1.0))

                await self.sleep(0)
                if not self.should_stop:
                    # BATCH: records for batch channels are collected per
                    # channel for the whole fetch and delivered after it.
                    batches: dict[int, tuple[Any, list[Message]]] = {}
                    targets: dict[TP, Any] = {}  # batch_target per partition, this fetch
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0

                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset:
                                acks_enabled = acks_enabled_for(message.topic)
                                if acks_enabled:
                                    await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            channel = targets.get(tp, _UNKNOWN)
                            if channel is _UNKNOWN:
                                channel = targets[tp] = batch_target(tp)
                            if channel is None:
                                await self.wait_first(callback(message), self.suspend_flow.wait())
                            else:
                                key = id(channel)
                                if key not in batches:
                                    batches[key] = (channel, [])
                                batches[key][1].append(message)
                            # BATCH: set now, not after the delivery below, so
                            # the next record of this partition is not a "gap".
                            # (Upstream too sets it whether or not a rebalance
                            # interrupted the delivery: a rebalance seeks anyway.)
                            set_read_offset(tp, offset)
                        else:
                            self.log.dev(
                                "DROPPED MESSAGE ROFF %r: k=%r v=%r",
                                offset,
                                message.key,
                                message.value,
                            )
                    for channel, messages in batches.values():
                        await self.wait_first(
                            conductor.deliver_batch(channel, messages), self.suspend_flow.wait()
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


def use_event_loop(name: str) -> str:
    """Make ``name`` ("uvloop" or "asyncio") the event loop of loops created from now on.

    Call before anything creates a loop (the Faust worker creates its own, and
    its consumer thread another, after ``create_app``). Measured with
    ``segmenter bench``, three runs each: uvloop 16.1k-17.9k ev/s, asyncio
    17.6k-18.8k ev/s, so asyncio is the default; uvloop stays one setting
    away for machines where it wins. Returns the loop in use.
    """
    if name != "uvloop":
        return "asyncio"
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:  # a loop already runs this code: switching now would split the app over two
        log.warning("event loop already running; uvloop not installed")
        return "asyncio"
    try:
        import uvloop
    except ImportError:  # e.g. Windows: uvloop does not build there
        log.warning("uvloop is not installed; using asyncio's event loop")
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def tune_gc_on_start(app: faust.App, gen0_threshold: int) -> None:
    """Once the worker has started: freeze start-up objects, collect young ones less often.

    Measured (``segmenter bench``, py-spy): with Python's default threshold of
    700 allocations, each batch's records outlive a few young collections, get
    promoted, and trigger full collections that walk every object the worker
    holds (model, pydantic, Faust) many times a second. ``gc.freeze()`` takes
    the start-up objects out of collection for good; a larger young threshold
    lets a batch's garbage die young. Reference cycles are still collected.
    0 leaves the interpreter's defaults.
    """
    if gen0_threshold <= 0:
        return

    async def tune_gc() -> None:
        gc.collect()
        gc.freeze()
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(gen0_threshold, gen1, gen2)
        log.info(
            "gc: %d start-up objects frozen, young threshold %d (event loop: %s)",
            gc.get_freeze_count(),
            gen0_threshold,
            type(asyncio.get_running_loop()).__module__,
        )

    app.task(tune_gc)


class Batch:
    """One delivery to a batch agent: its records, and the way to ack them.

    ``records`` are Faust ``Message`` objects (topic, partition, offset, key,
    value). Ack them, all or some, with :meth:`ack` once they are applied:
    only acked records' offsets are ever committed.
    """

    __slots__ = ("_events", "_stream", "records")

    def __init__(
        self, stream: Any, records: list[Message], events: list[EventT] | None = None
    ) -> None:
        self._stream = stream
        self.records = records
        #: On stock Faust the records came as Stream events, acked through it.
        self._events = events

    def __len__(self) -> int:
        return len(self.records)

    async def ack(self, records: Sequence[Message] | None = None) -> None:
        """Ack ``records`` (default: the whole batch)."""
        if self._events is not None:
            wanted = None if records is None else {id(m) for m in records}
            for event in self._events:
                if wanted is None or id(event.message) in wanted:
                    await self._stream.ack(event)
            return
        # Batching transport: straight to the consumer's offset bookkeeping.
        # Stream.ack would add a Faust Event, a reference count and four
        # sensor calls per record (py-spy: ~6% of the worker); the records
        # never went through the Stream, so there is nothing else to undo.
        ack = self._stream.app.consumer.ack
        for message in self.records if records is None else records:
            ack(message)


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
            yield Batch(stream, [e.message for e in events], events)
        return
    conductor.enable_batches(stream.channel)
    stream.enable_acks = False  # the caller acks each record, after applying it
    queue = stream.channel.queue
    consumer = app.consumer
    add_unacked = consumer.unacked.add
    pending: list[Message] = []
    it = stream.__aiter__()
    while True:
        while not pending or (len(pending) < max_ and not queue.empty()):
            idle = not pending and queue.empty()
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
            if not isinstance(carrier, BatchMessage):
                # Delivered before we enabled batches: the Stream has tracked
                # it as unacked already (as for any record of an acking
                # topic); the caller acks it with the rest of its batch.
                if not carrier.tracked:
                    carrier.tracked = True
                    add_unacked(carrier)
                pending.append(carrier)
                continue
            for message in carrier.messages:
                # Tracked as unacked, as the Stream tracks each record it
                # yields upstream: a rebalance then waits for these acks
                # before committing. (Faust's sensors do not see them: our
                # own Prometheus metrics count records.)
                if not message.tracked:
                    message.tracked = True
                    add_unacked(message)
                pending.append(message)
        batch, pending = pending[:max_], pending[max_:]
        generation = app.consumer_generation_id
        if any(m.generation_id != generation for m in batch):
            # Fetched before a rebalance and not yet handed over: drop them
            # unacked (the Stream does the same with stale events it reads);
            # whoever owns their partitions now reads them again.
            for m in itertools.chain(batch, pending):
                if m.generation_id != generation:
                    consumer.unacked.discard(m)
            batch = [m for m in batch if m.generation_id == generation]
            pending = [m for m in pending if m.generation_id == generation]
            if not batch:
                continue
        yield Batch(stream, batch)
