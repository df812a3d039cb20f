"""What differs between Tansu and Apache Kafka, each shown on both brokers.

Every test here states the two behaviours side by side; docs/design.md ("What
differs between Tansu and Kafka") says how the service copes with each, and
names these tests.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from model.registry import load_current
from stream.settings import Settings
from stream.topics import ensure_audience_topic, ensure_segment_topics

pytestmark = [pytest.mark.integration, pytest.mark.brokers("tansu", "kafka")]

HISTORY_MS = 1_600_000_000_000  # September 2020: long before any broker append time


def _topic(admin: AdminClient, **config: str) -> str:
    name = f"diff-{uuid.uuid4().hex[:10]}"
    for fut in admin.create_topics([NewTopic(name, 1, 1, config=config)]).values():
        fut.result(15)
    return name


def _deliver(bootstrap: str, topic: str, key: bytes | None, value: bytes, **conf: Any) -> Any:
    """Produce one record; return the delivery error (None when the broker took it)."""
    producer = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": 10_000} | conf)
    outcome: list[Any] = []
    producer.produce(topic, key=key, value=value, on_delivery=lambda err, _: outcome.append(err))
    assert producer.flush(20) == 0
    return outcome[0]


def _describe(admin: AdminClient, topic: str) -> dict[str, Any]:
    # Kafka's CreateTopics answers once the controller has the topic; the broker
    # learns of it a little later (0.05-0.15 s here, even on one node), and
    # answers UNKNOWN_TOPIC_OR_PART until then. Tansu knows it at once.
    deadline = time.monotonic() + 10
    while True:
        (fut,) = admin.describe_configs([ConfigResource("topic", topic)]).values()
        try:
            configs: dict[str, Any] = fut.result(15)
            return configs
        except KafkaException as exc:
            if (
                exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART
                or time.monotonic() > deadline
            ):
                raise
            time.sleep(0.05)


def _policy(admin: AdminClient, topic: str) -> str:
    entry = _describe(admin, topic).get("cleanup.policy")
    # Tansu answers only the configs given at creation: no entry means the default.
    return str(entry.value) if entry is not None else "delete"


def test_every_keyed_output_topic_is_created_compacted_and_the_inputs_are_not(
    settings_factory: Callable[..., Settings], prefix: str
) -> None:
    settings = settings_factory(
        segment_topics=True, segment_topic_template=f"segments-{prefix}.{{segment}}"
    )
    per_segment = ensure_segment_topics(settings, load_current(settings.model_dir).classes)
    assert ensure_audience_topic(settings)
    admin = AdminClient(settings.kafka_client_config())
    compacted = [settings.topic_segments, settings.topic_models, settings.topic_audiences]
    assert per_segment and all(_policy(admin, t) == "compact" for t in compacted + per_segment)
    for topic in (settings.topic_clickstream, settings.topic_orders, settings.topic_dlq):
        assert _policy(admin, topic) == "delete", topic


def test_a_keyless_record_on_a_compacted_topic_is_refused_by_kafka_only(
    broker: str, kafka_bootstrap: str
) -> None:
    topic = _topic(
        AdminClient({"bootstrap.servers": kafka_bootstrap}), **{"cleanup.policy": "compact"}
    )
    err = _deliver(kafka_bootstrap, topic, None, b"no key")
    if broker == "kafka":
        assert err is not None and err.code() == KafkaError.INVALID_RECORD, err
    else:
        assert err is None  # Tansu takes it: a producer bug it would never show
    assert _deliver(kafka_bootstrap, topic, b"user", b"keyed") is None


def test_a_record_over_max_message_bytes_is_refused_by_kafka_only(
    broker: str, kafka_bootstrap: str
) -> None:
    topic = _topic(AdminClient({"bootstrap.servers": kafka_bootstrap}))
    err = _deliver(
        kafka_bootstrap, topic, b"k", b"x" * 1_200_000, **{"message.max.bytes": 3_000_000}
    )
    if broker == "kafka":  # the broker's message.max.bytes default: 1 MiB + 12 bytes
        assert err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE, err
    else:
        assert err is None


def test_describe_configs_answers_every_config_on_kafka_and_only_the_given_ones_on_tansu(
    broker: str, kafka_bootstrap: str
) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    configs = _describe(admin, _topic(admin, **{"cleanup.policy": "compact"}))
    if broker == "kafka":
        assert configs["cleanup.policy"].value == "compact"
        assert {"retention.ms", "max.message.bytes", "segment.ms"} <= set(configs)
    else:
        assert "retention.ms" not in configs  # quix-streams' KeyError, for one


def _history(bootstrap: str, n: int = 100) -> str:
    """``n`` records with event-time (CreateTime) stamps one second apart in 2020, one
    batch, on a topic that keeps them (Kafka's retention goes by record timestamps)."""
    topic = _topic(AdminClient({"bootstrap.servers": bootstrap}), **{"retention.ms": "-1"})
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50})
    for i in range(n):
        producer.produce(topic, key=b"k%d" % i, value=b"v", timestamp=HISTORY_MS + i * 1000)
    assert producer.flush(20) == 0
    return topic


