"""A Faust worker on the batching transport for tests: acks records below an offset, reports.

Usage: python batch_agent.py BROKER TOPIC GROUP ACK_BELOW DATADIR
Prints one JSON line per batch: {"n": records seen, "acked": records acked}.
"""

from __future__ import annotations

import sys
import time

import faust
import orjson

from stream.worker.consumer import install, take_batches


def main() -> None:
    broker, topic_name, group, ack_below, datadir = sys.argv[1:6]
    limit = int(ack_below)
    app = faust.App(
        group,
        broker=broker,
        datadir=datadir,
        web_enabled=False,
        broker_session_timeout=6.0,
        broker_rebalance_timeout=6.0,
        broker_heartbeat_interval=1.0,
        broker_commit_interval=0.2,
        # Records at or past ACK_BELOW are never acked: do not wait for them on exit.
        stream_wait_empty=False,
    )
    install(app, fetch_max_wait_ms=20)
    topic = app.topic(topic_name, key_serializer="raw", value_serializer="raw")
    seen = {"n": 0, "acked": 0, "sizes": []}

    @app.agent(topic)
    async def agent(stream: object) -> None:
        async for batch in take_batches(stream, 300, within=0.05):
            seen["n"] += len(batch)
            seen["sizes"].append(len(batch))
            done = [m for m in batch.records if m.offset < limit]
            await batch.ack(done)
            seen["acked"] += len(done)
            sys.stdout.write(orjson.dumps({**seen, "t": time.time()}).decode() + "\n")
            sys.stdout.flush()

    faust.Worker(
        app, loglevel="INFO", quiet=True, redirect_stdouts=False
    ).execute_from_commandline()


if __name__ == "__main__":
    main()
