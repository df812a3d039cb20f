"""`segmenter generate`, `demo` and `bench`: synthetic data and development tools."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console

from stream.cli.common import console, progress, require_broker, settings_or_exit, setup_logging


class BrokerChoice(StrEnum):
    """The broker `demo` and `bench` start when none is given."""

    tansu = "tansu"
    kafka = "kafka"


def generate(
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write JSONL here (one {topic,key,value} a line)"),
    ] = None,
    users: Annotated[int, typer.Option(min=1, help="Number of synthetic customers")] = 1000,
    days: Annotated[float, typer.Option(min=1, help="Days of history to generate")] = 180.0,
    seed: Annotated[int, typer.Option(help="Same seed, same events")] = 0,
    to_kafka: Annotated[
        bool, typer.Option("--produce", help="Send straight to the topics")
    ] = False,
) -> None:
    """Generate synthetic clickstream and orders (whales, regulars, window-shoppers, churners)."""
    from stream.training.generate import GeneratorConfig
    from stream.training.generate import generate as gen
    from stream.training.produce import encode_generated, make_producer, produce, write_jsonl

    if out is None and not to_kafka:
        raise typer.BadParameter("give --out FILE and/or --produce")
    cfg = GeneratorConfig(users=users, days=days, seed=seed)
    if out is not None:
        n = write_jsonl(out, gen(cfg))
        console.print(f"wrote {n:,} events for {users:,} users to {out}")
    if to_kafka:
        settings = settings_or_exit()
        require_broker(settings)
        from stream.topics import ensure_topics

        ensure_topics(settings)
        with progress() as bar:
            task = bar.add_task("producing", total=None)
            n = produce(
                make_producer(settings.kafka_client_config()),
                encode_generated(gen(cfg)),
                on_sent=lambda k: bar.advance(task, k),
            )
        console.print(f"produced {n:,} events to {settings.bootstrap_servers}")


def demo(
    users: Annotated[int, typer.Option(help="Synthetic users")] = 300,
    days: Annotated[float, typer.Option(help="Days of synthetic history")] = 120.0,
    seed: Annotated[int, typer.Option()] = 7,
    rate: Annotated[float, typer.Option(help="Events/s to stream, 0 = flat out")] = 3000.0,
    broker: Annotated[
        BrokerChoice,
        typer.Option(
            help="Broker to start when SEGMENTER_KAFKA_URL is unset: the embedded Tansu, or a "
            "local Apache Kafka (Java 17+; Maven resolves deploy/kafka/pom.xml once)",
        ),
    ] = BrokerChoice.tansu,
) -> None:
    """Start (or use) a broker and Redis, run a worker, stream traffic, show changes live."""
    from stream.devtools.demo import run_demo

    setup_logging("WARNING")
    code = run_demo(users=users, days=days, seed=seed, rate=rate, broker=broker.value)
    raise typer.Exit(code)


def bench(
    events: Annotated[int, typer.Option(min=1000, help="Backlog size (events)")] = 200_000,
    users: Annotated[int, typer.Option(min=1, help="Synthetic customers to draw from")] = 20_000,
    partitions: Annotated[int, typer.Option(min=1, help="Partitions per input topic")] = 16,
    workers: Annotated[
        int, typer.Option(min=1, help="`segmenter worker` processes in the group (phase P)")
    ] = 1,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object on stdout (logs go to stderr)")
    ] = False,
    latency_seconds: Annotated[
        float, typer.Option(min=0, help="Length of the paced latency phase; 0 skips it")
    ] = 10.0,
    latency_load: Annotated[
        float | None,
        typer.Option(
            min=0.01,
            max=2.0,
            help="Latency phase rate, as a fraction of P (default: B0's measured rate)",
        ),
    ] = None,
    latency_curve: Annotated[
        Path | None,
        typer.Option(
            help="Also measure p50/p99 from 10% to 80% of P; write latency-curve.md and "
            "latency-curve.png into this directory",
        ),
    ] = None,
    profile: Annotated[
        Path | None,
        typer.Option(help="Directory for a py-spy profile of worker 0 during phase P"),
    ] = None,
    seed: Annotated[int, typer.Option(help="Generator seed")] = 0,
    audiences: Annotated[
        int,
        typer.Option(
            min=0,
            max=256,
            help="Serve N rule audiences in phase P, and measure P without them in the same "
            "run (audiences_vs_none)",
        ),
    ] = 0,
    kafka_url: Annotated[
        str | None, typer.Option(help="Use this broker (own bench-* topics) instead of Tansu")
    ] = None,
    broker: Annotated[
        BrokerChoice,
        typer.Option(
            help="Broker to start without --kafka-url: the embedded Tansu, or a local "
            "Apache Kafka (Java 17+; Maven resolves deploy/kafka/pom.xml once)",
        ),
    ] = BrokerChoice.tansu,
    redis_url: Annotated[
        str | None,
        typer.Option(help="Use this Redis (own key prefix, deleted after) instead of embedded"),
    ] = None,
    redis_cluster: Annotated[
        bool,
        typer.Option(
            "--redis-cluster",
            help="Keep state on Redis Cluster: --redis-url names a node, or an embedded "
            "cluster of three masters is started",
        ),
    ] = False,
    pin: Annotated[
        bool,
        typer.Option(
            "--pin",
            help="Pin the broker, Redis and the load driver to core 0 and the workers to core 1",
        ),
    ] = False,
    peers: Annotated[
        str,
        typer.Option(
            help="Also drain the backlog with these stream processors' trivial fold, each in "
            "its own process: bytewax, quix (comma-separated; pip install -e '.[bench]')",
        ),
    ] = "",
) -> None:
    """Measure the pipeline against a raw Kafka drain and a bare Faust agent, on one backlog.

    Phases, on one embedded broker and Redis: R (raw aiokafka getmany), B0 (bare
    Faust agent, default settings, take(1000, within=0.05)), P (`segmenter
    worker` with its shipped settings), then end-to-end latency at B0's rate,
    with a plain consumer's latency on the same records beside it (the
    transport's floor). With --peers, bytewax's and quix-streams' trivial fold
    (a count and a spend per user) drain the same backlog too.
    Prints a table, or with --json one object with raw_eps, faust_passthrough_eps,
    pipeline_eps, pipeline_vs_faust, pipeline_vs_raw, latency_rate_eps, p50_ms,
    p99_ms, raw_p50_ms, raw_p99_ms, overhead_p50_ms, overhead_p99_ms, bytewax_eps,
    quix_eps, pipeline_vs_bytewax, pipeline_vs_quix (null: not run or not installed),
    worker_rss_mb, redis_bytes_per_user, events, users, partitions and a
    per-stage breakdown. SEGMENTER_* variables change P's settings.
    """
    from stream.devtools.bench import BenchConfig, BenchError, render, run_bench
    from stream.devtools.bench.peers import parse_peers

    setup_logging("INFO")
    try:
        peer_names = parse_peers(peers)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--peers") from None
    cfg = BenchConfig(
        events=events,
        users=users,
        partitions=partitions,
        workers=workers,
        latency_s=latency_seconds,
        latency_load=latency_load,
        latency_curve=latency_curve,
        profile_dir=profile,
        seed=seed,
        audiences=audiences,
        kafka_url=kafka_url,
        broker=broker.value,
        redis_url=redis_url,
        redis_cluster=redis_cluster,
        pin=pin,
        peers=peer_names,
    )
    try:
        cfg.validate()
        result = run_bench(cfg, console)
    except (BenchError, ValueError) as exc:
        console.print(f"[red]bench failed: {exc}")
        raise typer.Exit(1) from None
    if json_out:
        sys.stdout.write(orjson.dumps(result.to_json()).decode() + "\n")
    else:
        Console().print(render(result))
