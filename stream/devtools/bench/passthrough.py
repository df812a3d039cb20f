"""B0: a bare Faust agent with default settings, run as its own process."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any

import orjson

log = logging.getLogger("segmenter.bench")


def passthrough_main(argv: list[str]) -> int:
    """The B0 worker: a bare Faust agent with default settings, reporting progress on stdout.

    Defaults except: a temp ``datadir``, no web server (a port we might not
    get), short group timeouts (the join only), and raw serializers on the
    topic (no JSON decoding: that would only make B0 slower). Logs at INFO,
    as the real worker does (at WARNING, Faust turns on a spinner that sets
    the root logger to DEBUG).
    """
    import faust

    from stream.settings import load_settings
    from stream.worker.app import faust_credentials

    p = argparse.ArgumentParser(prog="stream.devtools.bench passthrough")
    p.add_argument("--broker", required=True)
    p.add_argument("--topics", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--expect", type=int, required=True)
    p.add_argument("--datadir", required=True)
    p.add_argument("--logfile", required=True)
    args = p.parse_args(argv)

    app = faust.App(
        args.group,
        broker=args.broker,
        datadir=args.datadir,
        web_enabled=False,
        broker_session_timeout=6.0,
        broker_rebalance_timeout=6.0,
        broker_heartbeat_interval=1.0,
        # The run's SASL/TLS settings (its environment is the run's settings).
        broker_credentials=faust_credentials(load_settings()),
    )
    topic = app.topic(*args.topics.split(","), key_serializer="raw", value_serializer="raw")
    out = sys.stdout.buffer
    seen = {"n": 0}

    @app.agent(topic)
    async def passthrough(stream: Any) -> None:
        async for batch in stream.take(1000, within=0.05):
            seen["n"] += len(batch)
            out.write(orjson.dumps({"t": time.monotonic(), "n": seen["n"]}) + b"\n")
            out.flush()
            if seen["n"] >= args.expect:
                os._exit(0)  # measured; nothing to shut down cleanly for

    faust.Worker(
        app, loglevel="INFO", logfile=args.logfile, quiet=True, redirect_stdouts=False
    ).execute_from_commandline()
    return 0
