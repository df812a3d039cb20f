"""The quix-streams peer: `python -m stream.devtools.bench.peer_quix ...`, its own process.

What a quix-streams user writes first for a per-user count and spend: an
``Application`` with its defaults (RocksDB state with a changelog topic, at
least once), one ``StreamingDataFrame`` per input topic concatenated into one,
a stateful ``apply`` keeping the count and the spend under the message key
(the user), every 10th update of a user published with ``to_topic``.

quix-streams reads ``retention.ms`` back from every topic it uses (and derives
its changelogs' from the inputs'). Apache Kafka returns every config with its
defaults, but Tansu returns only those given at creation: the service creates
its input topics with ``retention.ms`` (stream.topics.input_retention), and this
peer creates its output topic with it (quix creates the changelog with the
inputs').
"""

from __future__ import annotations

import sys
from typing import Any

from stream.devtools.bench.peer_child import (
    OUTPUT_RETENTION_MS,
    PUBLISH_EVERY,
    Progress,
    fold,
    missing,
    parse_args,
    say,
    version,
)


def main(argv: list[str]) -> int:
    try:
        from quixstreams import Application, State
        from quixstreams.kafka.configuration import ConnectionConfig
        from quixstreams.models.topics import TopicConfig
    except ImportError as exc:
        missing("quix", exc)

    from stream.settings import load_settings

    args = parse_args("stream.devtools.bench.peer_quix", argv)
    settings = load_settings()
    say({"peer": "quix", "version": version("quixstreams")})
    app = Application(
        broker_address=ConnectionConfig.from_librdkafka_dict(settings.kafka_client_config()),
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.datadir,
        loglevel="WARNING",
        # A short session, as every other phase of the bench uses: the group
        # join takes seconds on Tansu, and the data path is untouched. Not a
        # short max.poll.interval.ms: on a loaded machine a 6 s one expired
        # mid-run and failed the peer.
        consumer_extra_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
    )
    inputs = [app.dataframe(app.topic(name, value_deserializer="json")) for name in args.topics]
    sdf = inputs[0]
    for other in inputs[1:]:
        sdf = sdf.concat(other)
    output = app.topic(
        args.output,
        value_serializer="json",
        config=TopicConfig(
            num_partitions=settings.topic_partitions,
            replication_factor=1,
            extra_config={"retention.ms": OUTPUT_RETENTION_MS},
        ),
    )
    progress = Progress(args.expect)

    def update(event: dict[str, Any], state: State) -> dict[str, Any] | None:
        count, spend = fold((state.get("count", 0), state.get("spend", 0.0)), event)
        state.set("count", count)
        state.set("spend", spend)
        progress.tick()
        return {"count": count, "spend": spend} if count % PUBLISH_EVERY == 0 else None

    sdf = sdf.apply(update, stateful=True).filter(lambda v: v is not None)
    sdf.to_topic(output)
    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
