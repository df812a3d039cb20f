"""Dead letters: a rejected record, bounded in size, with why and where it came from.

Bounded so that dead-lettering itself can never fail on size (a record
larger than the broker's limit would otherwise stall the worker for good).
"""

from __future__ import annotations

import hashlib
import logging

import orjson

from stream import metrics
from stream.core.events import Rejected
from stream.sinks import Outgoing
from stream.worker.records import RawRecord

log = logging.getLogger("stream.worker.pipeline")  # where these lines always came from


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


def count_dead_letters(bad: list[tuple[RawRecord, Rejected]]) -> None:
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


#: The DLQ reason of a user the re-evaluation sweep set aside (no record is at fault).
SWEEP_FAILED = "reevaluation_failed"


def user_dead_letter(topic: str, user_id: str, partition: int, due: int, detail: str) -> Outgoing:
    """A dead letter for a user whose time-driven step fails on its own every time.

    Keyed by the user; the user's state stays in Redis, unscheduled, so the
    user's next event takes it up again (and schedules it anew).
    """
    headers = [
        ("x-dlq-reason", SWEEP_FAILED.encode()),
        ("x-dlq-detail", detail.encode("utf-8", "replace")[:1024]),
        ("x-source-partition", str(partition).encode()),
        ("x-dlq-due", str(due).encode()),
    ]
    value = orjson.dumps({"user_id": user_id, "partition": partition, "due": due})
    return Outgoing(topic, user_id.encode(), value, headers)


def count_user_dead_letter() -> None:
    metrics.DEAD_LETTERS.labels("reevaluation", SWEEP_FAILED).inc()
