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
import bisect
import functools
import hashlib
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol, TypeVar

import numpy as np
import orjson
from confluent_kafka import KafkaError, KafkaException
from redis.exceptions import RedisError

from model.explain import top_reasons
from model.features import N_FEATURES, raw_row, transform
from model.registry import LoadedModel
from model.segments import Hysteresis, clear_leaders, decide
from stream import metrics
from stream.audiences import Audiences, membership_walk
from stream.dedup import DEFAULT_CLICK_WINDOW_MS, SeenEvents, admit
from stream.events import DAY_MS, DecodeLimits, Event, Reason, Rejected, decode, iso
from stream.fold import UserState, apply
from stream.health import Health
from stream.playbook import Playbook
from stream.privacy import pseudonym
from stream.records import RawRecord
from stream.sinks import Outgoing
from stream.store import (
    ConflictError,
    StateStore,
    StoreMismatch,
    UserRecord,
    UserWrite,
)

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class Sink(Protocol):
    """Where messages go: ``publish`` produces them in order and resolves once the
    broker has every one (:class:`stream.sinks.ConfluentSink`)."""

    def publish(self, records: Sequence[Outgoing]) -> Awaitable[Any]: ...


class Step(NamedTuple):
    """A point on a user's timeline where the change rule is applied."""

    at: int  # event time
    #: "audience": a re-evaluation of the rule audiences only, where a condition
    #: on a clock feature can flip (stream.audiences.Audiences.clock_offsets);
    #: segments are decided at the other steps only, as without audiences.
    trigger: Literal["events", "inactivity", "retention", "audience"]
    row: int  # into the batch's stacked feature matrix; -1 for retention erasure


@dataclass(slots=True)
class Timeline:
    """One user's record through a batch, and the steps taken on it, in order."""

    record: UserRecord
    old_segment: str | None
    old_partition: int
    old_due: int
    steps: list[Step] = field(default_factory=list)
    #: The audiences the stored record was in (the index moves from these).
    old_audiences: tuple[str, ...] = ()


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
    #: Clicks re-sent within this much of their user's event time are dropped
    #: (orders by order id, always: stream.dedup). 0 = by offset only.
    click_dedup_ms: int = DEFAULT_CLICK_WINDOW_MS
    #: Events older than stream time minus this are dead-lettered: their user
    #: may already have been expired by retention, and would come back wrong.
    max_lateness_ms: int = 400 * DAY_MS
    #: Users inactive this long (event time) are erased, with a tombstone (0 = never).
    retention_ms: int = 400 * DAY_MS
    #: Wall-clock TTL on user keys: a backstop for keys no worker sweeps any more.
    key_ttl_ms: int = 0
    #: Inactivity thresholds (days of event time) at which a user is re-scored.
    reevaluate_days: tuple[float, ...] = (14.0, 30.0, 60.0, 90.0, 120.0, 180.0, 365.0)
    #: Features reported per change (0 = no explanations).
    explain_top_k: int = 3
    #: e.g. "segments.{segment}": also publish entered/exited events there.
    segment_topic_template: str | None = None
    playbook: Playbook | None = None
    #: Rule audiences evaluated on every scoring (None: none configured).
    audiences: Audiences | None = None
    audiences_topic: str = "customer-audiences"
    #: HMAC key for pseudonymising user ids on ingest (None: keep raw ids).
    pseudonymize_key: bytes | None = None
    retry_initial_s: float = 0.1
    retry_max_s: float = 5.0
    #: Attempts a batch may fail the same way before its records are tried
    #: apart and the one that fails is dead-lettered (transient outages of
    #: Redis or the broker never count: those are waited out).
    max_batch_failures: int = 5
    #: Bytes of an over-large record's key and value kept in the DLQ.
    dlq_head_bytes: int = 1024


def _redelivered(rec: UserRecord, tp: str, offset: int) -> bool:
    """Whether ``rec`` already holds this very record (at or below its partition's mark)."""
    return offset <= rec.offsets.get(tp, -1)


def _known(rec: UserRecord, tp: str, offset: int, event: Event, click_window_ms: int) -> bool:
    """Whether ``rec`` already counts ``event``, as a redelivery or a re-send; changes nothing."""
    return _redelivered(rec, tp, offset) or not admit(
        rec.seen.copy(), event, rec.state.last_seen, click_window_ms
    )


