"""One batch, start to finish: decode, dead-letter, fold, score, publish, commit.

This is the whole worker minus Faust. The agent hands it a list of raw
records and acks them only after :meth:`BatchProcessor.process` returns, so
the commit order is the one that keeps the guarantees:

1. dead-letter the rejects and wait until the broker has them;
2. read the touched users (one pipelined round trip) and fold the new events,
   skipping any the user record says it already holds;
3. score every touched user in one forward pass and apply hysteresis;
4. publish the changes and wait until the broker has them;
5. write states, offsets, counts and stream time in one Lua script;
6. (the caller) ack, so Faust commits the offsets.

A crash anywhere before 5 replays the batch; the offset marks in the user
records make the replay a no-op for state, and a change published twice
carries the same per-user ``version``, so subscribers can drop it
(at-least-once for published changes, effectively-once for state).
Redis errors are retried with capped backoff *inside* ``process``: raising
out of the agent would make Faust ack the batch, and nothing may be acked
before it is applied.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import orjson
from redis.exceptions import RedisError

from model.explain import top_reasons
from model.features import vector
from model.registry import LoadedModel
from model.segments import Hysteresis, as_probabilities, decide
from stream import metrics
from stream.events import DecodeLimits, Event, Reason, Rejected, decode, iso
from stream.fold import apply
from stream.health import Health
from stream.playbook import Playbook
from stream.privacy import pseudonym
from stream.store import ConflictError, StateStore, UserRecord, UserWrite, event_digest

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RawRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    @property
    def tp(self) -> str:
        return f"{self.topic}:{self.partition}"


class Sink(Protocol):
    """Where messages go. ``send`` returns an awaitable that resolves once the broker has it."""

    def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> Awaitable[Any]: ...


@dataclass
class BatchResult:
    records: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    changes: list[dict[str, Any]] = field(default_factory=list)
    users: int = 0
    attempts: int = 1


@dataclass(frozen=True)
class PipelineConfig:
    clickstream_topic: str = "clickstream"
    orders_topic: str = "orders"
    segments_topic: str = "customer-segments"
    dlq_topic: str = "segmenter-dlq"
    limits: DecodeLimits = field(default_factory=DecodeLimits)
    hysteresis: Hysteresis = field(default_factory=Hysteresis)
    dedup_window: int = 16
    #: Events older than stream time minus this are dead-lettered: their user
    #: may already have been expired by retention, and would come back wrong.
    max_lateness_ms: int = 400 * 86_400_000
    #: Wall-clock TTL on user keys: a backstop for keys no worker sweeps any more.
    key_ttl_ms: int = 0
    #: Inactivity thresholds (days of event time) at which a user is re-scored.
    reevaluate_days: tuple[float, ...] = (14.0, 30.0, 60.0, 90.0, 120.0, 180.0, 365.0)
    #: Features reported per change (0 = no explanations).
    explain_top_k: int = 3
    #: e.g. "segments.{segment}": also publish entered/exited events there.
    segment_topic_template: str | None = None
    playbook: Playbook | None = None
    #: HMAC key for pseudonymising user ids on ingest (None: keep raw ids).
    pseudonymize_key: bytes | None = None
    retry_initial_s: float = 0.1
    retry_max_s: float = 5.0


def dlq_headers(record: RawRecord, rejected: Rejected) -> list[tuple[str, bytes]]:
    """The DLQ envelope: original key/value untouched, the why and the where in headers."""
    return [
        ("x-dlq-reason", rejected.reason.value.encode()),
        ("x-dlq-detail", rejected.detail.encode("utf-8", "replace")[:1024]),
        ("x-source-topic", record.topic.encode()),
        ("x-source-partition", str(record.partition).encode()),
        ("x-source-offset", str(record.offset).encode()),
    ]


class BatchProcessor:
    def __init__(
        self,
        store: StateStore,
        sink: Sink,
        model: Callable[[], LoadedModel],
        config: PipelineConfig,
        *,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        should_stop: Callable[[], bool] = lambda: False,
        health: Health | None = None,
    ) -> None:
        self.store = store
        self.sink = sink
        self.model = model
        self.cfg = config
        self._clock_ms = clock_ms
        self._should_stop = should_stop
        self._health = health
        #: Stream time as of the last batch this processor committed (0 = not yet known).
        self.stream_time = 0
        self._kinds: dict[str, Literal["clickstream", "orders"]] = {
            config.clickstream_topic: "clickstream",
            config.orders_topic: "orders",
        }

    # -- step 1: decode and dead-letter -----------------------------------

    def _decode(
        self, records: Sequence[RawRecord]
    ) -> tuple[list[tuple[RawRecord, Event]], list[tuple[RawRecord, Rejected]]]:
        now = self._clock_ms()
        oldest = self.stream_time - self.cfg.max_lateness_ms if self.stream_time else 0
        key = self.cfg.pseudonymize_key
        good: list[tuple[RawRecord, Event]] = []
        bad: list[tuple[RawRecord, Rejected]] = []
        for rec in records:
            kind = self._kinds.get(rec.topic)
            if kind is None:
                bad.append((rec, Rejected(Reason.UNKNOWN_TOPIC, f"no decoder for {rec.topic}")))
                continue
            result = decode(kind, rec.key, rec.value, now_ms=now, limits=self.cfg.limits)
            if isinstance(result, Rejected):
                bad.append((rec, result))
            elif result.timestamp < oldest:
                bad.append(
                    (
                        rec,
                        Rejected(
                            Reason.TOO_LATE,
                            f"timestamp {iso(result.timestamp)} is more than "
                            f"{self.cfg.max_lateness_ms // 86_400_000} days before stream time "
                            f"{iso(self.stream_time)}",
                        ),
                    )
                )
            else:
                if key is not None:
                    result = result.model_copy(update={"user_id": pseudonym(key, result.user_id)})
                good.append((rec, result))
        return good, bad

    async def _dead_letter(self, bad: list[tuple[RawRecord, Rejected]]) -> None:
        if not bad:
            return
        futures = [
            self.sink.send(self.cfg.dlq_topic, rec.key, rec.value, dlq_headers(rec, why))
            for rec, why in bad
        ]
        await asyncio.gather(*futures)
        for rec, why in bad:
            metrics.EVENTS.labels(rec.topic, "unknown", "dead_lettered").inc()
            metrics.DEAD_LETTERS.labels(rec.topic, why.reason.value).inc()
            log.warning(
                "dead-lettered %s[%d]@%d: %s: %s",
                rec.topic,
                rec.partition,
                rec.offset,
                why.reason.value,
                why.detail,
            )

    # -- steps 2-5 ---------------------------------------------------------

    async def process(self, records: Sequence[RawRecord]) -> BatchResult:
        started = time.perf_counter()
        if not self.stream_time:
            # A fresh processor learns stream time before judging lateness.
            self.stream_time = await self._with_redis_retry(self.store.stream_time)
        good, bad = self._decode(records)
        await self._dead_letter(bad)
        # Every record of the batch is accounted for once this batch commits,
        # dead-lettered ones included: their partition offsets advance too.
        partition_offsets: dict[str, int] = {}
        for rec in records:
            if partition_offsets.get(rec.tp, -1) < rec.offset:
                partition_offsets[rec.tp] = rec.offset
        by_user: dict[str, list[tuple[RawRecord, Event]]] = {}
        for rec, event in good:
            by_user.setdefault(event.user_id, []).append((rec, event))

        attempt = 0
        while True:
            attempt += 1
            try:
                result = await self._fold_score_publish_commit(by_user, partition_offsets)
                if self._health is not None:
                    self._health.redis_ok, self._health.redis_error = True, None
                break
            except ConflictError as exc:
                metrics.COMMIT_CONFLICTS.inc()
                log.info("batch re-run after a concurrent write: %s", exc)
            except RedisError as exc:
                metrics.REDIS_ERRORS.labels("batch").inc()
                if self._health is not None:
                    self._health.redis_ok = False
                    self._health.redis_error = f"{type(exc).__name__}: {exc}"
                await self._backoff(attempt, exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Anything else (a failed publish, say) is retried too: an
                # exception escaping the agent would let Faust move past an
                # unapplied batch, whose events dedup would later skip.
                log.exception("batch failed; retrying it")
                await self._backoff(attempt, exc)
        result.records = len(records)
        result.dead_lettered = len(bad)
        result.attempts = attempt
        metrics.BATCH_SIZE.observe(len(records))
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        return result

    async def _fold_score_publish_commit(
        self,
        by_user: dict[str, list[tuple[RawRecord, Event]]],
        partition_offsets: dict[str, int],
    ) -> BatchResult:
        result = BatchResult()
        users = list(by_user)
        t0 = time.perf_counter()
        loaded, stored_time = await self.store.load(users)
        self.stream_time = max(self.stream_time, stored_time)
        metrics.REDIS_SECONDS.labels("load").observe(time.perf_counter() - t0)

        touched: dict[str, UserRecord] = {}
        old_segments: dict[str, str | None] = {}
        counted: list[tuple[str, str, str]] = []  # (topic, event_type, outcome)
        latest: dict[str, int] = {}
        batch_time = 0
        window = self.cfg.dedup_window
        for uid in users:
            rec = loaded[uid]
            old_segments[uid] = rec.segment
            changed = False
            for raw, event in by_user[uid]:
                seen_offset = rec.offsets.get(raw.tp, -1)
                digest = event_digest(event.event_id)
                if raw.offset <= seen_offset or digest in rec.recent:
                    result.duplicates += 1
                    counted.append((raw.topic, event.event_type, "duplicate"))
                    continue
                apply(rec.state, event)
                rec.offsets[raw.tp] = raw.offset
                if window:
                    rec.recent.append(digest)
                    del rec.recent[:-window]
                changed = True
                result.applied += 1
                counted.append((raw.topic, event.event_type, "applied"))
                batch_time = max(batch_time, event.timestamp)
                latest[uid] = max(latest.get(uid, 0), event.timestamp)
            if changed:
                touched[uid] = rec

        stream_time = max(stored_time, batch_time)
        # Each touched user is scored as of their own latest event, not the
        # batch's stream time: then what a user's events do to their segment
        # does not depend on how the stream happened to be cut into batches,
        # and a replay of history gives the same changes at the same times.
        messages = await self._score_publish_commit(
            touched,
            old_segments,
            {u: r.state.last_seen for u, r in touched.items()},
            {u: self._next_due(r.state.last_seen, r.state.last_seen) for u, r in touched.items()},
            partition_offsets,
            stream_time,
            trigger="events",
        )

        # Counters only after the commit: a re-run batch must not count twice.
        for topic, event_type, outcome in counted:
            metrics.EVENTS.labels(topic, event_type, outcome).inc()
        now_ms = self._clock_ms()
        for uid, _ in messages:
            metrics.EVENT_TO_PUBLISH.observe(max(0.0, (now_ms - latest[uid]) / 1000))
        if stream_time:
            metrics.STREAM_TIME.set(stream_time / 1000)
        result.changes = [m for _, m in messages]
        result.users = len(touched)
        return result

    def _next_due(self, last_seen: int, at_ms: int) -> int:
        """Event time of the next inactivity threshold after ``at_ms`` (0 = none left)."""
        for days in self.cfg.reevaluate_days:
            due = last_seen + int(days * 86_400_000)
            if due > at_ms:
                return due
        return 0

    async def _score_publish_commit(
        self,
        touched: dict[str, UserRecord],
        old_segments: dict[str, str | None],
        at_ms: dict[str, int],
        dues: dict[str, int],
        partition_offsets: dict[str, int],
        stream_time: int,
        *,
        trigger: str,
    ) -> list[tuple[str, dict[str, Any]]]:
        """Score ``touched`` as of ``at_ms``, publish the changes, commit. Shared by
        event batches and time-driven re-evaluation, so both follow one rule."""
        model = self.model()
        messages: list[tuple[str, dict[str, Any]]] = []
        side: list[tuple[str, str, dict[str, Any]]] = []  # (topic, user, message)
        if touched:
            order = list(touched)
            x = np.stack([vector(touched[u].state, at_ms[u]) for u in order])
            probs = model.scorer.predict(x)
            emitted_at = iso(self._clock_ms())
            changed_rows: list[int] = []
            for i, (uid, row) in enumerate(zip(order, probs, strict=True)):
                rec = touched[uid]
                p = as_probabilities(model.classes, row)
                new = decide(rec.segment, p, self.cfg.hysteresis)
                rec.probabilities = {k: round(v, 4) for k, v in p.items()}
                rec.model_version = model.version
                if new == rec.segment:
                    continue
                rec.version += 1
                changed_rows.append(i)
                previous = rec.segment
                playbook = self.cfg.playbook
                messages.append(
                    (
                        uid,
                        {
                            "user_id": uid,
                            "segment": new,
                            "previous_segment": previous,
                            "probabilities": rec.probabilities,
                            "model_version": model.version,
                            "event_time": iso(at_ms[uid]),
                            "emitted_at": emitted_at,
                            "version": rec.version,
                            "trigger": trigger,
                            "explanation": [],
                            "action": playbook.action_for(previous, new) if playbook else None,
                        },
                    )
                )
                rec.segment = new
            if changed_rows and self.cfg.explain_top_k:
                # One extra forward pass for all changed users, none for the rest.
                classes = [
                    model.classes.index(messages[k][1]["segment"]) for k in range(len(changed_rows))
                ]
                reasons = top_reasons(
                    model.scorer, x[changed_rows], classes, self.cfg.explain_top_k
                )
                for (_, msg), why in zip(messages, reasons, strict=True):
                    msg["explanation"] = why
            template = self.cfg.segment_topic_template
            if template:
                for uid, msg in messages:
                    side.extend(segment_events(template, uid, msg))

        # Publish before the Redis commit: if we die in between, the batch is
        # replayed from the old state and the same change (same version) is
        # published again: a duplicate subscribers can drop, never a loss.
        sends = [
            self.sink.send(self.cfg.segments_topic, uid.encode(), orjson.dumps(msg), [])
            for uid, msg in messages
        ]
        sends += [self.sink.send(t, uid.encode(), orjson.dumps(m), []) for t, uid, m in side]
        if sends:
            await asyncio.gather(*sends)
        writes = [UserWrite(uid, rec, old_segments[uid]) for uid, rec in touched.items()]
        t1 = time.perf_counter()
        await self.store.commit(writes, partition_offsets, stream_time, self.cfg.key_ttl_ms, dues)
        self.stream_time = max(self.stream_time, stream_time)
        metrics.REDIS_SECONDS.labels("commit").observe(time.perf_counter() - t1)
        for _, msg in messages:
            metrics.SEGMENT_CHANGES.labels(msg["previous_segment"] or "none", msg["segment"]).inc()
        return messages

    async def reevaluate(self, limit: int = 500) -> BatchResult:
        """Time-driven re-scoring: users whose inactivity crossed a threshold, in stream time.

        Each due user is scored *as of its due time* (last activity + threshold),
        not as of whenever this sweep happens to run, so a replay of history
        yields the same changes at the same event times as living through it.
        """
        while True:
            try:
                stream_time = await self.store.stream_time()
                due = await self.store.due_for_reevaluation(stream_time, limit)
                if not due:
                    return BatchResult(records=0)
                users = [u for u, _ in due]
                loaded, _ = await self.store.load(users)
                at = dict(due)
                touched = {u: loaded[u] for u in users if loaded[u].exists}
                old = {u: r.segment for u, r in touched.items()}
                dues = {u: self._next_due(r.state.last_seen, at[u]) for u, r in touched.items()}
                messages = await self._score_publish_commit(
                    touched, old, at, dues, {}, stream_time, trigger="inactivity"
                )
                return BatchResult(records=0, users=len(touched), changes=[m for _, m in messages])
            except ConflictError as exc:
                metrics.COMMIT_CONFLICTS.inc()
                log.info("re-evaluation re-run after a concurrent write: %s", exc)
            except RedisError as exc:
                metrics.REDIS_ERRORS.labels("reevaluate").inc()
                await self._backoff(1, exc)

    async def _with_redis_retry(self, fn: Callable[[], Awaitable[int]]) -> int:
        attempt = 0
        while True:
            attempt += 1
            try:
                return await fn()
            except RedisError as exc:
                metrics.REDIS_ERRORS.labels("stream_time").inc()
                await self._backoff(attempt, exc)

    async def _backoff(self, attempt: int, exc: Exception) -> None:
        if self._should_stop():
            raise asyncio.CancelledError(f"stopping while Redis is unavailable: {exc}")
        delay = min(self.cfg.retry_max_s, self.cfg.retry_initial_s * 2 ** (attempt - 1))
        log.warning(
            "Redis unavailable (%s: %s); batch not applied, retry %d in %.1fs",
            type(exc).__name__,
            exc,
            attempt,
            delay,
        )
        await asyncio.sleep(delay)


def segment_events(
    template: str, user_id: str, change: dict[str, Any]
) -> list[tuple[str, str, dict[str, Any]]]:
    """The per-segment view of one change: exited on the old topic, entered on the new."""
    common = {
        "user_id": user_id,
        "version": change["version"],
        "event_time": change["event_time"],
        "emitted_at": change["emitted_at"],
        "model_version": change["model_version"],
        "trigger": change["trigger"],
    }
    out = []
    if change["previous_segment"] is not None:
        out.append(
            (
                template.format(segment=change["previous_segment"]),
                user_id,
                {
                    "type": "segment-exited",
                    "segment": change["previous_segment"],
                    "next_segment": change["segment"],
                    **common,
                },
            )
        )
    out.append(
        (
            template.format(segment=change["segment"]),
            user_id,
            {
                "type": "segment-entered",
                "segment": change["segment"],
                "previous_segment": change["previous_segment"],
                "probability": change["probabilities"][change["segment"]],
                "action": change["action"],
                **common,
            },
        )
    )
    return out
