"""The Faust app: one agent over both input topics, thin glue around the batch processor.

Delivery: the agent takes whole batches (``stream.worker.consumer.take_batches``:
whole fetches, or ``stream.noack_take`` with batching off) and acks them
itself, only after :meth:`BatchProcessor.process` has dead-lettered,
published and committed to Redis. Faust commits offsets from acked events
only, so a committed offset never runs ahead of applied state.

:func:`create_app` reads top to bottom: the Faust app, the parts it shares
(:class:`~stream.worker.parts.WorkerParts`), the agent, the background tasks
(:mod:`stream.worker.tasks`), the rebalance and shutdown hooks.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import faust
from faust.types import TP

from model.registry import load_current
from model.segments import Hysteresis
from stream import metrics
from stream.broker_access import check_broker_access, ssl_context
from stream.core.events import DAY_MS
from stream.settings import Settings, SettingsError
from stream.sinks import ConfluentSink
from stream.topics import ensure_audience_topic, ensure_segment_topics
from stream.worker import consumer as batching
from stream.worker import runtime_tuning
from stream.worker.drift import DriftTracker
from stream.worker.model_holder import ModelHolder
from stream.worker.parts import WorkerParts
from stream.worker.pipeline import BatchProcessor, PipelineConfig
from stream.worker.rules.audiences import AudienceFile, Audiences, AudiencesError
from stream.worker.rules.playbook import Playbook, PlaybookError
from stream.worker.rules.playbook import load as load_playbook
from stream.worker.state.store import StateStore
from stream.worker.state.topic_marks import TopicMarks, broker_topic_ids
from stream.worker.tasks import add_tasks
from stream.worker.web.health import Health

log = logging.getLogger("segmenter.worker")


def _highwater(app: faust.App) -> Callable[[str], int | None]:
    """The consumer's last-heard end offset of an input topic-partition (no I/O:
    aiokafka keeps it from each fetch), for the clock (stream.core.clock)."""

    def high(tp: str) -> int | None:
        topic, part = tp.rsplit(":", 1)
        try:
            end = app.consumer.highwater(TP(topic, int(part)))
        except Exception:  # not assigned (any more), or no consumer yet
            return None
        return int(end) if end is not None else None

    return high


def create_app(settings: Settings) -> faust.App:
    app = _faust_app(settings)
    w = _parts(settings, app)
    _add_agent(w)
    add_tasks(w)
    _add_hooks(w)
    app.segmenter_health = w.health  # type: ignore[attr-defined]
    app.segmenter_store = w.store  # type: ignore[attr-defined]
    app.segmenter_model = w.holder  # type: ignore[attr-defined]
    return app


def _faust_app(settings: Settings) -> faust.App:
    # Faust creates its own folder, but not the parents: a fresh volume or an
    # empty working directory must not stop the worker.
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.group_id,
        broker=settings.faust_broker,
        broker_credentials=faust_credentials(settings),
        datadir=str(settings.data_dir),
        web_enabled=False,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.broker_session_timeout_s,
        broker_rebalance_timeout=settings.broker_rebalance_timeout_s,
        broker_heartbeat_interval=settings.broker_heartbeat_interval_s,
        broker_commit_interval=settings.commit_interval_s,
        topic_partitions=settings.topic_partitions,
        producer_acks=-1,
        # One agent instance: per-user order must hold across the batch, and
        # scaling out is by partitions across worker processes, not coroutines.
        agent_supervisor="mode.OneForOneSupervisor",
        # Consumer tuning, measured by `segmenter bench` (docs/performance.md).
        stream_buffer_maxsize=settings.stream_buffer_maxsize,
        broker_max_poll_records=settings.broker_max_poll_records,
        consumer_max_fetch_size=settings.consumer_max_fetch_size,
    )
    runtime_tuning.use_event_loop(settings.event_loop)  # before the worker creates its loop
    batching.install(  # before any topic or agent is declared
        app,
        batching=settings.consumer_batching,
        fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms,
    )
    runtime_tuning.tune_gc_on_start(app, settings.gc_gen0_threshold)
    return app


def _parts(settings: Settings, app: faust.App) -> WorkerParts:
    """Load and check everything a batch needs; a bad model, playbook or
    audiences file fails here, before any connection."""
    store = StateStore.from_settings(settings, cache=True)
    holder = ModelHolder(load_current(settings.model_dir))
    try:
        playbook = load_playbook(settings.playbook_path, holder.current.classes)
    except PlaybookError as exc:
        raise SettingsError(f"Invalid playbook: {exc}") from None
    if settings.segment_topics:
        ensure_segment_topics(settings, holder.current.classes)
    audience_file = None
    if settings.audiences_path is not None:
        try:
            audience_file = AudienceFile(settings.audiences_path, holder.current.classes)
        except AudiencesError as exc:
            raise SettingsError(f"Invalid audiences: {exc}") from None
        ensure_audience_topic(settings)
    health = Health(model_version=holder.current.version)
    metrics.init_series()
    stopping = threading.Event()
    # A refused login or an untrusted certificate: one line naming the setting,
    # before the sink's producer starts retrying it for ever, logging as it goes.
    check_broker_access(settings)
    # Changes and dead letters go out through librdkafka, not the app's
    # aiokafka producer (stream/sinks.py says why).
    sink = ConfluentSink(
        settings.kafka_client_config(), **{"linger.ms": settings.producer_linger_ms}
    )
    drift = DriftTracker(settings.drift_window_rows) if settings.drift_window_rows else None
    processor = BatchProcessor(
        store,
        sink,
        holder,
        pipeline_config(
            settings, playbook, audience_file.current if audience_file is not None else None
        ),
        should_stop=lambda: stopping.is_set() or app.should_stop,
        on_fatal=functools.partial(stop_fatally, health),
        health=health,
        observe_inputs=drift.observe if drift is not None else None,
        highwater=_highwater(app),
        marks=TopicMarks(
            store,
            (settings.topic_clickstream, settings.topic_orders),
            broker_topic_ids(settings),
        ),
    )
    # A publish the broker has not acknowledged for seconds (a deleted topic,
    # a broker away) shows as a Kafka stall before it fails.
    sink.on_slow = lambda _: processor.stalls.waiting("kafka", "publish", "unacknowledged")
    return WorkerParts(
        settings=settings,
        app=app,
        store=store,
        holder=holder,
        health=health,
        processor=processor,
        audience_file=audience_file,
        drift=drift,
        stopping=stopping,
    )


def _add_agent(w: WorkerParts) -> None:
    settings, processor, health = w.settings, w.processor, w.health
    source = w.app.topic(*settings.input_topics, key_serializer="raw", value_serializer="raw")

    @w.app.agent(source, name="segmenter-fold", concurrency=1)
    async def fold_agent(stream: Any) -> None:  # a faust.Stream; its batching API is untyped
        # noack_take, not take_events: take_events acks a batch in a `finally`,
        # so a batch cancelled mid-way (shutdown, rebalance) would be acked,
        # and its offsets committed, without having been applied. We ack only
        # after process() has published and committed to Redis.
        # take_batches is noack_take on stock Faust; on the batching consumer
        # it hands over whole fetches (stream/worker/consumer.py), acked the same way.
        try:
            async for batch in batching.take_batches(
                stream, settings.batch_max, within=settings.batch_within_s
            ):
                async with w.one_writer:
                    try:
                        result = await processor.process(batch.records)
                    except asyncio.CancelledError:
                        if w.stopping.is_set() or w.app.should_stop or health.agent_error:
                            # Given up unapplied to stop (an outage, a fatal
                            # error): the stop must not wait for its ack,
                            # which never comes.
                            batch.abandon()
                        raise
                await batch.ack()
                health.last_batch_at = time.time()
                log.debug(
                    "batch: %d records, %d applied, %d duplicates, %d dead-lettered, %d changes",
                    result.records,
                    result.applied,
                    result.duplicates,
                    result.dead_lettered,
                    len(result.changes),
                )
        except Exception as exc:
            # Nothing past this batch would ever be applied again while the
            # process looked alive: say so, and exit non-zero for a restart.
            agent_died(health, exc)
            raise


#: The worker's exit status once its agent has died (EX_SOFTWARE).
AGENT_DIED_EXIT = 70
#: Seconds for the orderly stop after the agent died, before the process exits regardless.
AGENT_DIED_GRACE_S = 20.0


async def stop_fatally(health: Health, exc: BaseException) -> None:
    """A fatal error in a batch (stored state of other classes): stop as a dead agent does."""
    agent_died(health, exc)


def agent_died(health: Health, exc: BaseException) -> None:
    """The agent is gone: /readyz and /healthz fail, and the process stops, non-zero."""
    health.agent_error = type(exc).__name__
    log.critical(
        "the agent died (%s): stopping, exit status %d, so that the worker is restarted",
        type(exc).__name__,
        AGENT_DIED_EXIT,
        exc_info=exc,
    )
    # The orderly stop (mode's SIGTERM handler) commits what was acked; the
    # timer exits regardless if that stop hangs. run_worker turns the stop's
    # exit status 0 into AGENT_DIED_EXIT.
    timer = threading.Timer(AGENT_DIED_GRACE_S, os._exit, (AGENT_DIED_EXIT,))
    timer.daemon = True
    timer.start()
    os.kill(os.getpid(), signal.SIGTERM)


def _add_hooks(w: WorkerParts) -> None:
    """Rebalances and shutdown."""
    health, input_topics = w.health, w.settings.input_topics

    @w.app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(app: faust.App, revoked: set[TP], **kwargs: Any) -> None:
        # Stop sweeping them at once: their next owner may already be writing.
        gone = {f"{t}:{p}" for t, p in revoked}
        health.assigned = frozenset(health.assigned - gone)
        async with w.one_writer:  # and let a sweep round in progress finish first
            # Their users' next writer is another worker: what this one
            # committed may soon be stale (a revision check would catch it,
            # at the cost of re-running a batch).
            w.store.cache.clear()

    @w.app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(app: faust.App, assigned: set[TP], **kwargs: Any) -> None:
        ours = {f"{t}:{p}" for t, p in assigned if t in input_topics}
        health.assigned = frozenset(ours)
        w.store.cache.clear()  # users owned before may have been written by others since
        health.kafka_ok, health.kafka_error = True, None
        for labels in list(metrics.CONSUMER_LAG._metrics):  # forget partitions we lost
            if f"{labels[0]}:{labels[1]}" not in ours:
                metrics.CONSUMER_LAG.remove(*labels)
        log.info("partitions assigned: %s", ", ".join(sorted(ours)) or "none")

    @w.app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def on_shutdown(app: faust.App, **kwargs: Any) -> None:
        # A batch in flight finishes (or, if Redis is down, gives up without
        # applying anything); its events are then redelivered to whoever
        # owns the partition next.
        w.stopping.set()
        log.info("shutting down: finishing the current batch")
        for each in w.listeners:
            each.stop()


def pipeline_config(
    settings: Settings, playbook: Playbook | None = None, audiences: Audiences | None = None
) -> PipelineConfig:
    return PipelineConfig(
        audiences=audiences,
        audiences_topic=settings.topic_audiences,
        reevaluate_days=settings.reevaluate_days,
        explain_top_k=settings.explain_top_k,
        segment_topic_template=settings.segment_topic_template if settings.segment_topics else None,
        playbook=playbook,
        clickstream_topic=settings.topic_clickstream,
        orders_topic=settings.topic_orders,
        segments_topic=settings.topic_segments,
        dlq_topic=settings.topic_dlq,
        limits=settings.decode_limits(),
        hysteresis=Hysteresis(margin=settings.hysteresis_margin, floor=settings.hysteresis_floor),
        click_dedup_ms=int(settings.click_dedup_hours * 3_600_000),
        max_batch_failures=settings.max_batch_failures,
        dlq_head_bytes=settings.dlq_value_head_bytes,
        max_lateness_ms=int(settings.retention_days * DAY_MS),
        retention_ms=int(settings.retention_days * DAY_MS),
        # Backstop only: retention is enforced in event time by the sweep, and
        # the TTL (retention + 30 days of wall time) catches abandoned keys.
        key_ttl_ms=int((settings.retention_days + 30) * DAY_MS),
        pseudonymize_key=(
            settings.pseudonymize_key.get_secret_value().encode()
            if settings.pseudonymize_key
            else None
        ),
    )


def faust_credentials(settings: Settings) -> Any:
    """aiokafka credentials for Faust from the same settings librdkafka clients use."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = ssl_context(settings)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    assert settings.kafka_sasl_password is not None
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password.get_secret_value(),
        ssl_context=context,
        mechanism=settings.kafka_sasl_mechanism,
    )
