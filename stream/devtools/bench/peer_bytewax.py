"""The bytewax peer: `python -m stream.devtools.bench.peer_bytewax ...`, its own process.

What a bytewax user writes first for a per-user count and spend: the Kafka
source of ``bytewax.connectors.kafka`` (its defaults: batches of 1,000, from
the beginning, stopping at the end of the partitions), a JSON decode, ``key_on``
the user and ``stateful_map``, every 10th update of a user published to a
Kafka sink. One worker, no recovery (bytewax's default), as in the issue's
harness. Progress is counted in the fold and printed as in peer_child.
"""

from __future__ import annotations

import sys
from typing import Any

import orjson

from stream.devtools.bench.peer_child import (
    PUBLISH_EVERY,
    Progress,
    create_output_topic,
    fold,
    missing,
    parse_args,
    say,
    version,
)


def main(argv: list[str]) -> int:
    try:
        import bytewax.connectors.kafka.operators as kop
        import bytewax.operators as op
        from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSourceMessage
        from bytewax.dataflow import Dataflow
        from bytewax.run import cli_main
    except ImportError as exc:
        missing("bytewax", exc)

    from stream.settings import load_settings

    args = parse_args("stream.devtools.bench.peer_bytewax", argv)
    # The run's broker and its SASL/TLS settings (the environment is the run's settings).
    settings = load_settings()
    conf = settings.kafka_client_config()
    create_output_topic(conf, args.output, settings.topic_partitions)
    brokers = conf.pop("bootstrap.servers").split(",")
    security = {k: str(v) for k, v in conf.items()}
    say({"peer": "bytewax", "version": version("bytewax")})
    progress = Progress(args.expect)

    def update(
        state: tuple[int, float] | None, event: dict[str, Any]
    ) -> tuple[tuple[int, float], tuple[int, float] | None]:
        state = fold(state, event)
        progress.tick()
        return state, state if state[0] % PUBLISH_EVERY == 0 else None

    def decode(msg: KafkaSourceMessage[bytes | None, bytes | None]) -> dict[str, Any]:
        assert msg.value is not None  # the bench's backlog has no tombstones
        event: dict[str, Any] = orjson.loads(msg.value)
        return event

    def to_sink(item: tuple[str, tuple[int, float]]) -> KafkaSinkMessage[bytes, bytes]:
        user, (count, spend) = item
        return KafkaSinkMessage(user.encode(), orjson.dumps({"count": count, "spend": spend}))

    flow = Dataflow("segmenter-bench-bytewax")
    source = kop.input(
        "in", flow, brokers=brokers, topics=args.topics, tail=False, add_config=security
    )
    events = op.map("decode", source.oks, decode)
    keyed = op.key_on("user", events, lambda e: str(e["user_id"]))
    updates = op.stateful_map("fold", keyed, update)
    published = op.filter_map_value("every_10th", updates, lambda v: v)
    kop.output(
        "out",
        op.map("encode", published, to_sink),
        brokers=brokers,
        topic=args.output,
        add_config=security,
    )
    cli_main(flow, workers_per_process=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
