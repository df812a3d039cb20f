"""The Faust app: one agent over both input topics, thin glue around the batch processor.

Delivery: the agent takes whole batches (``stream.worker.consumer.take_batches``:
whole fetches, or ``stream.noack_take`` with batching off) and acks them
itself, only after :meth:`BatchProcessor.process` has dead-lettered,
published and committed to Redis. Faust commits offsets from acked events
only, so a committed offset never runs ahead of applied state.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import ssl
import time
from typing import Any

import faust
from faust.types import TP

from model.registry import LoadedModel, current_version, load_current, load_version
from model.segments import Hysteresis
from stream import metrics
from stream.announce import AnnouncementListener
from stream.core.events import DAY_MS
from stream.redaction import install as install_redaction
from stream.settings import Settings, SettingsError
from stream.sinks import ConfluentSink
from stream.topics import ensure_audience_topic, ensure_segment_topics
from stream.worker import consumer as batching
from stream.worker import runtime_tuning
from stream.worker.audiences import AudienceFile, Audiences, AudiencesError
from stream.worker.drift import DriftTracker, report_max_age_s
from stream.worker.health import Health
from stream.worker.http import serve as serve_http
from stream.worker.pipeline import BatchProcessor, PipelineConfig
from stream.worker.playbook import Playbook, PlaybookError
from stream.worker.playbook import load as load_playbook
from stream.worker.store import StateStore

log = logging.getLogger("segmenter.worker")


class ModelHolder:
    """The model being served; swapped as a whole, read once per batch.

    A batch reads the model once at scoring time, so a switch lands between
    batches: every change a batch publishes carries the version that scored it.
    """

    def __init__(self, model: LoadedModel) -> None:
        self.current = model
        metrics.MODEL_INFO.labels(model.version).set(1)

    def __call__(self) -> LoadedModel:
        return self.current

    def swap(self, model: LoadedModel) -> None:
        old = self.current.version
        self.current = model
        metrics.MODEL_INFO.remove(old)
        metrics.MODEL_INFO.labels(model.version).set(1)

    def reload_if_promoted(self, model_dir: Any) -> bool:
        """Switch to the registry's ``current`` model if it changed; keep serving on failure."""
        wanted = current_version(model_dir)
        if wanted is None or wanted == self.current.version:
            return False
        try:
            model = load_version(model_dir / wanted)
            if model.classes != self.current.classes:
                # Stored segments, counts and subscribers' topics are named by
                # class: a different set needs a migration, not a hot swap.
                raise ValueError(
                    f"its classes {list(model.classes)} differ from the served "
                    f"{list(self.current.classes)}; restart the workers to adopt them"
                )
        except Exception as exc:  # any unusable model: keep serving the old one
            metrics.MODEL_RELOADS.labels("rejected").inc()
            log.error("model %s refused, still serving %s: %s", wanted, self.current.version, exc)
            return False
        old = self.current.version
        self.swap(model)
        metrics.MODEL_RELOADS.labels("success").inc()
        log.info("model switched from %s to %s", old, model.version)
        return True


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


async def _update_lag(app: faust.App, health: Health, applied: dict[str, int]) -> None:
    tps = [TP(t, int(p)) for t, p in (tp.rsplit(":", 1) for tp in health.assigned)]
    if not tps:
        return
    try:
        # aiokafka's end offsets (not librdkafka's watermarks, which
        # under-report on Tansu: docs/design.md).
        highwaters = await app.consumer.highwaters(*tps)
    except Exception as exc:
        health.kafka_ok, health.kafka_error = False, f"{type(exc).__name__}: {exc}"
        return
    health.kafka_ok, health.kafka_error = True, None
    for tp, high in highwaters.items():
        next_to_apply = applied.get(f"{tp.topic}:{tp.partition}", -1) + 1
        metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, high - next_to_apply))


