"""`segmenter retrain`: the scheduled job. Replay -> train -> gate -> promote.

One run at a time across the fleet: a Redis lock (SET NX PX, released only by
its owner) keeps two schedulers from training at once; a run that finds the
lock taken is counted as ``skipped``.

Window: ``--window`` bounds the *cutoffs* (the training examples), not the
history folded into them. Every event up to ``until_ms`` is replayed and
folded, so a user's features at a cutoff (tenure, total spend, order count,
...) count their older events exactly as the worker's state in Redis does;
cutting the history first would give long-standing customers the features of
new ones.

Gate (model/training/gate/judge.py): the candidate, the serving model and the baselines are
scored on the *same* rows, the candidate's validation window from the latest
data, with one primary metric (high_value F1). A serving model trained on
another population (the bootstrap, synthetic data) is scored like a baseline;
one trained on the same topics may lead by the tolerance. The candidate must
also pass the directional checks and the archetypes. Workers pick the new
``current`` up without a restart.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from model.training.gate.judge import judge
from model.training.sources import decode_records
from model.training.train import TrainConfig, train_from_events
from stream import metrics
from stream.announce import promote_and_announce
from stream.core.events import Fact, iso
from stream.core.fold import DAY_MS
from stream.erasure import ErasedUsers
from stream.http_metrics import serve_in_thread
from stream.redis_client import sync_client_from_url
from stream.settings import Settings
from stream.topics import ensure_topics
from stream.training.replay import replay_topics

log = logging.getLogger("segmenter.retrain")

_RELEASE_LUA = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)


@dataclass(frozen=True)
class RetrainConfig:
    #: Cutoffs (training examples) fall in the last ``window_days`` of event time.
    window_days: float = 365.0
    #: Read no event after this (ms, event time); None = up to the newest event.
    until_ms: int | None = None
    horizon_ms: int = 90 * DAY_MS
    step_ms: int = 7 * DAY_MS
    tolerance: float = 0.01
    lock_ttl_s: float = 3600.0
    train: TrainConfig = field(default_factory=TrainConfig)
    #: Called with the number of records replayed since the last call.
    on_progress: Callable[[int], None] | None = None


@dataclass
class RunResult:
    outcome: str  # promoted | candidate | skipped | failed
    version: str | None = None
    reason: str = ""
    candidate_f1: float | None = None
    current_f1: float | None = None


def training_events(settings: Settings, cfg: RetrainConfig, client: Any) -> list[Fact]:
    """The events a retrain learns from: the input topics replayed, without the
    events of erased users from before their erasure (the erasure list)."""
    # From the start of each partition, not offsets-for-times at the window's
    # lower bound: features at the first cutoff in the window need every
    # earlier event of the user. The topics' retention bounds how far back
    # that goes, as it bounds what the worker could have folded.
    decoded = decode_records(
        replay_topics(
            settings.kafka_client_config(),
            list(settings.input_topics),
            on_progress=cfg.on_progress,
        ),
        clickstream_topic=settings.topic_clickstream,
        orders_topic=settings.topic_orders,
        until_ms=cfg.until_ms,
        limits=settings.decode_limits(),
    )
    # Erased users' events from before their erasure never become training rows.
    erased = ErasedUsers.load(settings, client)
    events = [e for e in decoded.events if erased.keeps(e.user_id, e.timestamp)]
    if len(events) < len(decoded.events):
        log.info("left out %d events of erased users", len(decoded.events) - len(events))
    return events


def run_once(settings: Settings, cfg: RetrainConfig, client: Any) -> RunResult:
    lock_key = f"{settings.redis_prefix}:retrain-lock"
    token = uuid.uuid4().hex
    if not client.set(lock_key, token, nx=True, px=int(cfg.lock_ttl_s * 1000)):
        log.info("another retrain holds %s; skipping this run", lock_key)
        return RunResult("skipped", reason="lock held by another scheduler")
    try:
        # A retrain job may start before any worker has created the input
        # topics: create them (as the worker would) and find nothing to learn.
        ensure_topics(settings)
        events = training_events(settings, cfg, client)
        if not events:
            # A fresh stack: nothing to learn from yet, which is not a failure.
            return RunResult("skipped", reason="no events in the input topics yet")
        newest = max(e.timestamp for e in events)
        since = newest - int(cfg.window_days * DAY_MS)
        log.info(
            "replayed %d events; cutoffs in the %g-day window from %s",
            len(events),
            cfg.window_days,
            iso(since),
        )
        path = train_from_events(
            events,
            settings.model_dir,
            horizon_ms=cfg.horizon_ms,
            step_ms=cfg.step_ms,
            cfg=cfg.train,
            promote=False,
            source=f"replay({','.join(settings.input_topics)}, cutoffs in the last "
            f"{cfg.window_days:g} days)",
            cutoffs_since_ms=since,
        )
        verdict = judge(settings.model_dir, path, cfg.tolerance)
        reason = verdict.reason
        result = RunResult(
            verdict.outcome, path.name, reason, verdict.candidate_f1, verdict.current_f1
        )
        if verdict.passed:
            promote_and_announce(settings, path.name, f"retrain: {reason}")
        log.info("model %s: %s (%s)", path.name, result.outcome, reason)
        return result
    finally:
        client.eval(_RELEASE_LUA, 1, lock_key, token)


def run_forever(settings: Settings, cfg: RetrainConfig, every_s: float, once: bool = False) -> int:
    metrics.init_series()
    serve_in_thread(settings.metrics_host, settings.metrics_port)
    client = sync_client_from_url(
        settings.redis_url, cluster=settings.redis_cluster, **settings.redis_client_kwargs()
    )
    while True:
        started = time.monotonic()
        try:
            result = run_once(settings, cfg, client)
        except Exception as exc:
            log.exception("retrain run failed")
            result = RunResult("failed", reason=f"{type(exc).__name__}: {exc}")
        metrics.RETRAIN_RUNS.labels(result.outcome).inc()
        if result.outcome in ("promoted", "candidate"):
            # Only completed runs: a job that keeps failing goes stale, and alerts.
            metrics.LAST_RETRAIN.set(time.time())
        if once:
            return 0 if result.outcome in ("promoted", "candidate", "skipped") else 1
        time.sleep(max(0.0, every_s - (time.monotonic() - started)))