def dlq_headers(record: RawRecord, rejected: Rejected) -> list[tuple[str, bytes]]:
    """The DLQ envelope's headers: the why and the where."""
    return [
        ("x-dlq-reason", rejected.reason.value.encode()),
        ("x-dlq-detail", rejected.detail.encode("utf-8", "replace")[:1024]),
        ("x-source-topic", record.topic.encode()),
        ("x-source-partition", str(record.partition).encode()),
        ("x-source-offset", str(record.offset).encode()),
    ]


def dlq_record(
    topic: str, record: RawRecord, rejected: Rejected, whole_up_to: int, head: int
) -> Outgoing:
    """A dead letter whose size is bounded, so that dead-lettering cannot fail on size.

    A key or value up to ``whole_up_to`` bytes is kept untouched (every record
    the decoder accepts in size). A larger one keeps its first ``head`` bytes,
    and headers give its size and SHA-256: enough to find and compare the
    original at its source, which the ``x-source-*`` headers name.
    """
    headers = dlq_headers(record, rejected)
    parts: list[bytes | None] = []
    for name, data in (("key", record.key), ("value", record.value)):
        if data is not None and len(data) > whole_up_to:
            headers += [
                (f"x-dlq-{name}-size", str(len(data)).encode()),
                (f"x-dlq-{name}-sha256", hashlib.sha256(data).hexdigest().encode()),
                (f"x-dlq-{name}-truncated", str(head).encode()),
            ]
            data = data[:head]
        parts.append(data)
    return Outgoing(topic, parts[0], parts[1], headers)


