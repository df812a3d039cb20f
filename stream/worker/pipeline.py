"""One batch, start to finish: decode, dead-letter, fold, score, publish, commit.

This is the whole worker minus Faust. The agent hands it a list of raw
records and acks them only after :meth:`BatchProcessor.process` returns:

1. decode; dead-letter the rejects (stream.worker.checkpoint owns the order from here);
2. read the touched users in one round trip and fold the new events,
   skipping any the user record says it already holds (stream.worker.batch);
3. take the time-driven steps due, and score every step of every touched user
   in one forward pass, with hysteresis;
4. publish the changes, then commit the state (stream.worker.checkpoint); the
   caller acks.

Redis errors are retried with capped backoff *inside* ``process``: raising
out of the agent would make Faust ack the batch, and nothing may be acked
before it is applied.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Literal, TypeVar

import numpy as np
import orjson

from model.explain import top_reasons
from model.features import raw_row, stack_rows, transform
from model.registry import LoadedModel
from model.scorer import TRAITS, Scores
from stream import metrics
from stream.core.dedup import SeenEvents, admit
from stream.core.events import DAY_MS, Fact, Reason, Rejected, iso
from stream.core.fold import UserState, apply
from stream.sinks import Outgoing
from stream.worker.batch import BatchResult, Step, Timeline, known, merged, redelivered
from stream.worker.batch_clock import Clocks
from stream.worker.changes import (
    audience_events,
    output_topics,
    segment_events,
    tombstones,
)
from stream.worker.checkpoint import Checkpoint, Sink
from stream.worker.decisions import decide_batch
from stream.worker.decode_step import decode_batch
from stream.worker.faults.dead_letters import count_dead_letters, dlq_record
from stream.worker.faults.failures import Poisoned, Retrying
from stream.worker.faults.set_aside import sweep_apart
from stream.worker.faults.stalls import Stalls
from stream.worker.pipeline_config import PipelineConfig
from stream.worker.records import RawRecord
from stream.worker.rules.audiences import Audiences
from stream.worker.schedule import next_due
from stream.worker.state.record_codec import UserRecord
from stream.worker.state.store import (
    StateStore,
    UserWrite,
)
from stream.worker.state.topic_marks import TopicMarks
from stream.worker.traits import clean as clean_traits
from stream.worker.web.health import Health

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class BatchProcessor(Retrying):
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
        highwater: Callable[[str], int | None] | None = None,
        marks: TopicMarks | None = None,
    ) -> None:
        self.store = store
        self.sink = sink
        #: The commit order: dead letters, changes, state (the caller acks).
        self.checkpoint = Checkpoint(sink, store)
        self.model = model
        self.cfg = config
        self._clock_ms = clock_ms
        self._should_stop = should_stop
        self._on_fatal = on_fatal
        #: Gets each committed event batch's model inputs, and which of their
        #: rows are re-scores rather than arriving events (drift).
        self._observe_inputs = observe_inputs
        #: Offset marks per topic identity (None: bare ``topic:partition``).
        self.marks = marks
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
        self._stalls = self.stalls = Stalls(health)
        #: The last record dead-lettered as processing_failed, by its failure:
        #: a next record failing the same way is not poison (stream.worker.faults.failures).
        self._last_culprit: str | None = None
        #: Replaced in place when the audiences file is reloaded (between batches).
        self._audiences: Audiences | None = None
        self.audiences = config.audiences
        #: Stream time as of the last batch this processor committed (0 = not yet known).
        self.stream_time = 0
        #: The clock of each partition number (stream.core.clock).
        self.clocks = Clocks(store, highwater, health)
        self._kinds: dict[str, Literal["clickstream", "orders"]] = {
            config.clickstream_topic: "clickstream",
            config.orders_topic: "orders",
        }

    # -- step 1: decode and dead-letter -----------------------------------

    def _decode(
        self, records: Sequence[RawRecord]
    ) -> tuple[list[tuple[RawRecord, Fact]], list[tuple[RawRecord, Rejected]]]:
        return decode_batch(
            records,
            self._kinds,
            self._poisoned,
            now_ms=self._clock_ms(),
            limits=self.cfg.limits,
            pseudonymize_key=self.cfg.pseudonymize_key,
        )

    async def _dead_letter(self, bad: list[tuple[RawRecord, Rejected]]) -> None:
        """Send to the DLQ and wait until the broker has them (counted by the caller)."""
        if bad:
            whole, head = self.cfg.limits.max_bytes, self.cfg.dlq_head_bytes
            await self.checkpoint.dead_letter(
                [dlq_record(self.cfg.dlq_topic, rec, why, whole, head) for rec, why in bad]
            )

    # -- steps 2-5 ---------------------------------------------------------

    async def process(self, records: Sequence[RawRecord]) -> BatchResult:
        """Apply ``records``; returns once they are committed (or dead-lettered).

        A batch that fails the same way ``max_batch_failures`` times is split
        in halves, each applied on its own, down to the record that fails: it
        is dead-lettered (``processing_failed``) and the rest go on. Partition
        order is kept: the halves are applied in order. A record failing the
        way the last one dead-lettered did is no culprit: the fault is not a
        record's, and the batch stalls (``no_culprit``) until it goes.
        """
        try:
            return await self._process(records)
        except Poisoned as exc:
            if len(records) == 1:
                if exc.signature == self._last_culprit:
                    # A second record failing as the last culprit did: the
                    # fault is the code's, the model's or the data's as a
                    # whole, not this record's. Stall, alerted, until fixed.
                    return await self._stall_on(records, exc)
                self._last_culprit = exc.signature
                rec = records[0]
                why = f"failed {self.cfg.max_batch_failures} times: {exc.signature}"
                log.error("dead-lettering %s[%d]@%d: %s", rec.topic, rec.partition, rec.offset, why)
                self._poisoned[(rec.topic, rec.partition, rec.offset)] = Rejected(
                    Reason.PROCESSING_FAILED, why
                )
                return await self._process(records)
            if exc.signature == self._last_culprit:
                return await self._stall_on(records, exc)
            mid = len(records) // 2
            log.warning(
                "a batch of %d records failed the same way %d times (%s): applying it in halves",
                len(records),
                self.cfg.max_batch_failures,
                exc.signature,
            )
            first = await self.process(records[:mid])
            second = await self.process(records[mid:])
            return merged(first, second)

    async def _stall_on(self, records: Sequence[RawRecord], exc: Poisoned) -> BatchResult:
        """Retry ``records`` whole, never dead-lettering, until they go through."""
        while True:
            self._stalls.failing("no_culprit", exc.what, exc)
            try:
                return await self._process(records)  # backs off inside; stops on shutdown
            except Poisoned as again:
                exc = again

    async def _process(self, records: Sequence[RawRecord]) -> BatchResult:
        started = time.perf_counter()
        good, bad = self._decode(records)
        if bad:  # at least once, like everything this publishes
            await self._retrying(lambda: self._dead_letter(bad), "dead_letter", poison=True)
            count_dead_letters(bad)
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
        good: list[tuple[RawRecord, Fact]],
        partition_offsets: dict[str, int],
    ) -> BatchResult:
        result = BatchResult()
        # Stream time per partition number *before* each event, in batch
        # (= partition) order: a user's schedule is caught up to it before the
        # event is folded, exactly as a sweep between the two would have done.
        by_user: dict[str, list[tuple[RawRecord, str, Fact, int]]] = {}
        t0 = time.perf_counter()
        users = list(dict.fromkeys(e.user_id for _, e in good))
        await self.clocks.start()
        loaded, stored_time, ptimes = await self.store.load(users)
        self.stream_time = max(self.stream_time, stored_time)
        metrics.REDIS_SECONDS.labels("load").observe(time.perf_counter() - t0)
        running = dict(ptimes)
        clocks = self.clocks.batch(running, [raw for raw, _ in good])
        late: list[tuple[RawRecord, Rejected]] = []
        bound = self.cfg.max_lateness_ms
        tps = await self._mark_names(good, clocks.names, loaded)
        for (raw, event), name in zip(good, clocks.names, strict=True):
            tp = tps[name]
            before = clocks.before(name, raw.partition)
            if (
                bound
                and event.timestamp <= before - bound
                and not known(
                    loaded[event.user_id],
                    tp,
                    raw.offset,
                    event,
                    self.cfg.click_dedup_ms,
                    self.cfg.retention_ms,
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
            running[name] = max(running.get(name, 0), event.timestamp)
        partition_times = {tp: t for tp, t in running.items() if t > ptimes.get(tp, 0)}

        timelines: dict[str, Timeline] = {}
        rows: list[tuple[float, ...]] = []  # raw features, one per step; transformed at once
        swept: list[int] = []  # those of the rows that are inactivity re-scores
        counted: Counter[tuple[str, str, str]] = Counter()  # (topic, event_type, outcome)
        latest: dict[str, int] = {}
        batch_time = 0
        past_cap = 0  # clicks counted past their hour's memory (stream.core.dedup)
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
                # age; then the rule training applies too (stream.core.dedup).
                if redelivered(rec, tp, raw.offset) or not admit(
                    rec.seen, event, rec.state.last_seen, window, self.cfg.retention_ms
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
            past_cap += rec.seen.past_cap

        stream_time = max(stored_time, batch_time)
        await self._bind_classes()  # before anything of this batch is published
        await self._dead_letter(late)  # before the commit, like the changes
        messages = await self._score_publish_commit(
            timelines, rows, partition_offsets, stream_time, partition_times, swept
        )
        self.clocks.applied(partition_offsets)
        count_dead_letters(late)
        result.dead_lettered = len(late)

        # Counters only after the commit: a re-run batch must not count twice.
        for (topic, event_type, outcome), n in counted.items():
            metrics.EVENTS.labels(topic, event_type, outcome).inc(n)
        if past_cap:
            metrics.CLICK_MEMORY_FULL.inc(past_cap)
        now_ms = self._clock_ms()
        for uid, msg in messages:
            if msg is not None and msg["trigger"] == "events":
                metrics.EVENT_TO_PUBLISH.observe(max(0.0, (now_ms - latest[uid]) / 1000))
        if stream_time:
            metrics.STREAM_TIME.set(stream_time / 1000)
        result.changes = [m for _, m in messages if m is not None]
        result.users = len(timelines)
        return result

    async def _mark_names(
        self, good: list[tuple[RawRecord, Fact]], names: list[str], loaded: dict[str, UserRecord]
    ) -> dict[str, str]:
        """Each partition's offset-mark key, by its "topic:partition" (``names``, per
        record). A record its user's mark would skip may come from a recreated
        topic: its identity is checked first."""
        marks = self.marks
        parts = {n: n.rpartition(":") for n in dict.fromkeys(names)}
        if marks is None:
            return {n: n for n in parts}
        for _ in range(2):
            tps = {n: marks.mark(t, int(p)) for n, (t, _, p) in parts.items()}
            suspects = {
                raw.topic
                for (raw, event), n in zip(good, names, strict=True)
                if raw.offset <= loaded[event.user_id].offsets.get(tps[n], -1)
            }
            if not await marks.check(suspects):
                break
        return tps

    @property
    def audiences(self) -> Audiences | None:
        return self._audiences

    @audiences.setter
    def audiences(self, audiences: Audiences | None) -> None:
        """Set at start and on a reload: the store learns the names once, not per batch
        (a new record is cleaned out of every index the store knows)."""
        self._audiences = audiences
        if audiences is not None:
            self.store.know_audiences(audiences.names)

    def _next_due(self, state: UserState, at_ms: int) -> int:
        return next_due(state, at_ms, self._step_offsets, self.audiences, self.cfg.retention_ms)

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
        partition_times: dict[str, int],
        swept: list[int] | None = None,
    ) -> list[tuple[str, dict[str, Any] | None]]:
        """Score every step in one forward pass (probabilities and traits), decide
        in each user's order (:func:`~stream.worker.decisions.decide_batch`), explain the changes,
        publish, commit. Shared by event batches and the time-driven sweep, so
        both follow one rule. ``None`` = a tombstone.

        An event batch passes ``swept``, the rows of its inactivity re-scores:
        the others, one per arriving event, are what drift is measured on.
        """
        model = self.model()
        # The raw rows as one array: the model's input is made from it, and the
        # rule audiences read it as it is (before log1p).
        raw = stack_rows(rows)
        x = transform(raw)
        if rows:
            # One forward pass gives both; traits held to the contract once, so
            # rule audiences and the messages read the same values.
            scored = model.scorer.score(x)
            scores = Scores(scored.probabilities, clean_traits(scored.traits))
        else:
            scores = Scores(np.zeros((0, len(model.classes))), np.zeros((0, len(TRAITS))))
        emitted_at = iso(self._clock_ms())
        decided = decide_batch(timelines, scores, model, self.cfg, emitted_at)
        messages, side = decided.messages, decided.side
        if decided.explain and self.cfg.explain_top_k:
            # One extra forward pass for all changes, none for the rest.
            reasons = top_reasons(
                model.scorer,
                x[[r for r, _, _ in decided.explain]],
                [c for _, c, _ in decided.explain],
                self.cfg.explain_top_k,
            )
            for (_, _, msg), why in zip(decided.explain, reasons, strict=True):
                msg["explanation"] = why
        audiences = self.audiences
        if audiences is not None:
            side += audience_events(
                audiences,
                self.cfg.audiences_topic,
                timelines,
                raw,
                decided.segment_at,
                scores,
                emitted_at,
            )
        template = self.cfg.segment_topic_template
        if template:
            for uid, m in messages:
                if m is not None:
                    side.extend(segment_events(template, uid, m))

        await self._bind_classes()
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
        writes = (
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
        )
        await self.checkpoint.commit(
            out,
            lambda: self.store.prepare_commit(
                writes, partition_offsets, stream_time, self.cfg.key_ttl_ms, partition_times
            ),
        )
        self.stream_time = max(self.stream_time, stream_time)
        for _, m in messages:
            if m is not None:
                metrics.SEGMENT_CHANGES.labels(m["previous_segment"] or "none", m["segment"]).inc()
        for topic, _, m in side:
            if m is not None and topic == self.cfg.audiences_topic:
                metrics.AUDIENCE_CHANGES.labels(m["audience"], m["action"]).inc()
        if decided.expired:
            metrics.EXPIRED_USERS.inc(decided.expired)
        if swept is not None and self._observe_inputs is not None and rows:
            # After the commit, so a re-run batch is not counted twice. Only the
            # rows of arriving events: the training reference is made of those
            # (model.drift.serving_rows), and a re-score's user is by
            # definition one who has gone quiet.
            self._observe_inputs(model, x, swept)
        return messages

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
            try:
                swept, _ = await self._retrying(
                    functools.partial(self._sweep, part, limit), "reevaluate", poison=True
                )
            except Poisoned as exc:
                swept = await sweep_apart(self, part, limit, exc)
            total.users += swept.users
            total.changes += swept.changes
            total.records = max(total.records, swept.records)
        return total

    async def _sweep(
        self, part: int, limit: int, only: frozenset[str] | None = None
    ) -> BatchResult:
        until = await self.clocks.until(part)
        due = await self.store.due_for_reevaluation(part, until, limit)
        if only is not None:
            due = [(u, w) for u, w in due if u in only]
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

    async def _bind_classes(self) -> None:
        classes = self.model().classes
        if self.store.classes != classes:  # once per process
            await self.store.bind_classes(classes)

    async def _tombstone(self, users: Sequence[str]) -> None:
        topics = output_topics(
            self.cfg.segments_topic, self.cfg.segment_topic_template, self.model().classes
        )
        if self.audiences is not None:  # the batch may have published their audiences too
            topics.append(self.cfg.audiences_topic)
        await self.sink.publish(tombstones(users, topics))
