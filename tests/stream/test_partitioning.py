"""Where records land: producers partition like Java clients, compacted topics erase in time.

* Every confluent-kafka producer of the project uses librdkafka's ``murmur2_random``
  partitioner, so a key lands on the partition Java's DefaultPartitioner picks:
  ``toPositive(murmur2(key)) % numPartitions``. Checked against an independent
  pure-Python ``Utils.murmur2``, itself checked against Java's own test vectors,
  and against real records on a real broker.
* Faust's producer (aiokafka) already partitions the same way: its default
  partitioner is checked against the same function.
* Compacted topics are created with ``max.compaction.lag.ms``, so a `forget`
  tombstone removes the erased value within a bounded time.
"""

from __future__ import annotations

import ast
import asyncio
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from confluent_kafka.admin import AdminClient, ConfigResource
from hypothesis import given
from hypothesis import strategies as st

from stream.settings import Settings
from stream.sinks import PARTITIONER, ConfluentSink, Outgoing, producer_config
from stream.topics import COMPACTED, MAX_COMPACTION_LAG_MS, topic_specs
from stream.training.produce import make_producer, produce
from stream.worker.forget import forget
from tests.conftest import REPO, TopicReader

# ------------------------------------------------------------- Java's murmur2

_U32 = 0xFFFFFFFF
_SEED = 0x9747B28C
_M = 0x5BD1E995


def java_murmur2(data: bytes) -> int:
    """``org.apache.kafka.common.utils.Utils.murmur2``: a signed 32-bit int, as Java returns it.

    Written from the Java source, not from aiokafka's port, so the two can check
    each other: Java's ``int`` arithmetic is unsigned 32-bit arithmetic here
    (``& _U32``), ``>>>`` is ``>>`` on the unsigned value, and the sign is
    applied only at the end.
    """
    length = len(data)
    h = (_SEED ^ length) & _U32
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")  # Java assembles the block little-endian
        k = (k * _M) & _U32
        k ^= k >> 24
        k = (k * _M) & _U32
        h = (h * _M) & _U32
        h ^= k
    tail = data[whole:]
    # Java's switch falls through: 3 bytes left also does the 2 and 1 cases.
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if len(tail) >= 1:
        h ^= tail[0]
        h = (h * _M) & _U32
    h ^= h >> 13
    h = (h * _M) & _U32
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def to_positive(n: int) -> int:
    """``Utils.toPositive``: clears the sign bit (not ``abs``: that overflows on MIN_VALUE)."""
    return n & 0x7FFFFFFF


def java_partition(key: bytes, num_partitions: int) -> int:
    """The partition Java's DefaultPartitioner (BuiltInPartitioner.partitionForKey) picks."""
    return to_positive(java_murmur2(key)) % num_partitions


#: Apache Kafka's UtilsTest.testMurmur2
#: (clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java).
KAFKA_MURMUR2_VECTORS: dict[bytes, int] = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}

#: Partitions out of 1000 that Java's producer partitioner picked, as recorded by
#: kafka-python's test_murmur2_java_compatibility (test/test_partitioner.py).
JAVA_PARTITIONS_OF_1000: dict[bytes, int] = {
    b"": 681,
    b"a": 524,
    b"ab": 434,
    b"abc": 107,
    b"123456789": 566,
    b"\x00 ": 742,
}


@pytest.mark.parametrize(("key", "expected"), KAFKA_MURMUR2_VECTORS.items())
def test_murmur2_matches_kafkas_own_vectors(key: bytes, expected: int) -> None:
    assert java_murmur2(key) == expected


@pytest.mark.parametrize(("key", "expected"), JAVA_PARTITIONS_OF_1000.items())
def test_partition_matches_javas_partitioner(key: bytes, expected: int) -> None:
    assert java_partition(key, 1000) == expected


def test_to_positive_clears_the_sign_bit_only() -> None:
    assert to_positive(-(2**31)) == 0  # Integer.MIN_VALUE: where abs() would stay negative
    assert to_positive(-1) == 2**31 - 1
    assert to_positive(12345) == 12345


