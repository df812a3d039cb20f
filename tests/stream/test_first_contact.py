"""First contact: the CLI as a stranger runs it, from an empty directory, as a subprocess."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.core.events import MIN_TIMESTAMP_MS, DecodeLimits, Rejected, decode, parse_instant
from stream.devtools.embedded import spawn_worker
from stream.settings import Settings
from tests.conftest import REPO, TopicReader, WorkerProcess
from tests.factories import T0, click, order


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTER_")}
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        capture_output=True,
        text=True,
        env=base | {"HOME": str(cwd), "COLUMNS": "200"} | (env or {}),
        cwd=cwd,
        timeout=timeout,
    )


def test_version(tmp_path: Path) -> None:
    out = cli("--version", cwd=tmp_path)
    assert out.returncode == 0
    assert re.fullmatch(r"segmenter \d+\.\d+\.\d+\S*\n", out.stdout)


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["train", "--synthetic", "--horizon", "3months"], "--horizon"),
        (["train", "--synthetic", "--until", "1997-09-30T10:00"], "--until"),
        (["train", "--synthetic", "--hidden", "64,x"], "--hidden"),
        (["train"], "--input"),
        (["export", "--out", "e.parquet", "--until", "1997-09-3"], "--until"),
        (["export", "--out", "e.parquet", "--topic", "bad name"], "--topic"),
        (["export", "--out", "e.txt"], ".txt"),
        (["worker", "--log-level", "loud"], "--log-level"),
        (["produce", "--format", "xml", "events.jsonl"], "--format"),
        (["produce", "missing.jsonl"], "missing.jsonl"),
        (["retrain", "--every", "soon"], "--every"),
        (["no-such-command"], "no-such-command"),
    ],
)
def test_a_user_error_is_one_line_and_exit_code_2(
    tmp_path: Path, args: list[str], names: str
) -> None:
    (tmp_path / "events.jsonl").write_text("")
    out = cli(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert names in lines[0]
    # Rejected while parsing, before any data was generated or a model trained.
    assert not any(tmp_path.glob(".local/share/segmenter/models/*"))


def test_debug_shows_the_traceback_of_an_unexpected_error(tmp_path: Path) -> None:
    # An unreachable Redis is not a usage error: exit 1, one line, or a traceback with --debug.
    env = {"SEGMENTER_REDIS_URL": "redis://127.0.0.1:1/0"}
    plain = cli("user", "u1", cwd=tmp_path, env=env)
    assert plain.returncode == 1
    assert "Traceback" not in plain.stderr and len(plain.stderr.strip().splitlines()) == 1
    assert "--debug" in plain.stderr
    debug = cli("--debug", "user", "u1", cwd=tmp_path, env=env)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_help_shows_choices_date_forms_and_the_old_log_option(tmp_path: Path) -> None:
    produce = cli("produce", "--help", cwd=tmp_path).stdout
    for choice in ("jsonl", "csv", "parquet", "online-retail", "rees46"):
        assert choice in produce
    assert "YYYY-MM-DD" in cli("export", "--help", cwd=tmp_path).stdout
    worker = cli("worker", "--help", cwd=tmp_path).stdout
    assert "--log-level" in worker and "--loglevel" in worker


def test_readme_cli_section_lists_exactly_the_commands_of_help(tmp_path: Path) -> None:
    import typer.main

    from stream.cli import app

    commands = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    readme = (REPO / "README.md").read_text()
    block = readme.split("## CLI\n", 1)[1].split("```", 2)[1]
    listed = {line.split()[1] for line in block.splitlines() if line.startswith("segmenter ")}
    assert listed == commands


@given(st.dates(min_value=date(1970, 1, 1), max_value=date(2200, 12, 31)))
def test_a_bare_date_is_midnight_utc(day: date) -> None:
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
    assert parse_instant(day.isoformat()) == int(midnight.timestamp() * 1000)
    assert parse_instant(midnight.isoformat().replace("+00:00", "Z")) == parse_instant(
        day.isoformat()
    )


def test_a_time_without_a_zone_is_refused_with_what_to_type() -> None:
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_instant("1997-09-30T10:00")
    with pytest.raises(ValueError, match="calendar date"):
        parse_instant("1997-02-30")


def test_the_event_time_floor_is_a_setting() -> None:
    old = click("u1", ts=parse_instant("1997-09-30"))
    value = orjson.dumps(old)
    rejected = decode("clickstream", b"u1", value, now_ms=T0)
    assert isinstance(rejected, Rejected) and "SEGMENTER_MIN_EVENT_TIME" in rejected.detail
    settings = Settings(min_event_time="1990-01-01")  # type: ignore[arg-type]
    assert settings.decode_limits().min_timestamp_ms == parse_instant("1990-01-01")
    assert not isinstance(
        decode("clickstream", b"u1", value, now_ms=T0, limits=settings.decode_limits()), Rejected
    )
    assert Settings().min_event_time == MIN_TIMESTAMP_MS == DecodeLimits().min_timestamp_ms


def test_an_event_time_floor_before_1970_is_refused_at_start_up_in_one_line() -> None:
    # Before the epoch, event hours go negative: the deduplication memory
    # cannot file them, and every batch holding such an event would fail.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTER_")}
    script = Path(sys.executable).with_name("segmenter")
    out = subprocess.run(
        [str(script), "worker"],
        capture_output=True,
        text=True,
        env=env | {"SEGMENTER_MIN_EVENT_TIME": "1969-12-31"},
        cwd=REPO,
        timeout=120,
    )
    assert out.returncode != 0 and "Traceback" not in out.stderr
    named = [line for line in out.stderr.splitlines() if "SEGMENTER_MIN_EVENT_TIME" in line]
    assert len(named) == 1 and "must be 1970-01-01 or later" in named[0], out.stderr
    assert Settings(min_event_time="1970-01-01").min_event_time == 0  # type: ignore[arg-type]


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_produce_routes_plain_events_by_event_type(
    tmp_path: Path,
    fmt: str,
    settings_factory: Callable[..., Settings],
    reader_factory: Callable[[str], TopicReader],
) -> None:
    settings = settings_factory()
    events = [
        click("ann", T0, "page_view"),
        order("ann", T0 + 1000, total=42.5),
        order("bob", T0 + 2000, total=10.0, kind="order_refunded"),
        click("bob", T0 + 3000, "search"),
    ]
    path = tmp_path / f"plain.{fmt}"
    if fmt == "jsonl":
        path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    elif fmt == "csv":
        fields = sorted({k for e in events for k in e})
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            for e in events:
                row = {k: orjson.dumps(v).decode() if k == "items" else v for k, v in e.items()}
                writer.writerow(row)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        fields = sorted({k for e in events for k in e} - {"items"})
        pq.write_table(pa.table({k: [e.get(k) for e in events] for k in fields}), path)

    out = cli(
        "produce", str(path), cwd=tmp_path, env=settings.to_env() | {"PATH": os.environ["PATH"]}
    )
    assert out.returncode == 0, out.stderr
    assert "produced 4 records" in out.stderr

    orders = reader_factory(settings.topic_orders).wait_for(lambda m: len(m) >= 2)
    clicks = reader_factory(settings.topic_clickstream).wait_for(lambda m: len(m) >= 2)
    assert sorted(orjson.loads(m.value())["event_type"] for m in orders) == [
        "order_placed",
        "order_refunded",
    ]
    assert all(m.key() == orjson.loads(m.value())["user_id"].encode() for m in orders + clicks)
    placed = next(orjson.loads(m.value()) for m in orders if m.key() == b"ann")
    assert placed["total"] == 42.5 and placed["timestamp"] == T0 + 1000


@pytest.mark.integration
def test_a_worker_starts_from_an_empty_directory_with_three_settings(
    tmp_path: Path, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory()
    home, cwd, models = tmp_path / "home", tmp_path / "empty", tmp_path / "mnt" / "models"
    home.mkdir()
    cwd.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "SEGMENTER_KAFKA_URL": settings.kafka_url,
        "SEGMENTER_REDIS_URL": settings.redis_url,
        "SEGMENTER_MODEL_DIR": str(models),
        # Only to keep this test's keys, topics and group apart from the rest.
        "SEGMENTER_REDIS_PREFIX": settings.redis_prefix,
        "SEGMENTER_GROUP_ID": settings.group_id,
        "SEGMENTER_TOPIC_CLICKSTREAM": settings.topic_clickstream,
        "SEGMENTER_TOPIC_ORDERS": settings.topic_orders,
        "SEGMENTER_METRICS_PORT": "0",
    }
    worker = WorkerProcess(
        spawn_worker(env, tmp_path / "worker.log", cwd=cwd), tmp_path / "worker.log"
    )
    try:
        worker.wait_ready()
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
    assert (home / ".local" / "state" / "segmenter" / "faust").is_dir()
    assert (models / "current").exists()
    assert list(cwd.iterdir()) == []  # nothing written where it happened to be started


@pytest.mark.brokers("tansu", "kafka")
@pytest.mark.integration
def test_export_of_inputs_and_of_segment_changes_through_the_cli(
    tmp_path: Path, settings_factory: Callable[..., Settings]
) -> None:
    import pyarrow.dataset as ds

    from tests.helpers import as_items, produce

    settings = settings_factory()
    events = [click("ann", T0, "page_view"), order("ann", T0 + 86_400_000, total=42.5)]
    produce(settings, as_items(settings, events))
    change = {
        "user_id": "ann",
        "segment": "regular",
        "previous_segment": None,
        "event_time": "2024-01-02T00:00:00Z",
        "version": 1,
        "probabilities": {"regular": 0.9},
    }
    produce(settings, [(settings.topic_segments, b"ann", orjson.dumps(change))])
    env = settings.to_env() | {"PATH": os.environ["PATH"]}

    inputs = cli("export", "--out", "in.parquet", "--since", "2024-01-01", cwd=tmp_path, env=env)
    assert inputs.returncode == 0, inputs.stderr
    assert "exported 2 records" in inputs.stderr
    table = ds.dataset(tmp_path / "in.parquet", format="parquet", partitioning="hive").to_table()
    rows = sorted(table.to_pylist(), key=lambda r: r["event_time_ms"])
    assert [r["event_type"] for r in rows] == ["page_view", "order_placed"]
    assert [str(r["date"]) for r in rows] == ["2024-01-01", "2024-01-02"]
    assert all(r["offset"] is not None and r["partition"] is not None for r in rows)
    assert rows[1]["total"] == 42.5 and rows[1]["key"] == "ann"

    segs = cli(
        "export", "--topic", settings.topic_segments, "--out", "segs.jsonl", cwd=tmp_path, env=env
    )
    assert segs.returncode == 0, segs.stderr
    (line,) = (tmp_path / "segs.jsonl").read_bytes().splitlines()
    assert orjson.loads(line) == {"topic": settings.topic_segments, "key": "ann", "value": change}

    missing = cli("export", "--topic", "no-such-topic", "--out", "x.jsonl", cwd=tmp_path, env=env)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