class Poisoned(Exception):
    """A batch failed the same way ``max_batch_failures`` times: not an outage."""

    def __init__(self, what: str, signature: str) -> None:
        super().__init__(f"{what} failed the same way repeatedly: {signature}")
        self.signature = signature


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` is an outage to wait out rather than a fault of the batch.

    Redis errors, and broker errors librdkafka calls retriable (or a timeout,
    a transport failure, no broker up), are outages: no record is to blame,
    and dead-lettering during one would throw good events away.
    """
    if isinstance(exc, RedisError | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        err: KafkaError = exc.args[0]
        return bool(err.retriable()) or err.code() in _TRANSIENT_KAFKA
    return False


_TRANSIENT_KAFKA = frozenset(
    {
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._RESOLVE,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
    }
)


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
        on_fatal: Callable[[BaseException], Awaitable[None]] | None = None,
        observe_inputs: Callable[[LoadedModel, np.ndarray, list[int]], None] | None = None,
    ) -> None:
        self.store = store
        self.sink = sink
        self.model = model
        self.cfg = config
        self._clock_ms = clock_ms
        self._should_stop = should_stop
        self._on_fatal = on_fatal
        #: Gets each committed event batch's model inputs, and which of their
        #: rows are re-scores rather than arriving events (drift).
        self._observe_inputs = observe_inputs
        # Time-driven steps after a user's last activity: the re-scores, then
        # (last) retention erasure. Computed once: _next_due runs per event.
        retention = config.retention_ms
        offsets = [int(d * DAY_MS) for d in config.reevaluate_days]
        if retention > 0:
            offsets = [o for o in offsets if o < retention] + [retention]
        self._step_offsets = tuple(offsets)
        self._step_offset_set = frozenset(offsets)
        self._fatal: BaseException | None = None
        #: Records that failed on their own: dead-lettered on their next try.
        self._poisoned: dict[tuple[str, int, int], Rejected] = {}
        self._health = health
        #: Replaced in place when the audiences file is reloaded (between batches).
        self.audiences = config.audiences
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
        key = self.cfg.pseudonymize_key
        good: list[tuple[RawRecord, Event]] = []
        bad: list[tuple[RawRecord, Rejected]] = []
        for rec in records:
            poisoned = self._poisoned.pop((rec.topic, rec.partition, rec.offset), None)
            if poisoned is not None:
                bad.append((rec, poisoned))
                continue
            kind = self._kinds.get(rec.topic)
            if kind is None:
                bad.append((rec, Rejected(Reason.UNKNOWN_TOPIC, f"no decoder for {rec.topic}")))
                continue
            result = decode(kind, rec.key, rec.value, now_ms=now, limits=self.cfg.limits)
            if isinstance(result, Rejected):
                bad.append((rec, result))
            else:
                if key is not None:
                    result = result.model_copy(update={"user_id": pseudonym(key, result.user_id)})
                good.append((rec, result))
        return good, bad

    async def _dead_letter(self, bad: list[tuple[RawRecord, Rejected]]) -> None:
        """Send to the DLQ and wait until the broker has them (counted by the caller)."""
        if bad:
            whole, head = self.cfg.limits.max_bytes, self.cfg.dlq_head_bytes
            await self.sink.publish(
                [dlq_record(self.cfg.dlq_topic, rec, why, whole, head) for rec, why in bad]
            )

    @staticmethod
    def _count_dead_letters(bad: list[tuple[RawRecord, Rejected]]) -> None:
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
        """Apply ``records``; returns once they are committed (or dead-lettered).

        A batch that fails the same way ``max_batch_failures`` times is split
        in halves, each applied on its own, down to the record that fails: it
        is dead-lettered (``processing_failed``) and the rest go on. Partition
        order is kept: the halves are applied in order.
        """
        try:
            return await self._process(records)
        except Poisoned as exc:
            if len(records) == 1:
                rec = records[0]
                why = f"failed {self.cfg.max_batch_failures} times: {exc.signature}"
                log.error("dead-lettering %s[%d]@%d: %s", rec.topic, rec.partition, rec.offset, why)
                self._poisoned[(rec.topic, rec.partition, rec.offset)] = Rejected(
                    Reason.PROCESSING_FAILED, why
                )
                return await self._process(records)
            mid = len(records) // 2
            log.warning(
                "a batch of %d records failed the same way %d times (%s): applying it in halves",
                len(records),
                self.cfg.max_batch_failures,
                exc.signature,
            )
            first = await self.process(records[:mid])
            second = await self.process(records[mid:])
            return _merged(first, second)

    async def _process(self, records: Sequence[RawRecord]) -> BatchResult:
        started = time.perf_counter()
        good, bad = self._decode(records)
        if bad:  # at least once, like everything this publishes
            await self._retrying(lambda: self._dead_letter(bad), "dead_letter", poison=True)
            self._count_dead_letters(bad)
        # Every record of the batch is accounted for once this batch commits,
        # dead-lettered ones included: their partition offsets advance too.
        # Keyed by (topic, partition) here and named "topic:partition" once
        # per partition, not formatted twice per record.
        highest: dict[tuple[str, int], int] = {}
        for rec in records:
            key = (rec.topic, rec.partition)
            if highest.get(key, -1) < rec.offset:
                highest[key] = rec.offset
        partition_offsets = {f"{t}:{p}": off for (t, p), off in highest.items()}
        result, attempt = await self._retrying(
            lambda: self._fold_score_publish_commit(good, partition_offsets), "batch", poison=True
        )
        result.records = len(records)
        result.dead_lettered += len(bad)
        result.attempts = attempt
        metrics.BATCH_SIZE.observe(len(records))
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        return result

    async def _fold_score_publish_commit(
        self,
        good: list[tuple[RawRecord, Event]],
        partition_offsets: dict[str, int],
    ) -> BatchResult:
        result = BatchResult()
        # Stream time per partition number *before* each event, in batch
        # (= partition) order: a user's schedule is caught up to it before the
        # event is folded, exactly as a sweep between the two would have done.
        by_user: dict[str, list[tuple[RawRecord, str, Event, int]]] = {}
        t0 = time.perf_counter()
        users = list(dict.fromkeys(e.user_id for _, e in good))
        loaded, stored_time, ptimes = await self.store.load(users)
        self.stream_time = max(self.stream_time, stored_time)
        metrics.REDIS_SECONDS.labels("load").observe(time.perf_counter() - t0)
        running = dict(ptimes)
        late: list[tuple[RawRecord, Rejected]] = []
        bound = self.cfg.max_lateness_ms
        for raw, event in good:
            before = running.get(raw.partition, 0)
            tp = raw.tp
            if (
                bound
                and event.timestamp <= before - bound
                and not _known(
                    loaded[event.user_id], tp, raw.offset, event, self.cfg.click_dedup_ms
                )
            ):
                # Judged against the partition's own clock, in partition order,
                # so a replay judges it the same way. Past the bound, its user
                # may already have been erased by retention and would come back
                # from this one event.
                why = Rejected(
                    Reason.TOO_LATE,
                    f"timestamp {iso(event.timestamp)} is {bound // DAY_MS} days or more "
                    f"before partition {raw.partition}'s stream time {iso(before)}",
                )
                late.append((raw, why))
                continue
            by_user.setdefault(event.user_id, []).append((raw, tp, event, before))
            running[raw.partition] = max(before, event.timestamp)
        partition_times = {p: t for p, t in running.items() if t > ptimes.get(p, 0)}

        timelines: dict[str, Timeline] = {}
        rows: list[tuple[float, ...]] = []  # raw features, one per step; transformed at once
        swept: list[int] = []  # those of the rows that are inactivity re-scores
        counted: Counter[tuple[str, str, str]] = Counter()  # (topic, event_type, outcome)
        latest: dict[str, int] = {}
        batch_time = 0
        window = self.cfg.click_dedup_ms
        for uid, items in by_user.items():
            rec = loaded[uid]
            tl = Timeline(rec, rec.segment, rec.partition, rec.due, old_audiences=rec.audiences)
            for raw, tp, event, before in items:
                if event.timestamp <= rec.erased_at:
                    # From before the user's erasure (a replay, a rewound
                    # group): not theirs to count any more.
                    counted[raw.topic, event.event_type, "erased"] += 1
                    continue
                # Offsets first: a redelivered record is skipped whatever its
                # age; then the rule training applies too (stream.dedup).
                if _redelivered(rec, tp, raw.offset) or not admit(
                    rec.seen, event, rec.state.last_seen, window
                ):
                    result.duplicates += 1
                    counted[raw.topic, event.event_type, "duplicate"] += 1
                    continue
                self._catch_up(tl, max(before, event.timestamp - 1), rows, swept)
                apply(rec.state, event)
                rec.partition = raw.partition
                rec.offsets[tp] = raw.offset
                # Scored after every event, as of the user's own latest event
                # (never earlier than a previous scoring): then the changes do
                # not depend on how the stream was cut into batches, and a
                # replay of history gives the same changes at the same times.
                at = max(rec.state.last_seen, rec.scored_at)
                rows.append(raw_row(rec.state, at))
                tl.steps.append(Step(at, "events", len(rows) - 1))
                rec.scored_at = at
                rec.due = self._next_due(rec.state, at)
                result.applied += 1
                counted[raw.topic, event.event_type, "applied"] += 1
                batch_time = max(batch_time, event.timestamp)
                latest[uid] = max(latest.get(uid, 0), event.timestamp)
            if tl.steps:
                timelines[uid] = tl

        stream_time = max(stored_time, batch_time)
        await self._bind_classes()  # before anything of this batch is published
        await self._dead_letter(late)  # before the commit, like the changes
        messages = await self._score_publish_commit(
            timelines, rows, partition_offsets, stream_time, partition_times, swept
        )
        self._count_dead_letters(late)
        result.dead_lettered = len(late)

        # Counters only after the commit: a re-run batch must not count twice.
        for (topic, event_type, outcome), n in counted.items():
            metrics.EVENTS.labels(topic, event_type, outcome).inc(n)
        now_ms = self._clock_ms()
        for uid, msg in messages:
            if msg is not None and msg["trigger"] == "events":
                metrics.EVENT_TO_PUBLISH.observe(max(0.0, (now_ms - latest[uid]) / 1000))
        if stream_time:
            metrics.STREAM_TIME.set(stream_time / 1000)
        result.changes = [m for _, m in messages if m is not None]
        result.users = len(timelines)
        return result

    def _next_due(self, state: UserState, at_ms: int) -> int:
        """Event time of the next time-driven step after ``at_ms`` (0 = none left).

        A function of the user's state and the audiences file only, never of
        the user's memberships: then a replay in any batches takes the same
        steps as living through the stream.
        """
        last_seen, due = state.last_seen, 0
        for offset in self._step_offsets:
            if last_seen + offset > at_ms:
                due = last_seen + offset
                break
        audiences = self.audiences
        if audiences is None or not audiences.clock_offsets:
            return due
        for field_name, offsets in audiences.clocks:
            anchor = getattr(state, field_name)
            if anchor is None:  # never ordered: that clock never reaches a threshold
                continue
            k = bisect.bisect_right(offsets, at_ms - anchor)  # the first one still ahead
            if k < len(offsets):
                t = anchor + offsets[k]
                if due == 0 or t < due:
                    due = t
        if self.cfg.retention_ms > 0:
            due = min(due, last_seen + self.cfg.retention_ms) if due else due
        return due

    def _catch_up(
        self,
        tl: Timeline,
        until: int,
        rows: list[tuple[float, ...]],
        swept: list[int] | None = None,
    ) -> None:
        """Take every time-driven step of ``tl``'s user due at or before ``until``.

        The live sweep and the batch path both come through here, so whether a
        step is taken by the sweep or just before the user's next event, it
        happens at the same event time and with the same state. ``swept``
        collects the rows it adds.
        """
        rec = tl.record
        while rec.due and rec.due <= until and rec.state.events:
            at = rec.due
            if at - rec.state.last_seen >= self.cfg.retention_ms > 0:
                # Retention: the user is erased, in place (the caller holds
                # this record). Segment and version go in the scoring walk,
                # which publishes the tombstone; the revision stays for the
                # commit's concurrency check.
                tl.steps.append(Step(at, "retention", -1))
                rec.state, rec.offsets, rec.seen = UserState(), {}, SeenEvents()
                rec.scored_at = rec.due = 0
                return
            rows.append(raw_row(rec.state, at))
            regular = (at - rec.state.last_seen) in self._step_offset_set
            tl.steps.append(Step(at, "inactivity" if regular else "audience", len(rows) - 1))
            if swept is not None:
                swept.append(len(rows) - 1)
            rec.scored_at = at
            rec.due = self._next_due(rec.state, at)

    async def _score_publish_commit(
        self,
        timelines: dict[str, Timeline],
        rows: list[tuple[float, ...]],
        partition_offsets: dict[str, int],
        stream_time: int,
        partition_times: dict[int, int],
        swept: list[int] | None = None,
    ) -> list[tuple[str, dict[str, Any] | None]]:
        """Score every step in one forward pass, apply hysteresis in each user's
        order, publish the changes, commit. Shared by event batches and the
        time-driven sweep, so both follow one rule. ``None`` = a tombstone.

        An event batch passes ``swept``, the rows of its inactivity re-scores:
        the others, one per arriving event, are what drift is measured on.
        """
        model = self.model()
        messages: list[tuple[str, dict[str, Any] | None]] = []
        side: list[tuple[str, str, dict[str, Any] | None]] = []  # (topic, user, message)
        # The raw rows as one array: the model's input is made from it, and the
        # rule audiences read it as it is (before log1p).
        raw = np.asarray(rows, dtype=np.float64).reshape(-1, N_FEATURES)
        x = transform(raw)
        scores = model.scorer.predict(x) if rows else np.zeros((0, len(model.classes)))
        # As Python objects, converted once for the batch, not per row.
        probs: list[list[float]] = scores.tolist()
        leaders = clear_leaders(scores)
        classes = model.classes

        def rounded(row: int) -> dict[str, float]:
            return dict(zip(classes, [round(v, 4) for v in probs[row]], strict=True))

        emitted_at = iso(self._clock_ms())
        playbook = self.cfg.playbook
        explain: list[tuple[int, int, dict[str, Any]]] = []  # (row, class, message)
        expired = 0
        segment_at = [""] * len(rows)  # each row's segment once decided: audiences read it
        for uid, tl in timelines.items():
            rec = tl.record
            unrounded = -1  # the row of a scoring rec.probabilities does not hold yet
            for step in tl.steps:
                if step.row >= 0:
                    segment_at[step.row] = rec.segment or ""
                if step.trigger == "audience":
                    continue  # audiences only (below): the segment stays as decided
                if step.row < 0:  # retention erasure
                    unrounded = -1
                    expired += 1
                    if rec.segment is not None and self.cfg.segment_topic_template:
                        side.append(
                            exited_event(
                                self.cfg.segment_topic_template,
                                uid,
                                rec.segment,
                                None,
                                rec.version,  # that of the change that put them there
                                iso(step.at),
                                emitted_at,
                                model.version,
                                "retention",
                            )
                        )
                    messages.append((uid, None))
                    rec.segment, rec.version = None, 0
                    rec.probabilities, rec.model_version = None, None
                    continue
                rec.model_version = model.version
                leader = leaders[step.row]
                if leader >= 0 and classes[leader] == rec.segment:
                    # Already in the segment that leads by more than rounding
                    # can change: decide() would keep it. Only the user's last
                    # scoring needs its rounded probabilities (below).
                    unrounded = step.row
                    continue
                # Decided on the published (rounded) values, which are what
                # subscribers see. A row's scores do not depend on the rest of
                # its batch (Scorer.predict), so a re-run decides the same way.
                p = rounded(step.row)
                new = decide(rec.segment, p, self.cfg.hysteresis)
                rec.probabilities = p
                unrounded = -1
                if new == rec.segment:
                    continue
                rec.version += 1
                previous = rec.segment
                msg: dict[str, Any] = {
                    "user_id": uid,
                    "segment": new,
                    "previous_segment": previous,
                    "probabilities": rec.probabilities,
                    "model_version": model.version,
                    "event_time": iso(step.at),
                    "emitted_at": emitted_at,
                    "version": rec.version,
                    "trigger": step.trigger,
                    "explanation": [],
                    "action": playbook.action_for(previous, new) if playbook else None,
                }
                messages.append((uid, msg))
                explain.append((step.row, model.classes.index(new), msg))
                rec.segment = new
                segment_at[step.row] = new
            if unrounded >= 0:
                rec.probabilities = rounded(unrounded)
        if explain and self.cfg.explain_top_k:
            # One extra forward pass for all changes, none for the rest.
            reasons = top_reasons(
                model.scorer,
                x[[r for r, _, _ in explain]],
                [c for _, c, _ in explain],
                self.cfg.explain_top_k,
            )
            for (_, _, msg), why in zip(explain, reasons, strict=True):
                msg["explanation"] = why
        audiences = self.audiences
        if audiences is not None:
            side += self._audience_events(audiences, timelines, raw, segment_at, scores, emitted_at)
        template = self.cfg.segment_topic_template
        if template:
            for uid, m in messages:
                if m is not None:
                    side.extend(segment_events(template, uid, m))

        await self._bind_classes()
        if self.audiences is not None and self.cfg.key_ttl_ms > 0:
            self.store.know_audiences(self.audiences.names)
        # Publish before the Redis commit: if we die in between, the batch is
        # replayed from the old state and the same change (same version, same
        # content but emitted_at) is published again: a duplicate subscribers
        # can drop, never a loss.
        out = [
            Outgoing(self.cfg.segments_topic, uid.encode(), None if m is None else orjson.dumps(m))
            for uid, m in messages
        ]
        out += [
            Outgoing(t, uid.encode(), None if m is None else orjson.dumps(m)) for t, uid, m in side
        ]
        # A future (a task if the sink returned a coroutine), so it can be cancelled.
        acked = asyncio.ensure_future(self.sink.publish(out)) if out else None
        t_pub = time.perf_counter()
        # Encoded while the broker acknowledges the changes (librdkafka sends
        # them from its own threads); sent only once every change is acked.
        try:
            prepared = self.store.prepare_commit(
                (
                    UserWrite(
                        uid,
                        tl.record,
                        tl.old_segment,
                        tl.old_partition,
                        tl.old_due,
                        erase=tl.record.state.events == 0,
                        old_audiences=tl.old_audiences,
                    )
                    for uid, tl in timelines.items()
                ),
                partition_offsets,
                stream_time,
                self.cfg.key_ttl_ms,
                partition_times,
            )
        except BaseException:
            if acked is not None:
                acked.cancel()  # the batch re-runs; nobody will await this one
            raise
        if acked is not None:
            await acked
            # From the end of producing to the last acknowledgement (or to the
            # end of the encoding above, which overlaps it).
            metrics.PUBLISH_SECONDS.observe(time.perf_counter() - t_pub)
        t1 = time.perf_counter()
        await self.store.send_commit(prepared)
        self.stream_time = max(self.stream_time, stream_time)
        metrics.REDIS_SECONDS.labels("commit").observe(time.perf_counter() - t1)
        for _, m in messages:
            if m is not None:
                metrics.SEGMENT_CHANGES.labels(m["previous_segment"] or "none", m["segment"]).inc()
        for topic, _, m in side:
            if m is not None and topic == self.cfg.audiences_topic:
                metrics.AUDIENCE_CHANGES.labels(m["audience"], m["action"]).inc()
        if expired:
            metrics.EXPIRED_USERS.inc(expired)
        if swept is not None and self._observe_inputs is not None and rows:
            # After the commit, so a re-run batch is not counted twice. Only the
            # rows of arriving events: the training reference is made of those
            # (model.drift.serving_rows), and a re-score's user is by
            # definition one who has gone quiet.
            self._observe_inputs(model, x, swept)
        return messages

    def _audience_events(
        self,
        audiences: Audiences,
        timelines: dict[str, Timeline],
        raw: np.ndarray,
        segment_at: list[str],
        scores: np.ndarray,
        emitted_at: str,
    ) -> list[tuple[str, str, dict[str, Any] | None]]:
        """Entered/exited events for every scoring of the batch, in each user's order."""
        codes = audiences.codes(raw, segment_at, scores)
        names, bits = audiences.names, audiences.bits
        topic = self.cfg.audiences_topic
        out: list[tuple[str, str, dict[str, Any] | None]] = []
        for uid, tl in timelines.items():
            rec = tl.record
            steps = [(s.at, s.row if s.row >= 0 else None) for s in tl.steps]
            now, changes = membership_walk(rec.audiences, steps, names, codes, bits)
            for audience, action, at in changes:
                rec.audience_version += 1
                event = {
                    "user_id": uid,
                    "audience": audience,
                    "action": action,
                    "event_time": iso(at),
                    "emitted_at": emitted_at,
                    "version": rec.audience_version,
                }
                out.append((topic, uid, event))
            if any(s.row < 0 for s in tl.steps):  # erased by retention
                out.append((topic, uid, None))
                rec.audience_version = 0
            rec.audiences = now
        return out

    async def reevaluate(
        self,
        partitions: Iterable[int],
        limit: int = 500,
        still_owned: Callable[[int], bool] = lambda _: True,
    ) -> BatchResult:
        """Time-driven steps for the users of ``partitions`` (the ones this worker owns).

        Each partition is swept up to its own stream time, and each due user is
        scored *as of its due time* (last activity + threshold), not as of
        whenever this sweep happens to run: a replay of history yields the same
        changes at the same event times as living through it, and a lagging
        partition's users are not judged inactive on another partition's clock.
        ``result.records`` is 1 when some partition had more than ``limit`` due.
        """
        total = BatchResult(records=0)
        for part in partitions:
            if not still_owned(part):  # revoked meanwhile: its next owner sweeps it
                continue
            swept, _ = await self._retrying(
                functools.partial(self._sweep, part, limit), "reevaluate"
            )
            total.users += swept.users
            total.changes += swept.changes
            total.records = max(total.records, swept.records)
        return total

    async def _sweep(self, part: int, limit: int) -> BatchResult:
        until = (await self.store.partition_times()).get(part, 0)
        due = await self.store.due_for_reevaluation(part, until, limit)
        if not due:
            return BatchResult(records=0)
        loaded, stream_time, _ = await self.store.load([u for u, _ in due])
        timelines: dict[str, Timeline] = {}
        rows: list[tuple[float, ...]] = []
        for uid, when in due:
            rec = loaded[uid]
            if not rec.exists:
                await self.store.reap(uid, part, when)  # erased, or expired by the backstop TTL
            elif rec.partition != part or rec.due != when:
                # Filed under another partition or time than the record says
                # (it moved, or came back after its bucket expired): drop it.
                await self.store.unschedule(uid, part, when)
            else:
                tl = Timeline(rec, rec.segment, rec.partition, rec.due, old_audiences=rec.audiences)
                self._catch_up(tl, until, rows)
                timelines[uid] = tl
        messages = await self._score_publish_commit(timelines, rows, {}, stream_time, {})
        return BatchResult(
            records=int(len(due) >= limit),
            users=len(timelines),
            changes=[m for _, m in messages if m is not None],
        )

    async def _retrying(
        self, run: Callable[[], Awaitable[_T]], what: str, poison: bool = False
    ) -> tuple[_T, int]:
        """Run ``run`` until it commits; return its result and the attempts it took.

        Nothing escapes but cancellation, and (with ``poison``) :class:`Poisoned`
        once a non-transient error has recurred ``max_batch_failures`` times in
        a row: an exception out of the agent would let Faust move past an
        unapplied batch, whose events dedup would then skip. A refused commit
        re-runs at once; anything else backs off, with jitter.
        """
        attempt = 0
        same, signature = 0, ""
        while True:
            attempt += 1
            try:
                out = await run()
                if self._health is not None:
                    self._health.redis_ok, self._health.redis_error = True, None
                return out, attempt
            except ConflictError as exc:
                metrics.COMMIT_CONFLICTS.inc()
                log.info("%s re-run after a concurrent write: %s", what, exc)
                if gone := exc.gone:
                    # Erased (`forget`) since we read them, after we published
                    # their changes: say again that they are gone, so
                    # subscribers drop those changes and accept the re-run's.
                    await self._retrying(lambda: self._tombstone(gone), "tombstone")
                if attempt > 1:  # a rebalance in progress: let the other writer finish
                    await self._backoff(attempt - 1, exc)
            except StoreMismatch as exc:
                # Fatal: stored state belongs to another set of classes. Stop
                # the worker with an error (the batch stays unacked) instead
                # of retrying forever.
                log.critical("%s; stopping the worker", exc)
                self._fatal = exc
                if self._on_fatal is None:
                    raise
                await self._on_fatal(exc)
                raise asyncio.CancelledError(str(exc)) from None
            except RedisError as exc:
                metrics.REDIS_ERRORS.labels(what).inc()
                if self._health is not None:
                    self._health.redis_ok = False
                    self._health.redis_error = f"{type(exc).__name__}: {exc}"
                await self._backoff(attempt, exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a failed publish, say
                if poison and not transient(exc):
                    now = f"{type(exc).__name__}: {str(exc)[:300]}"
                    same, signature = (same + 1, now) if now == signature else (1, now)
                    if same >= self.cfg.max_batch_failures:
                        metrics.POISONED_BATCHES.labels(what).inc()
                        raise Poisoned(what, signature) from exc
                log.exception("%s failed; retrying it", what)
                await self._backoff(attempt, exc)

    async def _bind_classes(self) -> None:
        classes = self.model().classes
        if self.store.classes != classes:  # once per process
            await self.store.bind_classes(classes)

    async def _tombstone(self, users: Sequence[str]) -> None:
        topics = output_topics(
            self.cfg.segments_topic, self.cfg.segment_topic_template, self.model().classes
        )
        await self.sink.publish(tombstones(users, topics))

    async def _backoff(self, attempt: int, exc: Exception) -> None:
        if self._should_stop() or self._fatal is not None:
            raise asyncio.CancelledError(f"stopping with the batch unapplied: {exc}")
        # Equal jitter: workers that failed together do not retry together.
        ceiling = min(self.cfg.retry_max_s, self.cfg.retry_initial_s * 2 ** (attempt - 1))
        delay = ceiling * random.uniform(0.5, 1.0)
        log.warning(
            "%s: %s; batch not applied, retry %d in %.1fs",
            type(exc).__name__,
            exc,
            attempt,
            delay,
        )
        await asyncio.sleep(delay)


def output_topics(
    segments_topic: str, segment_topic_template: str | None, classes: Iterable[str]
) -> list[str]:
    """Every topic the worker publishes a user's data to (the DLQ aside)."""
    out = [segments_topic]
    if segment_topic_template:
        out += [segment_topic_template.format(segment=c) for c in classes]
    return out


def tombstones(users: Iterable[str], topics: Sequence[str]) -> list[Outgoing]:
    """A tombstone (null value) per user and topic: compaction then drops what
    the user's key held there, and consumers that materialise a topic drop them."""
    return [Outgoing(t, u.encode(), None) for u in users for t in topics]


def _merged(a: BatchResult, b: BatchResult) -> BatchResult:
    return BatchResult(
        records=a.records + b.records,
        applied=a.applied + b.applied,
        duplicates=a.duplicates + b.duplicates,
        dead_lettered=a.dead_lettered + b.dead_lettered,
        changes=a.changes + b.changes,
        users=a.users + b.users,
        attempts=a.attempts + b.attempts,
    )


def exited_event(
    template: str,
    user_id: str,
    segment: str,
    next_segment: str | None,
    version: int,
    event_time: str,
    emitted_at: str,
    model_version: str,
    trigger: str,
) -> tuple[str, str, dict[str, Any]]:
    return (
        template.format(segment=segment),
        user_id,
        {
            "type": "segment-exited",
            "user_id": user_id,
            "segment": segment,
            "next_segment": next_segment,
            "version": version,
            "event_time": event_time,
            "emitted_at": emitted_at,
            "model_version": model_version,
            "trigger": trigger,
        },
    )


def segment_events(
    template: str, user_id: str, change: dict[str, Any]
) -> list[tuple[str, str, dict[str, Any]]]:
    """The per-segment view of one change: exited on the old topic, entered on the new."""
    out = []
    if change["previous_segment"] is not None:
        out.append(
            exited_event(
                template,
                user_id,
                change["previous_segment"],
                change["segment"],
                change["version"],
                change["event_time"],
                change["emitted_at"],
                change["model_version"],
                change["trigger"],
            )
        )
    out.append(
        (
            template.format(segment=change["segment"]),
            user_id,
            {
                "type": "segment-entered",
                "user_id": user_id,
                "segment": change["segment"],
                "previous_segment": change["previous_segment"],
                "probability": change["probabilities"][change["segment"]],
                "action": change["action"],
                "version": change["version"],
                "event_time": change["event_time"],
                "emitted_at": change["emitted_at"],
                "model_version": change["model_version"],
                "trigger": change["trigger"],
            },
        )
    )
    return out
