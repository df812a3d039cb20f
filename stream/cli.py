"""`segmenter`: the command line. Glue only: every rule lives in a module it calls."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from stream.redaction import Redactor
from stream.redaction import install as install_redaction
from stream.settings import Settings, SettingsError, load_settings

app = typer.Typer(
    help=(
        "Streaming customer segmentation. Settings come from SEGMENTER_* environment "
        "variables (see `segmenter settings`)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
log = logging.getLogger("segmenter")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_duration(text: str) -> int:
    """'90d' -> milliseconds. Units: ms, s, m, h, d, w."""
    match = _DURATION.match(text)
    if not match:
        raise typer.BadParameter(f"{text!r} is not a duration like 90d, 24h or 30m")
    return int(float(match.group(1)) * _UNIT_MS[match.group(2)])


def setup_logging(level: str = "INFO", settings: Settings | None = None) -> None:
    """Rich output for people at a terminal; one plain line per record for log collectors.

    Every record goes through the redaction filter: ``settings``' secrets and any
    URL credentials are masked (URL credentials only, without settings).
    """
    if console.is_terminal:
        handler: logging.Handler = RichHandler(
            console=console, show_path=False, rich_tracebacks=True
        )
        fmt = "%(name)s: %(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, handlers=[handler], force=True)
    install_redaction(settings.redactor() if settings is not None else Redactor())


def settings_or_exit(**overrides: object) -> Settings:
    return load_settings(**overrides)


def progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


@app.command("settings")
def show_settings() -> None:
    """Print the effective settings (secrets masked) and every variable you can set."""
    try:
        summary: dict[str, object] | None = settings_or_exit().safe_summary()
    except SettingsError as exc:
        # Still list every variable (the error's hint sends people here), then fail.
        typer.echo(str(exc.code), err=True)
        summary = None
    for name, field in Settings.model_fields.items():
        var = f"SEGMENTER_{name.upper()}"
        desc = f"  # {field.description}" if field.description else ""
        typer.echo(f"{var}={summary.get(name) if summary is not None else ''}{desc}")
    if summary is None:
        raise typer.Exit(1)


@app.command()
def worker(
    loglevel: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR")] = "",
) -> None:
    """Run a stream worker: consume clickstream+orders, keep features in Redis, publish changes.

    Stops cleanly on SIGTERM or SIGINT: the batch in flight finishes, offsets
    are committed, and the process exits 0.
    """
    settings = settings_or_exit()
    setup_logging(loglevel or settings.log_level, settings)
    from stream.worker import run_worker

    run_worker(settings, loglevel or settings.log_level)


@app.command()
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
    from stream.generate import GeneratorConfig
    from stream.generate import generate as gen
    from stream.produce import encode_generated, make_producer, produce, write_jsonl

    if out is None and not to_kafka:
        raise typer.BadParameter("give --out FILE and/or --produce")
    cfg = GeneratorConfig(users=users, days=days, seed=seed)
    if out is not None:
        n = write_jsonl(out, gen(cfg))
        console.print(f"wrote {n:,} events for {users:,} users to {out}")
    if to_kafka:
        settings = settings_or_exit()
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


@app.command("produce")
def produce_cmd(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Input file")],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="jsonl or parquet (from `segmenter generate`/`export`), online-retail "
            "(UCI Online Retail CSV), rees46 (REES46 behaviour CSV). Default: by suffix",
        ),
    ] = "",
) -> None:
    """Send a file of events to the input topics, keyed by user_id."""
    from stream.produce import make_producer, produce
    from stream.topics import ensure_topics

    settings = settings_or_exit()
    records, skipped = _read_input(file, fmt, settings)
    if skipped:
        console.print(f"[yellow]rows skipped on import: {dict(skipped)}")
    ensure_topics(settings)
    with progress() as bar:
        task = bar.add_task(f"producing {file.name}", total=None)
        n = produce(
            make_producer(settings.kafka_client_config()),
            records,
            on_sent=lambda k: bar.advance(task, k),
        )
    console.print(f"produced {n:,} records from {file}")


def _read_input(file: Path, fmt: str, settings: Settings) -> tuple[Any, Any]:
    from stream.importers import FORMATS, read_input

    fmt = fmt or {".parquet": "parquet", ".jsonl": "jsonl"}.get(file.suffix, "")
    if fmt not in FORMATS:
        raise typer.BadParameter(f"say --format: one of {', '.join(FORMATS)}")
    return read_input(
        file,
        fmt,
        clickstream_topic=settings.topic_clickstream,
        orders_topic=settings.topic_orders,
    )


@app.command("export")
def export_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="events.jsonl or events.parquet")],
    topics: Annotated[str, typer.Option(help="Comma-separated topics")] = "",
    since: Annotated[str | None, typer.Option(help="ISO time (event time), inclusive")] = None,
    until: Annotated[str | None, typer.Option(help="ISO time (event time), inclusive")] = None,
) -> None:
    """Export topics to a file for data teams, filtered on each event's own timestamp."""
    from stream.events import _to_epoch_ms
    from stream.export import export_records
    from stream.replay import replay_topics

    settings = settings_or_exit()
    names = [t for t in topics.split(",") if t] or list(settings.input_topics)
    since_ms = _to_epoch_ms(since) if since else None
    with progress() as bar:
        task = bar.add_task("exporting", total=None)
        result = export_records(
            replay_topics(settings.kafka_client_config(), names, since_ms=since_ms),
            out,
            since_ms=since_ms,
            until_ms=_to_epoch_ms(until) if until else None,
            on_progress=lambda k: bar.advance(task, k),
        )
    console.print(
        f"exported {result.written:,} events to {out} "
        f"({result.skipped_out_of_range:,} outside the range, {result.invalid:,} invalid)"
    )


