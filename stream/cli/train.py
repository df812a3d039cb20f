"""`segmenter train` and `segmenter retrain`: glue over model/ and stream/training/retrain.py."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Any, cast

import orjson
import typer

from stream.cli.args import (
    DATE_HELP,
    InputFormat,
    UserError,
    duration,
    instant,
    layer_sizes,
    resolve_format,
)
from stream.cli.common import (
    console,
    log,
    progress,
    read_input_file,
    settings_or_exit,
    setup_logging,
)
from stream.core.events import DAY_MS
from stream.settings import Settings


def train(
    input_file: Annotated[
        Path | None,
        typer.Option(
            "--input",
            "-i",
            exists=True,
            help="Events file (or a Parquet export directory) to train on (real data)",
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
        InputFormat,
        typer.Option("--format", case_sensitive=False, help="As for `segmenter produce`"),
    ] = InputFormat.AUTO,
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
    horizon: Annotated[
        int,
        typer.Option(parser=duration, metavar="DURATION", help="Label horizon after each cutoff"),
    ] = "90d",  # type: ignore[assignment]  # parsed by `duration`, as click does defaults
    step: Annotated[
        int, typer.Option(parser=duration, metavar="DURATION", help="Spacing between cutoffs")
    ] = "7d",  # type: ignore[assignment]
    until: Annotated[
        int | None,
        typer.Option(parser=instant, metavar="DATE", help=f"Ignore events after it: {DATE_HELP}"),
    ] = None,
    hidden: Annotated[
        str,  # a tuple here would make typer expect that many values
        typer.Option(
            parser=layer_sizes,
            metavar="UNITS",
            help="Hidden units per head of the value network (one layer), e.g. 16",
        ),
    ] = "16",
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
        raise typer.BadParameter(
            "give --input FILE (events to train on) or --synthetic (generated data), "
            "not both and not neither"
        )
    try:
        import keras  # noqa: F401  (only to fail early, before any data is read)
    except ImportError:
        raise UserError(
            "training needs TensorFlow, which this install lacks: pip install 'segmenter[train]'"
        ) from None
    horizon_ms, step_ms, until_ms = horizon, step, until
    sizes = cast(tuple[int, ...], hidden)  # what `layer_sizes` returned
    if len(sizes) != 1:
        raise UserError(
            f"--hidden {','.join(map(str, sizes))}: the value network has one hidden layer "
            "per head; give one size, e.g. --hidden 16"
        )

    from model.training.dataset import prepare_examples
    from model.training.sources import decode_records
    from model.training.train import TrainConfig, train_prepared

    setup_logging("INFO")
    settings = settings_or_exit()
    logs: list[Any] = []
    if input_file is not None:
        records, skipped = read_input_file(input_file, fmt, settings)
        if skipped:
            console.print(f"[yellow]rows skipped on import: {dict(skipped)}")
        logs.append(
            decode_records(
                records,
                clickstream_topic=settings.topic_clickstream,
                orders_topic=settings.topic_orders,
                until_ms=until_ms,
                limits=settings.decode_limits(),
            )
        )
        source = f"{input_file} ({resolve_format(fmt, str(input_file), input_file.is_dir())})"
    else:
        from stream.training.populations import generate_population, sample_populations
        from stream.training.produce import encode_generated

        configs = sample_populations(seed, populations, users=users, days=days)
        for cfg_p in configs:
            logs.append(
                decode_records(
                    encode_generated(generate_population(cfg_p)),
                    until_ms=until_ms,
                    limits=settings.decode_limits(),
                )
            )
        source = "synthetic: " + "; ".join(
            f"{c.label} (seed {c.seed}, {c.users} users, {c.days:g} days)" for c in configs
        )
    for rejected in [d.rejected for d in logs if d.rejected]:
        console.print(f"[yellow]skipped invalid records: {dict(rejected)}")
    cfg = TrainConfig(hidden=sizes, epochs=epochs, seed=seed)
    try:
        parts = [prepare_examples(d.events, horizon_ms=horizon_ms, step_ms=step_ms) for d in logs]
    except ValueError as exc:  # too little history for the horizon and step asked for
        raise UserError(str(exc)) from None
    del logs  # the examples are what training needs; the events can go
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
    from model.training.evaluate import fmt as show
    from model.training.gate.judge import judge

    registry = model_dir or settings.model_dir
    verdict = judge(registry, target, tolerance)
    report = orjson.loads((target / "report.json").read_bytes())
    console.print(
        f"model [bold]{target.name}[/] written to {target} (report: {target / 'report.md'})"
    )
    said = "passed" if verdict.passed else "refused"
    kept = "" if promote else " (not promoted: --no-promote)"
    console.print(f"gate: {said}{kept}: {verdict.reason}")
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


def retrain(
    every: Annotated[
        int, typer.Option(parser=duration, metavar="DURATION", help="Interval between runs")
    ] = "24h",  # type: ignore[assignment]  # parsed by `duration`, as click does defaults
    once: Annotated[
        bool, typer.Option("--once", help="One run, then exit (0 unless it failed)")
    ] = False,
    window: Annotated[
        int,
        typer.Option(
            parser=duration,
            metavar="DURATION",
            help="Train on cutoffs in this much event time back from the newest event "
            "(features still fold each user's whole history)",
        ),
    ] = "365d",  # type: ignore[assignment]
    until: Annotated[
        int | None,
        typer.Option(
            parser=instant, metavar="DATE", help=f"Ignore events after it (event time): {DATE_HELP}"
        ),
    ] = None,
    horizon: Annotated[
        int,
        typer.Option(parser=duration, metavar="DURATION", help="Label horizon after each cutoff"),
    ] = "90d",  # type: ignore[assignment]
    step: Annotated[
        int, typer.Option(parser=duration, metavar="DURATION", help="Spacing between cutoffs")
    ] = "7d",  # type: ignore[assignment]
    tolerance: Annotated[
        float, typer.Option(help="Gate: allowed drop vs a serving model of the same population")
    ] = 0.01,
    epochs: Annotated[int, typer.Option(min=1)] = 200,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Scheduled retraining: replay the topics, train, gate against the serving model, promote.

    Serves /metrics (segmenter_retrain_runs_total, segmenter_last_retrain_timestamp_seconds)
    on SEGMENTER_METRICS_PORT. A Redis lock keeps two schedulers from training at once.
    """
    from model.training.train import TrainConfig
    from stream.training.retrain import RetrainConfig, run_forever

    settings = settings_or_exit()
    setup_logging(settings.log_level, settings)
    cfg = RetrainConfig(
        window_days=window / DAY_MS,
        until_ms=until,
        horizon_ms=horizon,
        step_ms=step,
        tolerance=tolerance,
        train=TrainConfig(epochs=epochs, seed=seed),
        on_progress=_ReplayLog(),
    )
    raise typer.Exit(run_forever(settings, cfg, every / 1000, once=once))


class _ReplayLog:
    """A replay's progress as log lines (the retrain job runs unattended)."""

    EVERY = 250_000

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, k: int) -> None:
        before, self.n = self.n, self.n + k
        if before // self.EVERY != self.n // self.EVERY:
            log.info("replay: %d records read", self.n)
