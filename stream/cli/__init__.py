"""`segmenter`: the command line. Glue only: every rule lives in a module it calls."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer

from stream.cli.args import (
    DATE_HELP,
    Debug,
    InputFormat,
    LogLevel,
    UserError,
    duration,
    instant,
    package_version,
    run,
    topic_names,
)
from stream.cli.common import (
    console,
    log,
    progress,
    read_input_file,
    require_broker,
    settings_or_exit,
    setup_logging,
)
from stream.cli.models import audiences_app, models_app
from stream.cli.tools import bench, demo, generate
from stream.cli.train import retrain, train
from stream.settings import Settings, SettingsError

app = typer.Typer(
    help=(
        "Streaming customer segmentation. Settings come from SEGMENTER_* environment "
        "variables (see `segmenter settings`). Dates are YYYY-MM-DD (midnight UTC) or "
        "ISO-8601 with a zone; durations are like 90d, 24h, 30m."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"segmenter {package_version()}")
        raise typer.Exit()


@app.callback()
def _global(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit"
        ),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Print tracebacks for errors (or SEGMENTER_DEBUG=1)")
    ] = False,
) -> None:
    if debug:
        Debug.enabled = True


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
    log_level: Annotated[
        LogLevel | None,
        typer.Option(
            "--log-level",
            "--loglevel",
            case_sensitive=False,
            help="Log level (default SEGMENTER_LOG_LEVEL)",
        ),
    ] = None,
) -> None:
    """Run a stream worker: consume clickstream+orders, keep features in Redis, publish changes.

    Stops cleanly on SIGTERM or SIGINT: the batch in flight finishes, offsets
    are committed, and the process exits 0.
    """
    settings = settings_or_exit()
    level = log_level.value if log_level is not None else settings.log_level
    setup_logging(level, settings)
    from stream.worker import run_worker

    run_worker(settings, level)


@app.command("produce")
def produce_cmd(
    file: Annotated[
        Path, typer.Argument(exists=True, help="Events file (or a directory from `export`)")
    ],
    fmt: Annotated[
        InputFormat,
        typer.Option(
            "--format",
            case_sensitive=False,
            help="jsonl/csv/parquet: plain events (routed to the orders or clickstream topic by "
            "event_type), or the {topic,key,value} lines of `generate`/`export`; online-retail: "
            "UCI Online Retail CSV; rees46: REES46 behaviour CSV; auto: by suffix",
        ),
    ] = InputFormat.AUTO,
) -> None:
    """Send a file of events to the input topics, keyed by user_id."""
    from stream.topics import ensure_topics
    from stream.training.produce import make_producer, produce

    settings = settings_or_exit()
    records, skipped = read_input_file(file, fmt, settings)
    require_broker(settings)
    ensure_topics(settings)
    with progress() as bar:
        task = bar.add_task(f"producing {file.name}", total=None)
        n = produce(
            make_producer(settings.kafka_client_config()),
            records,
            on_sent=lambda k: bar.advance(task, k),
        )
    if skipped:
        console.print(f"[yellow]rows skipped on import: {dict(skipped)}")
    console.print(f"produced {n:,} records from {file}")


@app.command("export")
def export_cmd(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="FILE.jsonl, or FILE.parquet: a directory of typed columns, partitioned by date",
        ),
    ],
    topics: Annotated[
        list[str] | None,
        typer.Option(
            "--topic",
            "--topics",
            help="Topic to export; repeat it or give a comma list. Default: the input topics. "
            "The segments topic (SEGMENTER_TOPIC_SEGMENTS) can be exported too",
        ),
    ] = None,
    since: Annotated[
        int | None,
        typer.Option(parser=instant, metavar="DATE", help=f"Event time, inclusive: {DATE_HELP}"),
    ] = None,
    until: Annotated[
        int | None,
        typer.Option(parser=instant, metavar="DATE", help=f"Event time, inclusive: {DATE_HELP}"),
    ] = None,
    idle_timeout: Annotated[
        int,
        typer.Option(
            parser=duration, metavar="DURATION", help="Give up when the broker sends nothing"
        ),
    ] = "60s",  # type: ignore[assignment]  # parsed by `duration`, as click does defaults
) -> None:
    """Export topics to a file for data teams, filtered on each record's own event time."""
    from redis.exceptions import RedisError

    from stream.erasure import load_erased
    from stream.training.export import check_target, export_records
    from stream.training.replay import check_topics, replay_records

    names = topic_names(topics)
    settings = settings_or_exit()
    names = names or list(settings.input_topics)
    if since is not None and until is not None and since > until:
        raise typer.BadParameter("--since is after --until", param_hint="'--since'")
    try:
        check_target(out)
        require_broker(settings)
        check_topics(settings.kafka_client_config(), names)
        # Erased users' records stay out of every export (the erasure list).
        erased = load_erased(settings)
    except (ValueError, RuntimeError, RedisError) as exc:
        raise UserError(str(exc)) from None
    left_out = [0]
    with progress() as bar:
        task = bar.add_task("exporting (records read)", total=None)
        try:
            result = export_records(
                erased.filter_records(
                    replay_records(
                        settings.kafka_client_config(),
                        names,
                        since_ms=since,
                        idle_timeout_s=idle_timeout / 1000,
                    ),
                    settings.input_topics,
                    left_out,
                ),
                out,
                since_ms=since,
                until_ms=until,
                on_progress=lambda k: bar.advance(task, k),
            )
        except (RuntimeError, TimeoutError) as exc:
            raise UserError(f"export: {exc}") from None
    console.print(
        f"exported {result.written:,} records to {out} "
        f"({result.skipped_out_of_range:,} outside the range, {result.invalid:,} invalid, "
        f"{left_out[0]:,} of erased users left out)"
    )


