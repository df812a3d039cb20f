"""Everything a worker does besides its batches: the tasks and timers on its app.

- model promotions: listen for announcements, swap the model between batches;
- the HTTP endpoints (/metrics, probes, read API);
- audiences: reload on SIGHUP and when the file changes;
- housekeeping: what SREs watch (Redis health, populations, lag, drift);
- re-evaluation: time-driven steps (re-scores, retention) for owned partitions.

None of them may take the worker down: each reports its failure and waits
for its next turn (a mode timer that raises stops the worker).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from typing import Any

import faust
from faust.types import TP

from stream import metrics
from stream.announce import AnnouncementListener
from stream.redaction import install as install_redaction
from stream.worker.drift import report_max_age_s
from stream.worker.parts import WorkerParts
from stream.worker.traits import ModelVersions
from stream.worker.web.health import Health
from stream.worker.web.http import serve as serve_http

log = logging.getLogger("segmenter.worker")


def add_tasks(w: WorkerParts) -> None:
    _listen_for_promotions(w)
    _serve_http(w)
    _reload_audiences_on_sighup(w)
    _housekeeping(w)
    _reevaluation(w)


def _listen_for_promotions(w: WorkerParts) -> None:
    @w.app.task
    async def listen_for_promotions() -> None:
        loop = asyncio.get_running_loop()

        def on_announcement(message: dict[str, Any]) -> None:
            log.info("model announcement: %s", message.get("version"))
            loop.call_soon_threadsafe(w.reload_model)  # swap on the loop, between batches

        w.listeners.append(AnnouncementListener(w.settings, on_announcement).start())


def _serve_http(w: WorkerParts) -> None:
    settings = w.settings

    @w.app.task
    async def start_http() -> None:
        # mode's Worker replaced the root log handlers when it started (after
        # `segmenter worker` had put the redaction filter on the old ones): put it
        # back before anything, the API's access log included, logs through them.
        install_redaction(settings.redactor())
        if not settings.metrics_port:
            return
        processor = w.processor
        await serve_http(
            w.health,
            settings.metrics_host,
            settings.metrics_port,
            w.store,
            settings,
            lambda: w.holder.current.classes,
            lambda: processor.audiences.names if processor.audiences is not None else (),
            # Traits are recomputed with the served model, without a disk read,
            # for every user it scored.
            ModelVersions(settings.model_dir, w.holder),
        )
        log.info(
            "serving /metrics, /healthz, /readyz and the read API (%s) on %s:%d",
            "bearer token required" if settings.api_token else "no token required",
            settings.metrics_host,
            settings.metrics_port,
        )


def _reload_audiences_on_sighup(w: WorkerParts) -> None:
    @w.app.task
    async def reload_on_sighup() -> None:
        if w.audience_file is not None:
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, functools.partial(w.reload_audiences, True)
            )


def _housekeeping(w: WorkerParts) -> None:
    store, health, drift = w.store, w.health, w.drift

    @w.app.timer(interval=w.settings.housekeeping_interval_s)
    async def housekeeping() -> None:
        """Refresh what SREs watch: Redis health, segment populations, lag, the model, drift."""
        report = None
        if drift is not None:
            try:  # before any I/O: the gauges do not wait on Redis
                report = drift.publish(w.holder.current)
            except Exception as exc:
                log.warning("drift snapshot failed: %s: %s", type(exc).__name__, exc)
        try:
            await store.ping()
            counts = await store.segment_counts()
            applied = await store.partition_offsets()
            health.redis_ok, health.redis_error = True, None
        except Exception as exc:  # reported, never fatal: the batch path owns retries
            health.redis_ok, health.redis_error = False, type(exc).__name__  # no text: redacted
            return
        for segment, n in counts.items():
            metrics.SEGMENT_USERS.labels(segment).set(n)
        if w.audience_file is not None:
            w.reload_audiences()
            try:
                members = await store.audience_counts()
            except Exception as exc:
                log.warning("audience populations not read: %s: %s", type(exc).__name__, exc)
            else:
                for name in {*w.audience_file.current.names, *members}:
                    metrics.AUDIENCE_USERS.labels(name).set(members.get(name, 0))
        # A timer that raises stops the worker (mode): housekeeping never may.
        try:
            await _update_lag(w.app, health, applied)
            w.reload_model()
            if report is not None:
                # `models show` reads reports this fresh; the key goes once
                # no worker has written for as long.
                ttl = report_max_age_s(w.settings.housekeeping_interval_s)
                await store.put_drift(report["worker"], report, ttl)
        except Exception as exc:
            log.warning("housekeeping incomplete: %s: %s", type(exc).__name__, exc)


async def _update_lag(app: faust.App, health: Health, applied: dict[str, int]) -> None:
    tps = [TP(t, int(p)) for t, p in (tp.rsplit(":", 1) for tp in health.assigned)]
    if not tps:
        return
    try:
        # aiokafka's end offsets (not librdkafka's watermarks, which
        # under-report on Tansu: docs/design.md).
        highwaters = await app.consumer.highwaters(*tps)
    except Exception as exc:
        health.kafka_ok, health.kafka_error = False, type(exc).__name__
        return
    health.kafka_ok, health.kafka_error = True, None
    waiting = 0
    for tp, high in highwaters.items():
        next_to_apply = applied.get(f"{tp.topic}:{tp.partition}", -1) + 1
        waiting += max(0, high - next_to_apply)
        metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, high - next_to_apply))
    health.records_waiting = waiting > 0


def _reevaluation(w: WorkerParts) -> None:
    @w.app.timer(interval=w.settings.reevaluate_interval_s)
    async def reevaluate() -> None:
        """Time-driven steps (re-scores, retention) for the partitions this worker owns.

        Under ``one_writer``, as batches are: see :class:`WorkerParts`.
        """
        if not w.owned_partitions():
            return
        try:
            for _ in range(20):  # bounded per tick, so shutdown is never held up long
                async with w.one_writer:
                    # Read under the lock, each round: a rebalance may have
                    # revoked partitions since (on_revoked empties them first).
                    owned = w.owned_partitions()
                    result = await w.processor.reevaluate(
                        owned, limit=500, still_owned=lambda p: p in w.owned_partitions()
                    )
                if result.changes:
                    log.info(
                        "re-evaluation: %d users, %d changes", result.users, len(result.changes)
                    )
                if not result.records:  # nothing more due
                    break
        except Exception as exc:  # never let the timer take the worker down
            log.warning("re-evaluation incomplete: %s: %s", type(exc).__name__, exc)
