"""The faust-streaming internals stream/consumer.py relies on: fail loudly when they change.

stream/consumer.py mirrors ``Consumer._drain_messages`` and the Conductor's
per-record delivery gates, reads ``Conductor._tp_index``, and sets aiokafka's
fetch long-poll. pyproject pins faust-streaming to the checked versions; if a
new version is allowed, these tests say what to re-read before trusting it.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect

import faust
import pytest
from aiokafka import AIOKafkaConsumer
from faust.transport.conductor import Conductor, ConductorCompiler
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import Message
from mode.utils.queues import FlowControlQueue

from stream import consumer as batching

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
}


def _digest(fn: object) -> str:
    return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]  # type: ignore[arg-type]


def test_faust_version_is_one_the_batching_consumer_was_checked_against() -> None:
    assert faust.__version__ in batching.SUPPORTED_FAUST_VERSIONS, (
        f"faust-streaming {faust.__version__}: re-check stream/consumer.py against it, "
        "then add it to SUPPORTED_FAUST_VERSIONS and update the digests in this file"
    )


@pytest.mark.parametrize("name", sorted(UPSTREAM))
def test_upstream_method_mirrored_by_stream_consumer_is_unchanged(name: str) -> None:
    fn, expected = UPSTREAM[name]
    assert _digest(fn) == expected, (
        f"{name} changed upstream: compare it with stream/consumer.py "
        "(BatchConsumer._drain_messages mirrors _drain_messages; BatchConductor.deliver_batch "
        "keeps the per-record handler's gates; BatchConsumerThread overrides the fetch wait), "
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


def test_carrier_ack_never_acks_its_records() -> None:
    records = [
        Message("t", 0, off, 0.0, 0, None, b"k", b"v", None, generation_id=3) for off in (5, 6)
    ]
    carrier = batching.BatchMessage(records)
    assert (carrier.tp, carrier.offset, carrier.generation_id, len(carrier)) == (
        records[0].tp,
        6,
        3,
        2,
    )
    assert carrier.tracked
    assert carrier.on_final_ack(object()) is False
    assert not any(m.acked for m in records)