def faust_credentials(settings: Settings) -> Any:
    """aiokafka credentials for Faust from the same settings librdkafka clients use."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        )
        if settings.kafka_ssl_certfile:
            context.load_cert_chain(
                str(settings.kafka_ssl_certfile),
                str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
            )
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    assert settings.kafka_sasl_password is not None
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password.get_secret_value(),
        ssl_context=context,
        mechanism=settings.kafka_sasl_mechanism,
    )


def create_app(settings: Settings) -> faust.App:
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
    store = StateStore.from_settings(settings)
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
    stopping = {"now": False}
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
        # Either flag: Faust waits for unacked events before it sends
        # on_before_shutdown, so a batch retrying against an unavailable Redis
        # must also see that the app itself is stopping, or shutdown hangs.
        should_stop=lambda: stopping["now"] or app.should_stop,
        on_fatal=app.crash,
        health=health,
        observe_inputs=drift.observe if drift is not None else None,
    )
    one_writer = asyncio.Lock()
    source = app.topic(*settings.input_topics, key_serializer="raw", value_serializer="raw")

    @app.agent(source, name="segmenter-fold", concurrency=1)
    async def fold_agent(stream: Any) -> None:  # a faust.Stream; its batching API is untyped
        # noack_take, not take_events: take_events acks a batch in a `finally`,
        # so a batch cancelled mid-way (shutdown, rebalance) would be acked,
        # and its offsets committed, without having been applied. We ack only
        # after process() has published and committed to Redis.
        # take_batches is noack_take on stock Faust; on the batching consumer
        # it hands over whole fetches (stream/worker/consumer.py), acked the same way.
        async for batch in batching.take_batches(
            stream, settings.batch_max, within=settings.batch_within_s
        ):
            async with one_writer:
                result = await processor.process(batch.records)
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

    listener: list[AnnouncementListener] = []

    def reload_now() -> None:
        if holder.reload_if_promoted(settings.model_dir):
            health.model_version = holder.current.version

    @app.task
    async def listen_for_promotions() -> None:
        loop = asyncio.get_running_loop()

        def on_announcement(message: dict[str, Any]) -> None:
            log.info("model announcement: %s", message.get("version"))
            loop.call_soon_threadsafe(reload_now)  # swap on the loop, between batches

        listener.append(AnnouncementListener(settings, on_announcement).start())

    @app.task
    async def start_http() -> None:
        # mode's Worker replaced the root log handlers when it started (after
        # `segmenter worker` had put the redaction filter on the old ones): put it
        # back before anything, the API's access log included, logs through them.
        install_redaction(settings.redactor())
        if settings.metrics_port:
            await serve_http(
                health,
                settings.metrics_host,
                settings.metrics_port,
                store,
                settings,
                lambda: holder.current.classes,
                lambda: processor.audiences.names if processor.audiences is not None else (),
            )
            log.info(
                "serving /metrics, /healthz, /readyz and the read API (%s) on %s:%d",
                "bearer token required" if settings.api_token else "no token required",
                settings.metrics_host,
                settings.metrics_port,
            )

    def reload_audiences(force: bool = False) -> None:
        """Take a changed audiences file between batches; keep the old set if it is bad."""
        if audience_file is None:
            return
        try:
            new = audience_file.reload(force)
        except AudiencesError as exc:
            log.error(
                "audiences not reloaded, still using the %d from before: %s",
                len(processor.audiences.audiences) if processor.audiences else 0,
                exc,
            )
            return
        if new is not None:
            processor.audiences = new
            log.info("audiences reloaded from %s: %s", new.source, ", ".join(new.names) or "none")

    @app.task
    async def reload_on_sighup() -> None:
        if audience_file is not None:
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, functools.partial(reload_audiences, True)
            )

    @app.timer(interval=settings.housekeeping_interval_s)
    async def housekeeping() -> None:
        """Refresh what SREs watch: Redis health, segment populations, lag, the model, drift."""
        report = None
        if drift is not None:
            try:  # before any I/O: the gauges do not wait on Redis
                report = drift.publish(holder.current)
            except Exception as exc:
                log.warning("drift snapshot failed: %s: %s", type(exc).__name__, exc)
        try:
            await store.ping()
            counts = await store.segment_counts()
            applied = await store.partition_offsets()
            health.redis_ok, health.redis_error = True, None
        except Exception as exc:  # reported, never fatal: the batch path owns retries
            health.redis_ok, health.redis_error = False, f"{type(exc).__name__}: {exc}"
            return
        for segment, n in counts.items():
            metrics.SEGMENT_USERS.labels(segment).set(n)
        if audience_file is not None:
            reload_audiences()
            try:
                members = await store.audience_counts()
            except Exception as exc:
                log.warning("audience populations not read: %s: %s", type(exc).__name__, exc)
            else:
                for name in {*audience_file.current.names, *members}:
                    metrics.AUDIENCE_USERS.labels(name).set(members.get(name, 0))
        # A timer that raises stops the worker (mode): housekeeping never may.
        try:
            await _update_lag(app, health, applied)
            reload_now()
            if report is not None:
                # `models show` reads reports this fresh; the key goes once
                # no worker has written for as long.
                ttl = report_max_age_s(settings.housekeeping_interval_s)
                await store.put_drift(report["worker"], report, ttl)
        except Exception as exc:
            log.warning("housekeeping incomplete: %s: %s", type(exc).__name__, exc)

    @app.timer(interval=settings.reevaluate_interval_s)
    async def reevaluate() -> None:
        """Time-driven steps (re-scores, retention) for the partitions this worker owns.

        Only the owner of a user's partition ever writes that user, sweep or
        batch, and never both at once (``one_writer``): so no change is
        published by a writer whose commit is then refused.
        """

        def owned() -> list[int]:
            return sorted({int(tp.rsplit(":", 1)[1]) for tp in health.assigned})

        if not owned():
            return
        try:
            for _ in range(20):  # bounded per tick, so shutdown is never held up long
                async with one_writer:
                    # Read under the lock, each round: a rebalance may have
                    # revoked partitions since (on_revoked empties them first).
                    result = await processor.reevaluate(
                        owned(), limit=500, still_owned=lambda p: p in owned()
                    )
                if result.changes:
                    log.info(
                        "re-evaluation: %d users, %d changes", result.users, len(result.changes)
                    )
                if not result.records:  # nothing more due
                    break
        except Exception as exc:  # never let the timer take the worker down
            log.warning("re-evaluation incomplete: %s: %s", type(exc).__name__, exc)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(app: faust.App, revoked: set[TP], **kwargs: Any) -> None:
        # Stop sweeping them at once: their next owner may already be writing.
        gone = {f"{t}:{p}" for t, p in revoked}
        health.assigned = frozenset(health.assigned - gone)
        async with one_writer:  # and let a sweep round in progress finish first
            pass

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(app: faust.App, assigned: set[TP], **kwargs: Any) -> None:
        ours = {f"{t}:{p}" for t, p in assigned if t in settings.input_topics}
        health.assigned = frozenset(ours)
        health.kafka_ok, health.kafka_error = True, None
        for labels in list(metrics.CONSUMER_LAG._metrics):  # forget partitions we lost
            if f"{labels[0]}:{labels[1]}" not in ours:
                metrics.CONSUMER_LAG.remove(*labels)
        log.info("partitions assigned: %s", ", ".join(sorted(ours)) or "none")

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def on_shutdown(app: faust.App, **kwargs: Any) -> None:
        # A batch in flight finishes (or, if Redis is down, gives up without
        # applying anything); its events are then redelivered to whoever
        # owns the partition next.
        stopping["now"] = True
        log.info("shutting down: finishing the current batch")
        for each in listener:
            each.stop()

    app.segmenter_health = health  # type: ignore[attr-defined]
    app.segmenter_store = store  # type: ignore[attr-defined]
    app.segmenter_model = holder  # type: ignore[attr-defined]
    return app
