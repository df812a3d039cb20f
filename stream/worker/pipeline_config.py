"""What the batch processor is told: topics, limits, rules and retries."""

from __future__ import annotations

from dataclasses import dataclass, field

from model.segments import DEFAULT_REEVALUATE_DAYS, Hysteresis
from stream.core.dedup import DEFAULT_CLICK_WINDOW_MS
from stream.core.events import DAY_MS, DecodeLimits
from stream.worker.rules.audiences import Audiences
from stream.worker.rules.playbook import Playbook


@dataclass(frozen=True)
class PipelineConfig:
    clickstream_topic: str = "clickstream"
    orders_topic: str = "orders"
    segments_topic: str = "customer-segments"
    dlq_topic: str = "segmenter-dlq"
    limits: DecodeLimits = field(default_factory=DecodeLimits)
    hysteresis: Hysteresis = field(default_factory=Hysteresis)
    #: Clicks re-sent within this much of their user's event time are dropped
    #: (orders by order id, always: stream.core.dedup). 0 = by offset only.
    click_dedup_ms: int = DEFAULT_CLICK_WINDOW_MS
    #: Events older than stream time minus this are dead-lettered: their user
    #: may already have been expired by retention, and would come back wrong.
    max_lateness_ms: int = 400 * DAY_MS
    #: Users inactive this long (event time) are erased, with a tombstone (0 = never).
    retention_ms: int = 400 * DAY_MS
    #: Wall-clock TTL on user keys: a backstop for keys no worker sweeps any more.
    key_ttl_ms: int = 0
    #: Inactivity thresholds (days of event time) at which a user is re-scored.
    reevaluate_days: tuple[float, ...] = DEFAULT_REEVALUATE_DAYS
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
