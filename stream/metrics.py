"""Prometheus metrics. Names follow Prometheus conventions; no label ever holds a user id."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import (
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# *_created series double the series count and no dashboard or alert uses them.
disable_created_metrics()

EVENTS = Counter(
    "segmenter_events_total",
    "Input events by outcome: applied, duplicate, erased (from before the user's erasure) "
    "or dead_lettered",
    ["topic", "event_type", "outcome"],
)
DEAD_LETTERS = Counter(
    "segmenter_dead_letters_total", "Records sent to the DLQ, by reason", ["topic", "reason"]
)
POISONED_BATCHES = Counter(
    "segmenter_poisoned_batches_total",
    "Batches that failed the same way SEGMENTER_MAX_BATCH_FAILURES times and were split "
    "to find and dead-letter the record at fault, by step",
    ["step"],
)
EVENT_TO_PUBLISH = Histogram(
    "segmenter_event_to_publish_seconds",
    "Event timestamp to its segment change being published",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BATCH_SECONDS = Histogram(
    "segmenter_batch_seconds",
    "Time to process one batch, decode to Redis commit",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
BATCH_SIZE = Histogram(
    "segmenter_batch_size",
    "Records per batch",
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10_000, 20_000),
)
REDIS_SECONDS = Histogram(
    "segmenter_redis_seconds",
    "Redis round trips by operation",
    ["op"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
PUBLISH_SECONDS = Histogram(
    "segmenter_publish_seconds",
    "From producing a batch's changes to the broker acknowledging all of them",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
AGENT_WAIT_SECONDS = Histogram(
    "segmenter_agent_wait_seconds",
    "Time the agent waited for records before each batch: idle headroom, not work",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
BROKER_REFUSALS = Counter(
    "segmenter_broker_refusals_total",
    "Batch attempts the broker refused (ACLs, a revoked user): the batch waits, unapplied "
    "and never dead-lettered, until access is granted; by step and Kafka error",
    ["step", "error"],
)
STALLED_SECONDS = Gauge(
    "segmenter_stalled_seconds",
    "How long the current stall has lasted (0: none): batches wait, retried and never "
    "dead-lettered, on redis, kafka, broker_refused, or no_culprit (records fail the "
    "same way one after another: not one record's fault)",
    ["reason"],
)
REDIS_ERRORS = Counter(
    "segmenter_redis_errors_total", "Failed Redis round trips (the batch is retried)", ["op"]
)
STATE_CACHE_READS = Counter(
    "segmenter_state_cache_reads_total",
    "Users read by batches and sweeps of a worker that caches what it committed: "
    "held and still current in Redis (hit, not sent again), or read from Redis (miss)",
    ["outcome"],
)
STATE_CACHE_USERS = Gauge(
    "segmenter_state_cache_users", "Users' records the worker keeps as it last committed them"
)
COMMIT_CONFLICTS = Counter(
    "segmenter_commit_conflicts_total", "Batches re-run because another writer got there first"
)
SEGMENT_CHANGES = Counter(
    "segmenter_segment_changes_total",
    "Published segment changes",
    ["from_segment", "to_segment"],
)
SEGMENT_USERS = Gauge(
    "segmenter_segment_users", "Users currently in each segment (exact, from Redis)", ["segment"]
)
AUDIENCE_CHANGES = Counter(
    "segmenter_audience_changes_total",
    "Users entering and leaving rule audiences (SEGMENTER_AUDIENCES_PATH)",
    ["audience", "action"],
)
AUDIENCE_ERRORS = Counter(
    "segmenter_audience_errors_total",
    "Rule audience evaluations that failed (kind: error, or budget when the CEL runtime's "
    "cost limit was hit); such a row counts as not a member",
    ["audience", "kind"],
)
AUDIENCE_USERS = Gauge(
    "segmenter_audience_users",
    "Users currently in each rule audience (exact, from Redis)",
    ["audience"],
)
STREAM_TIME = Gauge("segmenter_stream_time_seconds", "Stream time: the largest event time applied")
MODEL_INFO = Gauge("segmenter_model_info", "The model version being served", ["version"])


CONSUMER_LAG = Gauge(
    "segmenter_consumer_lag",
    "High watermark minus the next offset to apply (last applied + 1), per assigned partition",
    ["topic", "partition"],
)
MODEL_RELOADS = Counter(
    "segmenter_model_reloads_total",
    "Attempts to switch to a newly promoted model: success, or rejected (old one kept)",
    ["outcome"],
)
EXPIRED_USERS = Counter(
    "segmenter_expired_users_total",
    "Users erased by retention (inactive for SEGMENTER_RETENTION_DAYS of event time)",
)
CLICK_MEMORY_FULL = Counter(
    "segmenter_click_memory_full_total",
    "Clicks counted without dedup because their user's memory for that clock hour was "
    "full (stream.core.dedup.CLICK_MEMORY_PER_HOUR): a bot, as a rule",
)
LAST_RETRAIN = Gauge(
    "segmenter_last_retrain_timestamp_seconds", "When the retrain job last finished a run"
)
RETRAIN_RUNS = Counter(
    "segmenter_retrain_runs_total",
    "Retrain runs by outcome: promoted, candidate (kept out by the gate), failed, skipped",
    ["outcome"],
)


class DriftGauges(Collector):
    """Input drift of the serving model, as of the worker's last drift snapshot.

    Two gauges (``segmenter_feature_drift_psi{feature}`` and
    ``segmenter_inputs_out_of_range_ratio``) with no samples at all while the
    serving model has no drift reference or nothing has been scored yet: a 0
    would read as "no drift" when nothing was measured.
    """

    def __init__(self) -> None:
        # One tuple, swapped whole: a scrape sees one snapshot, never half of two.
        self._latest: tuple[dict[str, float], float] | None = None

    def set(self, psi: Mapping[str, float], out_of_range_ratio: float) -> None:
        self._latest = (dict(psi), out_of_range_ratio)

    def clear(self) -> None:
        self._latest = None

    def collect(self) -> Iterator[Metric]:
        latest = self._latest
        psi = GaugeMetricFamily(
            "segmenter_feature_drift_psi",
            "Population stability index of each feature over the drift window against the "
            "serving model's training distribution (0.25: significant shift)",
            labels=["feature"],
        )
        ratio = GaugeMetricFamily(
            "segmenter_inputs_out_of_range_ratio",
            "Share of rows in the drift window with a feature outside the training range",
        )
        if latest is not None:
            for feature, value in latest[0].items():
                psi.add_metric([feature], value)
            ratio.add_metric([], latest[1])
        yield psi
        yield ratio


DRIFT = DriftGauges()
REGISTRY.register(DRIFT)


def init_series() -> None:
    """Create the known label sets at zero, so rate() and alerts see 0, not "no data"."""
    for outcome in ("success", "rejected"):
        MODEL_RELOADS.labels(outcome)
    for outcome in ("promoted", "candidate", "failed", "skipped"):
        RETRAIN_RUNS.labels(outcome)
