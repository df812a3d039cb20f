"""The faust-streaming internals stream/worker/consumer.py relies on: fail loudly when they change.

stream/worker/consumer.py mirrors ``Consumer._drain_messages`` and the Conductor's
per-record delivery gates, reads ``Conductor._tp_index``, and sets aiokafka's
fetch long-poll. pyproject pins faust-streaming to the checked versions; if a
new version is allowed, these tests say what to re-read before trusting it.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaConsumer
from faust.transport.conductor import Conductor, ConductorCompiler
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.utils import DefaultSchedulingStrategy, TopicBuffer
from faust.types import TP, Message
from hypothesis import given
from hypothesis import strategies as st
from mode.utils.queues import FlowControlQueue

from stream.worker import consumer as batching
from stream.worker.records import RawRecord

# sha256[:16] of the upstream source this module copies or depends on.
UPSTREAM = {
    "faust.transport.consumer.Consumer._drain_messages": (
        Consumer._drain_messages,
        "44a2500309e83c63",
    ),
    "faust.transport.conductor.ConductorCompiler.build": (
        ConductorCompiler.build,
        "837cf521368c1ee4",
    ),
    "faust.transport.drivers.aiokafka.AIOKafkaConsumerThread._create_worker_consumer": (
        AIOKafkaConsumerThread._create_worker_consumer,
        "c2701bfc3e6f6cad",
    ),
    "faust.transport.conductor.Conductor._update_tp_index": (
        Conductor._update_tp_index,
        "e8e3ac9025ef44f7",
    ),
    # BatchConsumer._deliver_fetch does getmany's per-record work per partition.
    "faust.transport.consumer.Consumer.getmany": (Consumer.getmany, "4b168d84882a70d6"),
    "faust.transport.consumer.Consumer._wait_next_records": (
        Consumer._wait_next_records,
        "6218e1969a636b3f",
    ),
    # consumer.ack_offsets hands every record to Consumer.ack through one
    # reused stand-in: that relies on ack reading only acked, topic, tp and
    # offset, and keeping no reference to the message.
    "faust.transport.consumer.Consumer.ack": (Consumer.ack, "5fcf41cf45153475"),
    # consumer._round_robin keeps the scheduler's order.
    "faust.transport.utils.DefaultSchedulingStrategy.records_iterator": (
        DefaultSchedulingStrategy.records_iterator,
        "b23981c4d98568a5",
    ),
    "faust.transport.utils.TopicBuffer.__iter__": (TopicBuffer.__iter__, "818f9fddaae72f4d"),
}


def _digest(fn: object) -> str:
    return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]  # type: ignore[arg-type]


def test_faust_version_is_one_the_batching_consumer_was_checked_against() -> None:
    assert faust.__version__ in batching.SUPPORTED_FAUST_VERSIONS, (
        f"faust-streaming {faust.__version__}: re-check stream/worker/consumer.py against it, "
        "then add it to SUPPORTED_FAUST_VERSIONS and update the digests in this file"
    )


@pytest.mark.parametrize("name", sorted(UPSTREAM))
def test_upstream_method_mirrored_by_stream_consumer_is_unchanged(name: str) -> None:
    fn, expected = UPSTREAM[name]
    assert _digest(fn) == expected, (
        f"{name} changed upstream: compare it with stream/worker/consumer.py "
        "(BatchConsumer._drain_messages mirrors _drain_messages; BatchConductor.deliver_batch "
        "keeps the per-record handler's gates; BatchConsumerThread overrides the fetch wait), "
        "(_deliver_fetch does getmany's work per partition, ack_offsets relies on what "
        "Consumer.ack reads and keeps, _round_robin keeps the scheduler's order), "
        "then update the digest here"
    )


def test_aiokafka_builds_its_fetcher_from_the_attribute_we_set() -> None:
    async def make() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", fetch_max_wait_ms=1234)

    consumer = asyncio.run(make())
    assert consumer._fetch_max_wait_ms == 1234
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(AIOKafkaConsumer.start)


def test_conductor_keeps_the_partition_index_and_queues_we_read() -> None:
    app = faust.App("internals-check", broker="kafka://127.0.0.1:1")
    batching.install(app)
    conductor = app.topics
    assert isinstance(conductor, batching.BatchConductor)
    assert isinstance(app.transport, batching.Transport)
    assert isinstance(conductor._tp_index, dict)
    assert hasattr(FlowControlQueue, "force_put_nowait")
    assert hasattr(asyncio.Queue(), "_queue")  # what _buffered() counts
    assert {"generation_id", "tracked", "refcount", "acked"} <= set(Message.__slots__)


def test_install_refuses_an_app_whose_conductor_already_exists() -> None:
    app = faust.App("internals-late", broker="kafka://127.0.0.1:1")
    assert "x" not in app.topics  # builds the conductor from the stock transport
    with pytest.raises(RuntimeError, match=r"before app\.topics"):
        batching.install(app)


def test_carrier_stands_for_its_records_and_acking_it_acks_nothing() -> None:
    records = [RawRecord("t", 0, off, b"k", b"v") for off in (5, 6)]
    carrier = batching.BatchMessage(records, 3)
    assert (carrier.tp, carrier.offset, carrier.generation_id, len(carrier)) == (
        ("t", 0),
        6,
        3,
        2,
    )
    assert carrier.tracked
    assert carrier.on_final_ack(object()) is False


_tp_lists = st.dictionaries(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 3)),
    st.integers(0, 6),
    max_size=8,
)


@given(_tp_lists)
def test_a_delivery_keeps_the_order_fausts_scheduler_gives(
    sizes: dict[tuple[str, int], int],
) -> None:
    # Upstream iterates a fetch round robin over topics, and within a topic
    # over partitions; _deliver_fetch builds the same order from per-partition lists.
    fetched = {
        TP(topic, part): [RawRecord(topic, part, off, None, None) for off in range(n)]
        for (topic, part), n in sizes.items()
        if n
    }
    upstream = [r for _, r in DefaultSchedulingStrategy().iterate(fetched)]
    by_topic: dict[str, list[list[RawRecord]]] = {}
    for tp, recs in fetched.items():
        by_topic.setdefault(tp.topic, []).append(recs)
    ours = (
        batching._round_robin([batching._round_robin(p) for p in by_topic.values()])
        if by_topic
        else []
    )
    assert ours == upstream


@given(
    st.lists(st.tuples(st.sampled_from(["acked", "plain"]), st.integers(0, 2), st.integers(0, 30))),
    st.dictionaries(st.integers(0, 2), st.integers(0, 20)),
)
def test_acking_many_records_at_once_keeps_the_books_consumer_ack_keeps(
    acks: list[tuple[str, int, int]], committed: dict[int, int]
) -> None:
    def consumer() -> Any:
        app = faust.App("ack-check", broker="kafka://127.0.0.1:1")
        batching.install(app)
        # What the conductor sets once subscribed: "acked" is read by an
        # acking stream, "plain" is not.
        app.topics._acking_topics.add("acked")
        c = app.consumer
        assert app.topics.acks_enabled_for("acked")
        assert not app.topics.acks_enabled_for("plain")
        for part, off in committed.items():
            c._committed_offset[TP("acked", part)] = off
        return c

    one_by_one, at_once = consumer(), consumer()
    for topic, part, off in acks:
        one_by_one.ack(
            Message(topic, part, off, 0.0, 0, None, None, None, None, tp=TP(topic, part))
        )
    new = batching.ack_offsets(at_once, [RawRecord(t, p, o, None, None) for t, p, o in acks])
    assert new == one_by_one._n_acked == at_once._n_acked
    for books in ("_acked", "_acked_index"):
        theirs, ours = getattr(one_by_one, books), getattr(at_once, books)
        assert {tp: v for tp, v in ours.items() if v} == {tp: v for tp, v in theirs.items() if v}


@given(
    st.lists(st.integers(0, 60), min_size=1, max_size=25, unique=True).map(sorted),
    st.none() | st.integers(0, 60),
    st.none() | st.integers(0, 60),
    st.booleans(),
)
def test_read_offsets_and_gaps_per_partition_are_upstreams_per_record(
    offsets: list[int], read: int | None, committed: int | None, acking: bool
) -> None:
    # Upstream's drain loop, record by record (faust.transport.consumer
    # Consumer._drain_messages), is the oracle for _advance_read_offset.
    tp = TP("t", 0)

    def consumer() -> Any:
        app = faust.App("offsets-check", broker="kafka://127.0.0.1:1")
        batching.install(app)
        if acking:
            app.topics._acking_topics.add("t")
        c = app.consumer
        c._commit_every = None
        c._read_offset[tp] = read
        c._committed_offset[tp] = committed
        return c

    recs = [RawRecord("t", 0, off, None, None) for off in offsets]

    async def upstream(c: Any) -> list[int]:
        kept = []
        for rec in recs:
            r_offset = c._read_offset[tp]
            if r_offset is None or rec.offset >= r_offset:
                gap = rec.offset - (r_offset or 0)
                if gap > 1 and r_offset and c.app.topics.acks_enabled_for(rec.topic):
                    await c._add_gap(tp, r_offset + 1, rec.offset)
                kept.append(rec.offset)
                c._read_offset[tp] = rec.offset
        return kept

    async def ours(c: Any) -> list[int]:
        return [r.offset for r in await c._advance_read_offset(tp, recs)]

    theirs_c, ours_c = consumer(), consumer()
    assert asyncio.run(ours(ours_c)) == asyncio.run(upstream(theirs_c))
    assert ours_c._read_offset[tp] == theirs_c._read_offset[tp]
    assert sorted(ours_c._gap[tp]) == sorted(theirs_c._gap[tp])