@app.command()
def user(
    user_id: Annotated[str, typer.Argument(help="The user to look up")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """Show one user's segment, probabilities, predictive traits and features, as the
    worker holds them in Redis (traits recomputed with the model that scored them)."""
    from stream.worker.web.lookup import lookup_user

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
    # The predictive traits of the last scoring; "unknown" where the model cannot say.
    t = found["traits"]
    shown = {
        "p_purchase_90d": None if t["p_purchase_90d"] is None else f"{t['p_purchase_90d']:.3f}",
        "predicted_spend_90d": (
            None if t["predicted_spend_90d"] is None else f"{t['predicted_spend_90d']:.2f}"
        ),
        "p_active_90d": None if t["p_active_90d"] is None else f"{t['p_active_90d']:.3f}",
        "expected_next_order_at": t["expected_next_order_at"],
    }
    for k, text in shown.items():
        console.print(f"  {k:<26} {text or 'unknown'}")
    console.print(f"  scored at: {found['scored_at']}")
    console.print(f"  audiences: {', '.join(found['audiences']) or 'none'}")
    for k, v in found["features"].items():
        console.print(f"  {k:<26} {v}")


@app.command("forget")
def forget_cmd(
    user_id: Annotated[str, typer.Argument(help="The user to erase (raw id)")],
) -> None:
    """Right to erasure: delete the user's state and tombstone them on every output topic.

    Their hashed id is kept, so that a replay cannot bring them back.
    """
    from stream.erasure import ErasureKeyError
    from stream.worker.forget import forget

    settings = settings_or_exit()
    setup_logging(settings.log_level, settings)
    try:
        done = asyncio.run(forget(settings, user_id))
    except ErasureKeyError as exc:
        raise UserError(f"forget: {exc}") from None
    what = "state deleted" if done.had_state else "no state was held"
    where = ", ".join(f"{t}@{off}" for t, off in done.tombstones.items())
    typer.echo(f"forgot {user_id!r}: {what}; tombstones at {where}")
    # Logs are kept and shipped: no id, and no digest of it either (a digest
    # in a log lets anyone holding the list, or the key, match the erasure).
    log.info("erasure: a user was forgotten (had state: %s)", done.had_state)


app.command()(train)
app.command()(retrain)
app.command()(generate)
app.command()(demo)
app.command()(bench)
app.add_typer(models_app, name="models")
app.add_typer(audiences_app, name="audiences")


def main() -> None:
    sys.exit(run(app))
