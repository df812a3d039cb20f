"""`segmenter retrain`: the scheduled job. Replay -> train -> gate -> promote.

One run at a time across the fleet: a Redis lock (SET NX PX, released only by
its owner) keeps two schedulers from training at once; a run that finds the
lock taken is counted as ``skipped``.

Gate: the candidate and the serving model are scored on the *same* validation
window (the candidate's, built from the latest data). The candidate becomes
current only if its macro-F1 is at least the serving model's minus the
tolerance. Workers pick the new ``current`` up without a restart.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis

from model.evaluate import classification_report
from model.registry import current_version, load_version
from model.sources import decode_records
from model.train import TrainConfig, train_from_events
from stream import metrics
from stream.announce import promote_and_announce
from stream.fold import DAY_MS
from stream.replay import replay_topics
from stream.settings import Settings

log = logging.getLogger("segmenter.retrain")

_RELEASE_LUA = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)


@dataclass(frozen=True)
class RetrainConfig:
    window_days: float = 365.0
    horizon_ms: int = 90 * DAY_MS
    step_ms: int = 7 * DAY_MS
    tolerance: float = 0.01
    lock_ttl_s: float = 3600.0
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class RunResult:
    outcome: str  # promoted | candidate | skipped | failed
    version: str | None = None
    reason: str = ""
    candidate_f1: float | None = None
    current_f1: float | None = None


def gate(candidate_f1: float, current_f1: float | None, tolerance: float) -> tuple[bool, str]:
    """Pure promotion rule, so it is tested apart from training."""
    if current_f1 is None:
        return True, "no serving model to compare with"
    if candidate_f1 >= current_f1 - tolerance:
        return True, f"macro-F1 {candidate_f1:.4f} >= serving {current_f1:.4f} - {tolerance}"
    return False, f"macro-F1 {candidate_f1:.4f} < serving {current_f1:.4f} - {tolerance}"


def _serving_f1(model_dir: Path, x: np.ndarray, y: np.ndarray, classes: list[str]) -> float | None:
    version = current_version(model_dir)
    if version is None:
        return None
    try:
        serving = load_version(model_dir / version)
    except Exception as exc:  # an unusable serving model should not block a good candidate
        log.warning(
            "serving model %s cannot be scored (%s); gate compares with nothing", version, exc
        )
        return None
    if list(serving.classes) != classes:
        return None
    pred = serving.scorer.predict(x).argmax(axis=1)
    return float(classification_report(y, pred, classes)["macro_f1"])


def run_once(settings: Settings, cfg: RetrainConfig, client: Any) -> RunResult:
    lock_key = f"{settings.redis_prefix}:retrain-lock"
    token = uuid.uuid4().hex
    if not client.set(lock_key, token, nx=True, px=int(cfg.lock_ttl_s * 1000)):
        log.info("another retrain holds %s; skipping this run", lock_key)
        return RunResult("skipped", reason="lock held by another scheduler")
    try:
        decoded = decode_records(
            replay_topics(settings.kafka_client_config(), list(settings.input_topics)),
            clickstream_topic=settings.topic_clickstream,
            orders_topic=settings.topic_orders,
        )
        if not decoded.events:
            # A fresh stack: nothing to learn from yet, which is not a failure.
            return RunResult("skipped", reason="no events in the input topics yet")
        newest = max(e.timestamp for e in decoded.events)
        since = newest - int(cfg.window_days * DAY_MS)
        events = [e for e in decoded.events if e.timestamp >= since]
        log.info(
            "replayed %d events (%d in the %s-day window)",
            len(decoded.events),
            len(events),
            cfg.window_days,
        )
        path = train_from_events(
            events,
            settings.model_dir,
            horizon_ms=cfg.horizon_ms,
            step_ms=cfg.step_ms,
            cfg=cfg.train,
            promote=False,
            source=f"replay({','.join(settings.input_topics)}, last {cfg.window_days} days)",
        )
        report = orjson.loads((path / "report.json").read_bytes())
        val = np.load(path / "validation.npz")
        current_f1 = _serving_f1(settings.model_dir, val["x"], val["y"], report["classes"])
        ok, reason = gate(report["macro_f1"], current_f1, cfg.tolerance)
        result = RunResult(
            "promoted" if ok else "candidate", path.name, reason, report["macro_f1"], current_f1
        )
        if ok:
            promote_and_announce(settings, path.name, f"retrain: {reason}")
        (path / "gate.json").write_bytes(orjson.dumps(result.__dict__, option=orjson.OPT_INDENT_2))
        log.info("model %s: %s (%s)", path.name, result.outcome, reason)
        return result
    finally:
        client.eval(_RELEASE_LUA, 1, lock_key, token)


def run_forever(settings: Settings, cfg: RetrainConfig, every_s: float, once: bool = False) -> int:
    metrics.init_series()
    metrics.serve(settings.metrics_host, settings.metrics_port)
    client = redis.Redis.from_url(settings.redis_url, **settings.redis_client_kwargs())
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
