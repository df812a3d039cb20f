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
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

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


def input_retention(settings: Settings) -> dict[str, str]:
    """The input topics keep SEGMENTER_RETENTION_DAYS (400 by default), as
    docker-compose.yml's kafka-init does: retrain and rebuilds replay them, and
    Kafka's default of 7 days would leave too little history to label. Kafka
    deletes by each record's timestamp; the service's producers stamp records
    with the time they send them (Tansu never deletes at all)."""
    return {"retention.ms": str(int(settings.retention_days * 86_400_000))}


def topic_specs(settings: Settings) -> list[NewTopic]:
    p = settings.topic_partitions
    return [
        NewTopic(settings.topic_clickstream, p, 1, config=input_retention(settings)),
        NewTopic(settings.topic_orders, p, 1, config=input_retention(settings)),
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
    specs = topic_specs(settings)
    warn_uncompacted(admin, [t.topic for t in specs if t.config and t.topic in existing])
    wanted = [t for t in specs if t.topic not in existing]
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


def warn_uncompacted(admin: AdminClient, topics: list[str], timeout_s: float = 15.0) -> list[str]:
    """Warn about each existing keyed output topic that is not compacted; return them.

    ensure_* leave an existing topic's configs alone, so a topic created before
    it was compacted here (``segments.<segment>`` and ``customer-audiences`` were
    created uncompacted once) stays so: its `forget` tombstones then remove
    nothing. Tansu answers only the configs given at creation, so a missing
    ``cleanup.policy`` is its default, ``delete``.
    """
    if not topics:
        return []
    found = admin.describe_configs([ConfigResource("topic", t) for t in topics])
    uncompacted = []
    for resource, fut in found.items():
        try:
            entry = fut.result(timeout=timeout_s).get("cleanup.policy")
        except KafkaException as exc:  # not visible to this broker yet: nothing to say
            log.debug("could not describe %s: %s", resource.name, exc)
            continue
        if "compact" not in (entry.value if entry is not None else "delete"):
            uncompacted.append(resource.name)
            log.warning(
                "topic %s is not compacted: `segmenter forget` tombstones will not remove a "
                "user's earlier messages there, and late subscribers read every change. "
                "Make it compacted: kafka-configs --alter --entity-type topics --entity-name %s "
                "--add-config cleanup.policy=compact,max.compaction.lag.ms=%d",
                resource.name,
                resource.name,
                MAX_COMPACTION_LAG_MS,
            )
    return uncompacted


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
    names = [settings.segment_topic_template.format(segment=c) for c in classes]
    warn_uncompacted(admin, [t for t in names if t in existing])
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
        warn_uncompacted(admin, [settings.topic_audiences])
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
