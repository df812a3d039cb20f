"""Topic creation (idempotent). Tansu does not auto-create topics on produce, and a
Kafka that does would create them with its defaults: uncompacted. So the service
creates every topic it writes, before it writes it.

Every keyed output topic is compacted (``customer-segments``, ``segments.<segment>``,
``customer-audiences``, the models topic): a subscriber that starts late reads the
latest message per key, and a `forget` tombstone removes the user's earlier
messages for good once the broker has cleaned the log. Compaction needs a key on
every record (Kafka refuses keyless ones there); every producer of these topics
sets one.
"""

from __future__ import annotations

import logging

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from stream.broker_access import check_broker_access
from stream.settings import Settings, SettingsError

log = logging.getLogger(__name__)

#: Upper bound on how long a record of a compacted topic stays uncompacted (7 days).
#: Why: a `forget` tombstone must actually remove the user's older values (GDPR
#: erasure) within a bounded time. Without this bound Kafka compacts a partition
#: only once its dirty ratio reaches min.cleanable.dirty.ratio (50%), which a
#: quiet topic may never reach, and never touches the active segment; with it,
#: the broker rolls and cleans the log once its oldest dirty record is this old
#: (KIP-354, Kafka 2.3+). The tombstone itself then stays delete.retention.ms.
#: Set at creation only: ensure_topics leaves existing topics' configs alone.
MAX_COMPACTION_LAG_MS = 7 * 24 * 60 * 60 * 1000

#: The config of every compacted topic the service creates.
COMPACTED: dict[str, str] = {
    "cleanup.policy": "compact",
    "max.compaction.lag.ms": str(MAX_COMPACTION_LAG_MS),
}


def topic_specs(settings: Settings) -> list[NewTopic]:
    p = settings.topic_partitions
    return [
        NewTopic(settings.topic_clickstream, p, 1),
        NewTopic(settings.topic_orders, p, 1),
        # Compacted: a subscriber that starts late reads the latest segment
        # per user, and `forget` tombstones erase a user for good.
        NewTopic(settings.topic_segments, p, 1, config=dict(COMPACTED)),
        NewTopic(settings.topic_dlq, 1, 1),
        # Promotions, key "current": compacted, so the latest announcement stays.
        NewTopic(settings.topic_models, 1, 1, config=dict(COMPACTED)),
    ]


def ensure_topics(settings: Settings, timeout_s: float = 15.0) -> list[str]:
    """Create whichever of the service's topics do not exist yet; return those created.

    First checks that the broker accepts these settings' credentials and TLS: a
    wrong password or an untrusted certificate stops here, in one line.
    """
    admin = check_broker_access(settings, timeout_s)
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = [t for t in topic_specs(settings) if t.topic not in existing]
    if not wanted:
        check_copartitioned(settings, admin, timeout_s)
        return []
    created = []
    for name, fut in admin.create_topics(wanted, operation_timeout=timeout_s).items():
        try:
            fut.result(timeout=timeout_s)
            created.append(name)
        except KafkaException as exc:
            if exc.args and exc.args[0].name() == "TOPIC_ALREADY_EXISTS":
                continue
            raise
    if created:
        log.info("created topics: %s", ", ".join(created))
    check_copartitioned(settings, admin, timeout_s)
    return created


def check_copartitioned(settings: Settings, admin: AdminClient, timeout_s: float = 15.0) -> None:
    """Both input topics must have the same number of partitions.

    A user's clickstream and orders must land on the same partition number:
    that is what makes one worker the only writer of a user (its batches and
    its sweep), and Faust assigns the same numbers of co-partitioned topics to
    the same worker. Refuse to start otherwise, with what to fix.
    """
    topics = admin.list_topics(timeout=timeout_s).topics
    counts = {
        name: len(topics[name].partitions) for name in settings.input_topics if name in topics
    }
    if len(set(counts.values())) > 1:
        raise SettingsError(
            f"input topics must have the same partition count, got {counts}: "
            "add partitions to the smaller one (kafka-topics --alter --partitions N)"
        )


def ensure_segment_topics(settings: Settings, classes: tuple[str, ...]) -> list[str]:
    """The per-segment topics (``segments.<segment>``), for the served model's classes."""
    admin = check_broker_access(settings)
    existing = set(admin.list_topics(timeout=15).topics)
    wanted = [
        NewTopic(
            settings.segment_topic_template.format(segment=c),
            settings.topic_partitions,
            1,
            config=dict(COMPACTED),
        )
        for c in classes
    ]
    wanted = [t for t in wanted if t.topic not in existing]
    for name, fut in admin.create_topics(wanted).items() if wanted else []:
        try:
            fut.result(timeout=15)
        except KafkaException as exc:
            if not (exc.args and exc.args[0].name() == "TOPIC_ALREADY_EXISTS"):
                raise
        log.info("created topic %s", name)
    return [t.topic for t in wanted]


def ensure_audience_topic(settings: Settings) -> bool:
    """The rule-audience topic (``customer-audiences``); True if it was created."""
    admin = check_broker_access(settings)
    if settings.topic_audiences in admin.list_topics(timeout=15).topics:
        return False
    topic = NewTopic(settings.topic_audiences, settings.topic_partitions, 1, config=dict(COMPACTED))
    for fut in admin.create_topics([topic]).values():
        try:
            fut.result(timeout=15)
        except KafkaException as exc:
            if not (exc.args and exc.args[0].name() == "TOPIC_ALREADY_EXISTS"):
                raise
            return False
    log.info("created topic: %s", settings.topic_audiences)
    return True