@given(st.binary(max_size=64))
def test_murmur2_is_a_deterministic_java_int(data: bytes) -> None:
    h = java_murmur2(data)
    assert -(2**31) <= h < 2**31
    assert java_murmur2(bytes(data)) == h  # a copy: no hidden state, no identity


@given(st.binary(max_size=64), st.integers(min_value=1, max_value=1024))
def test_partition_is_in_range_and_depends_only_on_key_and_count(data: bytes, n: int) -> None:
    p = java_partition(data, n)
    assert 0 <= p < n
    assert java_partition(bytes(data), n) == p


@given(st.binary(max_size=64), st.integers(min_value=1, max_value=1024))
def test_faust_aiokafka_default_partitioner_is_javas(data: bytes, n: int) -> None:
    # Faust produces through aiokafka with its DefaultPartitioner unless
    # producer_partitioner is set (stream/worker/app.py does not set it).
    assert aiokafka_murmur2(data) == java_murmur2(data) & _U32
    parts = list(range(n))
    assert DefaultPartitioner()(data, parts, parts) == java_partition(data, n)


# ------------------------------------------------ one place makes producers


def _producer_calls(path: Path) -> list[tuple[str, int]]:
    """(enclosing function, line) of every ``Producer(...)`` call in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    owner: dict[int, str] = {}
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(fn):
                owner.setdefault(id(node), fn.name)  # ast.walk is outermost-first
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = (
                f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            )
            if name == "Producer":
                calls.append((owner.get(id(node), "<module>"), node.lineno))
    return calls


def test_every_producer_is_made_by_new_producer() -> None:
    """A new ``Producer(...)`` elsewhere would bypass the partitioner: make it through sinks."""
    found = {
        f"{path.relative_to(REPO)}:{fn}"
        for pkg in ("stream", "model")
        for path in sorted((REPO / pkg).rglob("*.py"))
        for fn, _ in _producer_calls(path)
    }
    assert found == {"stream/sinks.py:new_producer"}


def test_producer_config_sets_and_enforces_the_partitioner() -> None:
    assert PARTITIONER == "murmur2_random"
    conf = producer_config({"bootstrap.servers": "x:1", "acks": "all"})
    assert conf == {"bootstrap.servers": "x:1", "acks": "all", "partitioner": "murmur2_random"}
    assert producer_config(conf) == conf
    with pytest.raises(ValueError, match="murmur2_random"):
        producer_config({"partitioner": "consistent_random"})


# ------------------------------------------------------------- real broker

N_PARTITIONS = 7  # not a power of two, so placement uses more than the low bits of the hash
# Users, plus the vector keys: the empty key (hashed, unlike a null key), bytes >= 0x80.
KEYS = list(
    dict.fromkeys(
        [f"user-{i}".encode() for i in range(150)]
        + [*KAFKA_MURMUR2_VECTORS, *JAVA_PARTITIONS_OF_1000, b"\xff" * 9]
    )
)


def test_the_keys_would_catch_librdkafkas_default_partitioner() -> None:
    # librdkafka's default (consistent_random) is CRC32 of the key: if the
    # producers fell back to it, the broker tests below would see these keys move.
    moved = [k for k in KEYS if zlib.crc32(k) % N_PARTITIONS != java_partition(k, N_PARTITIONS)]
    assert len(moved) > len(KEYS) // 2


def _placements(reader: TopicReader, count: int) -> list[tuple[bytes, int, bool]]:
    """(key, partition, is a tombstone) of the first ``count`` records on the topic."""
    msgs = reader.wait_for(lambda m: len(m) >= count, timeout_s=30)
    return [(m.key(), m.partition(), m.value() is None) for m in msgs]


@pytest.mark.integration
def test_produce_places_every_key_where_java_would(
    settings_factory: Callable[..., Settings], reader_factory: Callable[[str], TopicReader]
) -> None:
    """make_producer + produce: the path of `segmenter generate/produce`, the demo and the bench."""
    settings = settings_factory(topic_partitions=N_PARTITIONS)
    topic = settings.topic_clickstream
    sent = produce(make_producer(settings.kafka_client_config()), [(topic, k, b"{}") for k in KEYS])
    assert sent == len(KEYS)
    placed = _placements(reader_factory(topic), len(KEYS))
    assert sorted(k for k, _, _ in placed) == sorted(KEYS)
    wrong = [(k, p) for k, p, _ in placed if p != java_partition(k, N_PARTITIONS)]
    assert not wrong, f"not on Java's partition: {wrong[:5]}"


@pytest.mark.integration
def test_sink_and_forget_place_changes_and_tombstones_where_java_would(
    settings_factory: Callable[..., Settings], reader_factory: Callable[[str], TopicReader]
) -> None:
    """The worker's sink, and `forget`'s tombstone on the partition of the value it erases."""
    settings = settings_factory(topic_partitions=N_PARTITIONS)
    topic = settings.topic_segments
    erased = ["user-3", "user-42", "user-101"]

    async def run() -> list[Any]:
        sink = ConfluentSink(settings.kafka_client_config())
        try:
            await sink.publish([Outgoing(topic, k, b"{}") for k in KEYS])
            acks = [await sink.send(topic, k, b"{}", []) for k in KEYS[:10]]
        finally:
            await asyncio.to_thread(sink.close)
        for user in erased:
            await forget(settings, user)
        return acks

    acks = asyncio.run(run())
    # send() reports the partition the broker acked: Java's, key by key.
    assert [p for p, _ in acks] == [java_partition(k, N_PARTITIONS) for k in KEYS[:10]]
    placed = _placements(reader_factory(topic), len(KEYS) + 10 + len(erased))
    wrong = [(k, p) for k, p, _ in placed if p != java_partition(k, N_PARTITIONS)]
    assert not wrong, f"not on Java's partition: {wrong[:5]}"
    tombstones = {k: p for k, p, dead in placed if dead}
    assert tombstones == {u.encode(): java_partition(u.encode(), N_PARTITIONS) for u in erased}
    values = {k: p for k, p, dead in placed if not dead}
    for key, partition in tombstones.items():
        assert values[key] == partition  # so compaction can drop the value


# ---------------------------------------------------------- compacted topics


def test_compacted_topic_specs_bound_the_compaction_lag() -> None:
    assert MAX_COMPACTION_LAG_MS == 604_800_000  # 7 days
    # Names given, so no SEGMENTER_* from the shell decides what is checked.
    settings = Settings(
        topic_clickstream="c", topic_orders="o", topic_segments="s", topic_dlq="d", topic_models="m"
    )
    specs = {t.topic: t.config or {} for t in topic_specs(settings)}
    compacted = {t for t, c in specs.items() if c.get("cleanup.policy") == "compact"}
    assert compacted == {settings.topic_segments, settings.topic_models}
    for topic in compacted:
        assert specs[topic] == COMPACTED
        assert specs[topic]["max.compaction.lag.ms"] == "604800000"


@pytest.mark.integration
def test_created_compacted_topics_carry_the_compaction_lag(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory()  # creates the topics through ensure_topics
    admin = AdminClient(settings.kafka_client_config())
    topics = [
        settings.topic_segments,
        settings.topic_models,
        settings.topic_clickstream,
        settings.topic_orders,
        settings.topic_dlq,
    ]
    futures = admin.describe_configs([ConfigResource("topic", t) for t in topics])
    configs = {
        res.name: {k: v.value for k, v in fut.result(timeout=15).items()}
        for res, fut in futures.items()
    }
    for topic in (settings.topic_segments, settings.topic_models):
        assert configs[topic]["cleanup.policy"] == "compact", topic
        assert configs[topic]["max.compaction.lag.ms"] == str(MAX_COMPACTION_LAG_MS), topic
    for topic in (settings.topic_clickstream, settings.topic_orders, settings.topic_dlq):
        assert configs[topic].get("cleanup.policy", "delete") == "delete", topic