def test_offsets_for_times_honours_record_timestamps_on_kafka_only(
    broker: str, kafka_bootstrap: str
) -> None:
    topic = _history(kafka_bootstrap)
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "probe-oft"})
    try:
        (found,) = consumer.offsets_for_times(
            [TopicPartition(topic, 0, HISTORY_MS + 50 * 1000)], timeout=10
        )
    finally:
        consumer.close()
    # Tansu answers by broker append time: 0 for any historical timestamp. So
    # replays and exports filter on each event's own time (training/replay.py).
    assert found.offset == (50 if broker == "kafka" else 0)


def test_watermarks_after_one_batch_are_exact_on_kafka_and_under_reported_on_tansu(
    broker: str, kafka_bootstrap: str
) -> None:
    topic = _history(kafka_bootstrap)
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "probe-wm"})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    finally:
        consumer.close()
    assert low == 0
    if broker == "kafka":
        assert high == 100
    else:  # why lag and "replay to the end" use aiokafka's end offsets or partition EOF
        assert high < 100


def test_a_session_timeout_under_six_seconds_is_refused_by_kafka_only(
    broker: str, kafka_bootstrap: str
) -> None:
    topic = _history(kafka_bootstrap, n=1)
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"short-{topic}",
            "session.timeout.ms": 3000,
            "heartbeat.interval.ms": 1000,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 20
        msg = None
        while msg is None and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
    finally:
        consumer.close()
    assert msg is not None
    err = msg.error()
    if broker == "kafka":  # group.min.session.timeout.ms: 6000 by default
        assert err is not None and err.code() == KafkaError.INVALID_SESSION_TIMEOUT, err
    else:
        assert err is None and msg.value() == b"v"


def test_a_topic_nobody_created_appears_on_tansu_and_not_on_this_kafka(
    broker: str, kafka_bootstrap: str
) -> None:
    name = f"never-created-{uuid.uuid4().hex[:8]}"
    err = _deliver(kafka_bootstrap, name, b"k", b"v", **{"message.timeout.ms": 2000})
    exists = (
        name in AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    )
    if broker == "kafka":
        # The test broker has auto.create.topics.enable=false (as docker-compose.yml):
        # a topic the service forgot to create fails here instead of appearing
        # uncompacted, as Kafka's default (true) would create it.
        assert err is not None and not exists
    else:
        assert err is None and exists


def test_an_existing_uncompacted_output_topic_is_reported_with_the_fix(
    settings_factory: Callable[..., Settings], prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_factory(
        segment_topics=True, segment_topic_template=f"segments-{prefix}.{{segment}}"
    )
    classes = load_current(settings.model_dir).classes
    old = settings.segment_topic_template.format(segment=classes[0])
    admin = AdminClient(settings.kafka_client_config())
    for fut in admin.create_topics([NewTopic(old, settings.topic_partitions, 1)]).values():
        fut.result(15)  # as an earlier release created them: uncompacted
    _describe(admin, old)  # known to the broker (Kafka: a moment after creation)
    with caplog.at_level("WARNING", logger="stream.topics"):
        created = ensure_segment_topics(settings, classes)
    assert old not in created and len(created) == len(classes) - 1
    warned = [r.getMessage() for r in caplog.records if "is not compacted" in r.getMessage()]
    assert len(warned) == 1 and old in warned[0] and "cleanup.policy=compact" in warned[0]


def test_the_kip_848_consumer_group_protocol_is_offered_by_kafka_only(
    broker: str, kafka_bootstrap: str
) -> None:
    topic = _history(kafka_bootstrap, n=1)
    errors: list[Any] = []
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"kip848-{topic}",
            "group.protocol": "consumer",
            "auto.offset.reset": "earliest",
            "error_cb": errors.append,
        }
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + (20 if broker == "kafka" else 4)
        msg = None
        while msg is None and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
    finally:
        consumer.close()
    if broker == "kafka":
        assert msg is not None and msg.error() is None and msg.value() == b"v"
    else:  # Faust and the project's consumers use the classic protocol
        assert msg is None or msg.error() is not None, msg.value()


def test_records_stamped_with_an_old_event_time_are_deleted_by_kafka_retention_only(
    broker: str, kafka_bootstrap: str
) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    topic = _topic(admin)  # the broker's default retention.ms: 7 days
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(10):
        producer.produce(topic, key=b"k", value=b"v", timestamp=HISTORY_MS + i)
    assert producer.flush(20) == 0
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "probe-retention"})
    try:
        deadline = time.monotonic() + (30 if broker == "kafka" else 4)
        low = 0
        while low == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
            low, _ = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    finally:
        consumer.close()
    # Kafka's retention check (every 1 s on the test broker, 5 min by default)
    # deletes them; Tansu keeps everything. The service's producers stamp with
    # the send time, and its input topics keep 400 days (stream/topics.py).
    assert low == (10 if broker == "kafka" else 0)
