"""How a recommendation service starts: the current segment of every user,
materialised from the ``customer-segments`` topic with a plain confluent-kafka
consumer. Copy it; it needs only ``confluent-kafka``.

It reads every partition from the beginning (the topic is compacted, so that is
about one message per user), applies the contract's rules (docs/contracts.md):

* the later message of a ``(user_id, version)`` wins, and a version lower than
  the one held is an older duplicate (at-least-once delivery);
* a tombstone (null value) erases the user, version and all: a user who comes
  back starts again at version 1;

and, once it has reached the end of every partition, prints a summary (or every
user with ``--dump``). With ``--follow`` it then keeps applying new changes.

    python examples/subscriber.py --bootstrap 127.0.0.1:9092
    python examples/subscriber.py --bootstrap broker:9093 \\
        -X security.protocol=SASL_SSL -X sasl.mechanisms=SCRAM-SHA-512 \\
        -X sasl.username=recs -X sasl.password="$PASSWORD" -X ssl.ca.location=ca.pem

No consumer group is joined and no offset is committed: every instance holds
the whole map, and a restart rebuilds it from the topic.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition


class Segments:
    """user_id -> their latest change message (a dict, as published)."""

    def __init__(self) -> None:
        self.users: dict[str, dict[str, Any]] = {}

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return  # the topic is keyed by user_id: nothing to attribute this to
        user_id = key.decode()
        if value is None:  # erased (forget, retention): drop everything held
            self.users.pop(user_id, None)
            return
        change = json.loads(value)
        held = self.users.get(user_id)
        if held is not None and change["version"] < held["version"]:
            return  # an older message seen again: already superseded
        self.users[user_id] = change  # newer, or the same version re-published: later wins

    def counts(self) -> Counter[str]:
        return Counter(str(c["segment"]) for c in self.users.values())


def catch_up(
    config: dict[str, Any], topic: str = "customer-segments", timeout_s: float = 300.0
) -> tuple[Segments, Consumer]:
    """Read ``topic`` from the beginning to the current end of every partition.

    Returns the materialised segments and the consumer, positioned to follow on.
    """
    consumer = Consumer(
        {
            "group.id": f"segments-reader-{uuid.uuid4().hex[:8]}",  # never joined nor committed
            "enable.auto.commit": False,
            "enable.partition.eof": True,  # tells us when each partition is caught up
        }
        | config
    )
    metadata = consumer.list_topics(topic, timeout=30)
    if metadata.topics[topic].error is not None:
        consumer.close()
        raise SystemExit(f"cannot read {topic}: {metadata.topics[topic].error}")
    partitions = list(metadata.topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    segments = Segments()
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while len(at_end) < len(partitions):
        if time.monotonic() > deadline:
            consumer.close()
            raise SystemExit(f"{topic}: not caught up within {timeout_s:.0f} s")
        for msg in consumer.consume(1000, timeout=1.0):
            err = msg.error()
            if err is None:
                segments.apply(msg.key(), msg.value())
                at_end.discard(msg.partition() or 0)  # more came after its end: not there yet
            elif err.code() == KafkaError._PARTITION_EOF:
                at_end.add(msg.partition() or 0)
            elif err.fatal() or not err.retriable():
                consumer.close()
                raise SystemExit(f"{topic}: {err.str()}")
    return segments, consumer


def follow(consumer: Consumer, segments: Segments) -> None:
    """Apply new changes as they come, printing each (until Ctrl-C)."""
    while True:
        for msg in consumer.consume(1000, timeout=1.0):
            if msg.error() is None:
                segments.apply(msg.key(), msg.value())
                user = (msg.key() or b"").decode()
                now = segments.users.get(user)
                print(json.dumps({"user_id": user, "segment": now and now["segment"]}), flush=True)


def parse_config(pairs: Iterable[str]) -> dict[str, str]:
    config = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"-X takes name=value, got {pair!r}")
        config[name] = value
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True, help="host:port[,host:port]")
    parser.add_argument("--topic", default="customer-segments")
    parser.add_argument(
        "-X", dest="config", action="append", default=[], help="librdkafka setting name=value"
    )
    parser.add_argument("--dump", action="store_true", help="print every user's segment (JSONL)")
    parser.add_argument("--follow", action="store_true", help="then keep applying new changes")
    args = parser.parse_args(argv)
    config = {"bootstrap.servers": args.bootstrap} | parse_config(args.config)
    segments, consumer = catch_up(config, args.topic)
    try:
        if args.dump:
            for user_id, change in sorted(segments.users.items()):
                line = {"user_id": user_id, "segment": change["segment"]}
                print(json.dumps(line | {"version": change["version"]}))
        else:
            print(json.dumps({"users": len(segments.users), "segments": segments.counts()}))
        sys.stdout.flush()
        if args.follow:
            follow(consumer, segments)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