@app.command()
def train(
    input_file: Annotated[
        Path | None,
        typer.Option(
            "--input", "-i", exists=True, dir_okay=False, help="Events file to train on (real data)"
        ),
    ] = None,
    synthetic: Annotated[
        bool,
        typer.Option(
            "--synthetic",
            help="Train on generated populations instead of a file (never replaces a model "
            "trained on real events unless --force)",
        ),
    ] = False,
    fmt: Annotated[
        str,
        typer.Option("--format", help="jsonl, parquet, online-retail or rees46 (default: suffix)"),
    ] = "",
    users: Annotated[int, typer.Option(min=1, help="--synthetic: users per population")] = 2000,
    days: Annotated[float, typer.Option(min=1.0, help="--synthetic: days of history")] = 365.0,
    populations: Annotated[
        int,
        typer.Option(
            min=1,
            help="--synthetic: how many different populations (heavy-tailed purchase rates "
            "and order values, orders-only and click-only customers) to train across",
        ),
    ] = 4,
    seed: Annotated[int, typer.Option(help="Seeds the data generator and the weights")] = 0,
    horizon: Annotated[str, typer.Option(help="Label horizon after each cutoff")] = "90d",
    step: Annotated[str, typer.Option(help="Spacing between cutoffs")] = "7d",
    until: Annotated[str | None, typer.Option(help="ISO time: ignore events after it")] = None,
    hidden: Annotated[str, typer.Option(help="Hidden layer sizes, e.g. 32 or 64,32")] = "32",
    epochs: Annotated[int, typer.Option(min=1)] = 200,
    model_dir: Annotated[
        Path | None, typer.Option(help="Registry (default SEGMENTER_MODEL_DIR)")
    ] = None,
    promote: Annotated[
        bool, typer.Option(help="Make it current if it passes the promotion gate")
    ] = True,
    force: Annotated[
        bool, typer.Option("--force", help="Promote even if the gate says no")
    ] = False,
    tolerance: Annotated[
        float, typer.Option(help="Gate: allowed drop vs a serving model of the same population")
    ] = 0.01,
    version: Annotated[str | None, typer.Option(help="Version name (default: timestamp)")] = None,
) -> None:
    """Train the MLP on events at cutoffs (temporal validation) and write a versioned model.

    Needs --input FILE (real events) or --synthetic (generated populations).
    """
    if (input_file is None) == (not synthetic):
        typer.echo(
            "error: give --input FILE (events to train on) or --synthetic (generated data), "
            "not both and not neither",
            err=True,
        )
        raise typer.Exit(2)
    horizon_ms, step_ms = parse_duration(horizon), parse_duration(step)
    try:
        sizes = tuple(int(h) for h in hidden.split(",") if h.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        typer.echo(f"error: --hidden {hidden!r} must be positive sizes like 32 or 64,32", err=True)
        raise typer.Exit(2)

    from model.dataset import prepare_examples
    from model.sources import decode_records
    from model.train import TrainConfig, train_prepared
    from stream.events import _to_epoch_ms

    setup_logging("INFO")
    settings = settings_or_exit()
    until_ms = _to_epoch_ms(until) if until else None
    logs: list[Any] = []
    if input_file is not None:
        records, skipped = _read_input(input_file, fmt, settings)
        if skipped:
            console.print(f"[yellow]rows skipped on import: {dict(skipped)}")
        logs.append(
            decode_records(
                records,
                clickstream_topic=settings.topic_clickstream,
                orders_topic=settings.topic_orders,
                until_ms=until_ms,
            )
        )
        source = f"{input_file} ({fmt or input_file.suffix.lstrip('.')})"
    else:
        from stream.populations import generate_population, sample_populations
        from stream.produce import encode_generated

        configs = sample_populations(seed, populations, users=users, days=days)
        for cfg_p in configs:
            logs.append(
                decode_records(encode_generated(generate_population(cfg_p)), until_ms=until_ms)
            )
        source = "synthetic: " + "; ".join(
            f"{c.label} (seed {c.seed}, {c.users} users, {c.days:g} days)" for c in configs
        )
    for decoded in logs:
        if decoded.rejected:
            console.print(f"[yellow]skipped invalid records: {dict(decoded.rejected)}")
    cfg = TrainConfig(hidden=sizes, epochs=epochs, seed=seed)
    parts = [prepare_examples(d.events, horizon_ms=horizon_ms, step_ms=step_ms) for d in logs]
    with progress() as bar:
        task = bar.add_task("training (epochs)", total=epochs)

        def on_epoch(epoch: int, logs: dict[str, float]) -> None:
            bar.update(
                task,
                completed=epoch + 1,
                description=(
                    f"epoch {epoch + 1} "
                    f"early-stopping loss={logs.get('val_loss', float('nan')):.4f}"
                ),
            )

        target = train_prepared(
            parts,
            model_dir or settings.model_dir,
            horizon_ms=horizon_ms,
            step_ms=step_ms,
            cfg=cfg,
            promote=False,
            source=source,
            source_kind="synthetic" if synthetic else "events",
            on_epoch=on_epoch,
            version=version,
        )
    from model.evaluate import fmt as show
    from model.gate import judge

    registry = model_dir or settings.model_dir
    verdict = judge(registry, target, tolerance)
    report = orjson.loads((target / "report.json").read_bytes())
    console.print(
        f"model [bold]{target.name}[/] written to {target} (report: {target / 'report.md'})"
    )
    console.print(f"gate: {verdict.outcome}: {verdict.reason}")
    if promote and (verdict.passed or force):
        _promote_locally(
            settings, registry, target.name, "segmenter train" + (" --force" if force else "")
        )
    console.print(
        f"validation: {verdict.primary_metric} {verdict.candidate_f1:.3f}, "
        f"accuracy {report['accuracy']:.3f}, macro-F1 {show(report['macro_f1'])} "
        f"on {report['n']} users"
    )
    for cls, m in report["per_class"].items():
        console.print(
            f"  {cls:<11} precision {show(m['precision'], missing='-')} "
            f"recall {show(m['recall'])} "
            f"f1 {show(m['f1'])} support {m['support']}"
        )


def _promote_locally(settings: Settings, registry: Path, version: str, reason: str) -> None:
    """Promote in the registry, then announce if a broker answers (workers also poll)."""
    from model.registry import promote
    from stream.announce import announce

    entry = promote(registry, version, reason)
    console.print(f"current model: {version} (was {entry['previous']})")
    host, _, port = settings.bootstrap_servers.split(",")[0].rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        console.print(f"[yellow]no broker at {host}:{port}: not announced (workers poll)")
        return
    try:
        announce(settings.model_copy(update={"model_dir": registry}), entry, timeout_s=5)
    except Exception as exc:  # training offline is fine; workers poll the pointer
        console.print(
            f"[yellow]not announced on {settings.topic_models} ({exc}); workers will poll"
        )


@app.command()
def retrain(
    every: Annotated[str, typer.Option(help="Interval between runs, e.g. 24h")] = "24h",
    once: Annotated[
        bool, typer.Option("--once", help="One run, then exit (0 unless it failed)")
    ] = False,
    window: Annotated[
        str,
        typer.Option(
            help="Train on cutoffs in this much event time back from the newest event "
            "(features still fold each user's whole history)"
        ),
    ] = "365d",
    until: Annotated[
        str | None, typer.Option(help="ISO time (event time): ignore events after it")
    ] = None,
    horizon: Annotated[str, typer.Option(help="Label horizon after each cutoff")] = "90d",
    step: Annotated[str, typer.Option(help="Spacing between cutoffs")] = "7d",
    tolerance: Annotated[
        float, typer.Option(help="Gate: allowed macro-F1 drop vs the serving model")
    ] = 0.01,
    epochs: Annotated[int, typer.Option(min=1)] = 200,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Scheduled retraining: replay the topics, train, gate against the serving model, promote.

    Serves /metrics (segmenter_retrain_runs_total, segmenter_last_retrain_timestamp_seconds)
    on SEGMENTER_METRICS_PORT. A Redis lock keeps two schedulers from training at once.
    """
    from model.train import TrainConfig
    from stream.events import _to_epoch_ms
    from stream.retrain import RetrainConfig, run_forever

    settings = settings_or_exit()
    setup_logging(settings.log_level, settings)
    cfg = RetrainConfig(
        window_days=parse_duration(window) / 86_400_000,
        until_ms=_to_epoch_ms(until) if until else None,
        horizon_ms=parse_duration(horizon),
        step_ms=parse_duration(step),
        tolerance=tolerance,
        train=TrainConfig(epochs=epochs, seed=seed),
    )
    raise typer.Exit(run_forever(settings, cfg, parse_duration(every) / 1000, once=once))


@app.command()
def user(
    user_id: Annotated[str, typer.Argument(help="The user to look up")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """Show one user's segment, probabilities and features, as the worker holds them in Redis."""
    from stream.lookup import lookup_user

    settings = settings_or_exit()
    found = asyncio.run(lookup_user(settings, user_id))
    if found is None:
        console.print(f"[red]no state for user {user_id!r} under prefix {settings.redis_prefix!r}")
        raise typer.Exit(1)
    if as_json:
        sys.stdout.write(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    console.print(f"[bold]{user_id}[/]: {found['segment']} (model {found['model_version']})")
    for k, v in (found["probabilities"] or {}).items():
        console.print(f"  p({k}) = {v:.3f}")
    for k, v in found["features"].items():
        console.print(f"  {k:<26} {v}")


@app.command("forget")
def forget_cmd(
    user_id: Annotated[str, typer.Argument(help="The user to erase (raw id)")],
) -> None:
    """Right to erasure: delete the user's state, tombstone them on every output topic, and
    keep their hashed id so that a replay cannot bring them back."""
    from stream.forget import forget

    settings = settings_or_exit()
    setup_logging(settings.log_level, settings)
    done = asyncio.run(forget(settings, user_id))
    what = "state deleted" if done.had_state else "no state was held"
    where = ", ".join(f"{t}@{off}" for t, off in done.tombstones.items())
    typer.echo(f"forgot {user_id!r}: {what}; tombstones at {where}")
    # The log names the erasure by the digest the erasure list keeps, never by the id.
    from stream.store import erased_digest

    log.info(
        "erasure: user %s… forgotten (had state: %s)",
        erased_digest(done.user_key).hex()[:12],
        done.had_state,
    )


@app.command()
def demo(
    users: Annotated[int, typer.Option(help="Synthetic users")] = 300,
    days: Annotated[float, typer.Option(help="Days of synthetic history")] = 120.0,
    seed: Annotated[int, typer.Option()] = 7,
    rate: Annotated[float, typer.Option(help="Events/s to stream, 0 = flat out")] = 3000.0,
) -> None:
    """Start (or use) a broker and Redis, run a worker, stream traffic, show changes live."""
    from stream.demo import run_demo

    setup_logging("WARNING")
    code = run_demo(users=users, days=days, seed=seed, rate=rate)
    raise typer.Exit(code)


@app.command()
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
        float, typer.Option(min=0.01, max=2.0, help="Latency phase rate, as a fraction of P")
    ] = 0.5,
    profile: Annotated[
        Path | None,
        typer.Option(help="Directory for a py-spy profile of worker 0 during phase P"),
    ] = None,
    seed: Annotated[int, typer.Option(help="Generator seed")] = 0,
    kafka_url: Annotated[
        str | None, typer.Option(help="Use this broker (own bench-* topics) instead of Tansu")
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(help="Use this Redis (own key prefix, deleted after) instead of embedded"),
    ] = None,
) -> None:
    """Measure the pipeline against a raw Kafka drain and a bare Faust agent, on one backlog.

    Phases, on one embedded broker and Redis: R (raw aiokafka getmany), B0 (bare
    Faust agent, default settings, take(1000, within=0.05)), P (`segmenter
    worker` with its shipped settings), then end-to-end latency at 50% of P.
    Prints a table, or with --json one object with raw_eps, faust_passthrough_eps,
    pipeline_eps, pipeline_vs_faust, pipeline_vs_raw, p50_ms, p99_ms,
    worker_rss_mb, redis_bytes_per_user, events, users, partitions and a
    per-stage breakdown. SEGMENTER_* variables change P's settings.
    """
    from stream.bench import BenchConfig, BenchError, render, run_bench

    setup_logging("INFO")
    cfg = BenchConfig(
        events=events,
        users=users,
        partitions=partitions,
        workers=workers,
        latency_s=latency_seconds,
        latency_load=latency_load,
        profile_dir=profile,
        seed=seed,
        kafka_url=kafka_url,
        redis_url=redis_url,
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


models_app = typer.Typer(
    help="The model registry: list, show, promote, rollback.", no_args_is_help=True
)
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list() -> None:
    """Every version with its high_value F1 (the gate metric); * marks the current one."""
    from model.registry import current_version, list_versions, read_manifest

    settings = settings_or_exit()
    current = current_version(settings.model_dir)
    for version in list_versions(settings.model_dir):
        manifest = read_manifest(settings.model_dir / version)
        metrics = manifest.get("metrics", {})
        f1 = metrics.get("high_value_f1")
        gate = manifest.get("gate", {}).get("outcome", "")
        kind = manifest.get("training", {}).get("source_kind", "?")
        mark = "*" if version == current else " "
        f1_text = f"{f1:.3f}" if isinstance(f1, float) else "-"
        typer.echo(
            f"{mark} {version:<28} high_value-F1 {f1_text}  {kind:<9} "
            f"{manifest.get('created_at', '')}  {gate}"
        )


@models_app.command("show")
def models_show(
    version: Annotated[str, typer.Argument(help="Version (default: current)")] = "",
) -> None:
    """A version's manifest (features, schema hash, classes, window, metrics, gate) and drift.

    ``drift.reference`` summarises the training distribution the manifest stores;
    ``drift.live`` is the workers' latest PSI per feature for this version, read
    from Redis, or says why it is not available.
    """
    import time

    from model.drift import summary
    from model.registry import current_version, read_manifest
    from stream.drift import merge_reports, report_max_age_s
    from stream.store import StateStore

    settings = settings_or_exit()
    version = version or (current_version(settings.model_dir) or "")
    manifest = read_manifest(settings.model_dir / version)
    manifest.pop("normalisation", None)
    ref = manifest.pop("drift_reference", None)
    live: dict[str, Any]
    max_age = report_max_age_s(settings.housekeeping_interval_s)
    if ref is None:
        live = {
            "available": False,
            "reason": "the manifest has no drift reference (trained before drift monitoring); "
            "a model trained by this code has one",
        }
    else:

        async def reports() -> list[dict[str, Any]]:
            store = StateStore.from_settings(settings)
            try:
                return await store.drift_reports()
            finally:
                await store.close()

        try:
            merged = merge_reports(
                ref, asyncio.run(reports()), version, now=time.time(), max_age_s=max_age
            )
        except Exception as exc:  # Redis unreachable, or its reports unreadable
            live = {"available": False, "reason": f"Redis: {type(exc).__name__}: {exc}"}
        else:
            live = (
                {"available": True, **merged}
                if merged is not None
                else {
                    "available": False,
                    "reason": f"no worker has reported drift for {version} in the last "
                    f"{max_age} s (is it serving, with SEGMENTER_DRIFT_WINDOW_ROWS > 0?)",
                }
            )
    manifest["drift"] = {"reference": summary(ref) if ref is not None else None, "live": live}
    sys.stdout.write(orjson.dumps(manifest, option=orjson.OPT_INDENT_2).decode() + "\n")


@models_app.command("promote")
def models_promote(
    version: Annotated[str, typer.Argument(help="Version to make current")],
    reason: Annotated[str, typer.Option(help="Recorded in the promotion history")] = "manual",
) -> None:
    """Make a version current (workers switch without a restart) and announce it."""
    from stream.announce import promote_and_announce

    settings = settings_or_exit()
    entry = promote_and_announce(settings, version, reason)
    typer.echo(f"current: {entry['version']} (was {entry['previous']})")


@models_app.command("rollback")
def models_rollback() -> None:
    """Go back to the version that was current before this one, and announce it."""
    from stream.announce import rollback_and_announce

    settings = settings_or_exit()
    entry = rollback_and_announce(settings)
    typer.echo(f"current: {entry['version']} (rolled back from {entry['previous']})")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
