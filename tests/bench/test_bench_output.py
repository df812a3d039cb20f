"""`segmenter bench` output, without servers: the JSON contract and the arithmetic behind it."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from stream.cli import app
from stream.devtools.bench import JSON_KEYS, BenchConfig, BenchError, BenchResult, render
from stream.devtools.bench.config import Samples
from stream.devtools.bench.measure import (
    agent_thread_shares,
    cpu_seconds,
    cpu_shares,
    main_thread_sched,
    metrics_breakdown,
    parse_metrics,
    percentile,
    profile_breakdown,
)


def _result(**overrides: object) -> BenchResult:
    values: dict[str, object] = {
        "events": 30_000,
        "users": 2_400,
        "partitions": 4,
        "workers": 1,
        "raw_eps": 600_000.0,
        "faust_passthrough_eps": 15_000.0,
        "pipeline_eps": 48_000.0,
        "p50_ms": 21.5,
        "p99_ms": 80.25,
        "latency_rate_eps": 15_000.0,
        "raw_p50_ms": 12.5,
        "raw_p99_ms": 30.0,
        "worker_rss_mb": 180.0,
        "redis_bytes_per_user": 410.0,
        "bytewax_eps": 96_000.0,
        "quix_eps": 24_000.0,
    }
    values.update(overrides)
    return BenchResult(**values)  # type: ignore[arg-type]


def test_json_has_every_contract_key_with_numbers_and_ratios() -> None:
    out = orjson.loads(orjson.dumps(_result().to_json()))
    assert set(JSON_KEYS) <= set(out)
    assert out["pipeline_vs_faust"] == 3.2
    assert out["pipeline_vs_raw"] == 0.08
    for key in JSON_KEYS:
        assert isinstance(out[key], int | float), key
    assert isinstance(out["breakdown"], dict)
    assert (out["events"], out["users"], out["partitions"]) == (30_000, 2_400, 4)


def test_json_latency_is_null_when_the_latency_phase_was_skipped() -> None:
    out = _result(p50_ms=None, p99_ms=None).to_json()
    assert out["p50_ms"] is None and out["p99_ms"] is None
    render(_result(p50_ms=None, p99_ms=None))  # the table copes too


def test_rate_is_measured_between_ten_and_ninety_percent() -> None:
    s = Samples()
    # slow start (group join), steady 1000 records/s, slow tail
    for t, n in [
        (0.0, 0),
        (5.0, 0),
        (6.0, 100),
        (7.0, 1100),
        (15.0, 9100),
        (16.0, 9500),
        (30, 10_000),
    ]:
        s.add(t, n)
    assert s.rate(10_000) == pytest.approx(1000.0)


def test_rate_without_enough_progress_is_an_error() -> None:
    s = Samples()
    s.add(0.0, 0)
    s.add(1.0, 500)
    with pytest.raises(BenchError, match="500 of 10,000"):
        s.rate(10_000)


def test_percentile_interpolates() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    assert percentile(list(range(101)), 99) == 99.0


def test_breakdown_from_worker_histograms_splits_the_window() -> None:
    before = parse_metrics(
        "segmenter_batch_seconds_sum 1.0\nsegmenter_batch_seconds_count 10\n"
        "segmenter_batch_size_sum 10000\n"
        'segmenter_redis_seconds_sum{op="load"} 0.1\n'
        'segmenter_redis_seconds_sum{op="commit"} 0.2\n'
        "segmenter_publish_seconds_sum 0.1\n"
    )
    after = parse_metrics(
        "segmenter_batch_seconds_sum 3.0\nsegmenter_batch_seconds_count 30\n"
        "segmenter_batch_size_sum 50000\n"
        'segmenter_redis_seconds_sum{op="load"} 0.3\n'
        'segmenter_redis_seconds_sum{op="commit"} 0.6\n'
        "segmenter_publish_seconds_sum 0.5\n"
        "segmenter_agent_wait_seconds_sum 1.2\n"
    )
    b = metrics_breakdown([before], [after], wall_s=4.0)
    assert b["batches"] == 20
    assert b["records_per_batch"] == 2000.0
    assert b["us_per_record"]["batch_total"] == 50.0
    assert b["us_per_record"]["faust_and_idle"] == 50.0
    share = b["share_of_worker_time_pct"]
    assert share["batch_processing"] == 50.0
    assert share["redis_load"] == 5.0
    assert share["redis_commit"] == 10.0
    assert share["publish_wait"] == 10.0
    assert share["decode_fold_score"] == 25.0  # 2.0 s of batches - 0.2 - 0.4 - 0.4
    assert b["us_per_record"]["publish_wait"] == 10.0
    assert b["us_per_record"]["waiting_for_records"] == 30.0  # 1.2 s over 40,000 records
    assert share["... of which waiting for records (idle)"] == 30.0


def test_profile_breakdown_attributes_each_sample_to_its_innermost_stage() -> None:
    root = (
        "thread (1): MainThread;<module> (stream/cli/__init__.py:1);"
        "Worker.execute_from_commandline (mode/worker.py:2)"
    )
    raw = "\n".join(
        [
            f"{root} 50",
            f"{root};fold_agent (stream/worker/app.py:3);process (stream/worker/pipeline.py:4);"
            "StateStore.load (stream/worker/state/store.py:6);read (redis/connection.py:7) 20",
            f"{root};fold_agent (stream/worker/app.py:3);apply (stream/core/fold.py:8) 30",
            "thread (2): Thread-1;run (threading.py:1) 500",
        ]
    )
    out = profile_breakdown(raw)
    assert out["samples"] == 100
    assert out["main_thread_pct"] == {
        "idle (loop waiting for I/O)": 50.0,
        "fold": 30.0,
        "redis client (round trips)": 20.0,
    }


def test_config_refuses_more_workers_than_partitions() -> None:
    with pytest.raises(ValueError, match="partitions"):
        BenchConfig(workers=5, partitions=4).validate()


def test_cli_help_names_the_phases_and_options() -> None:
    result = CliRunner().invoke(app, ["bench", "--help"])
    assert result.exit_code == 0
    for word in ("--events", "--users", "--partitions", "--workers", "--json", "B0", "--peers"):
        assert word in result.output


def test_cpu_accounting_reads_this_process_and_divides_by_wall_time() -> None:
    before = cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:  # burn ~0.2 s of CPU
        pass
    after = cpu_seconds(os.getpid())
    assert after - before >= 0.1
    assert cpu_seconds(2**22 + 12345) == 0.0  # no such process
    assert cpu_shares({"w": 1.0, "r": 0.5}, {"w": 3.0, "r": 1.5}, 2.0) == {"w": 1.0, "r": 0.5}


def test_worker_scaling_is_a_ratio_of_two_phases_of_one_run() -> None:
    result = BenchResult(
        events=1000,
        users=10,
        partitions=4,
        workers=2,
        raw_eps=100_000.0,
        faust_passthrough_eps=1000.0,
        pipeline_eps=3400.0,
        one_worker_eps=2000.0,
    )
    out = result.to_json()
    assert out["workers_vs_one"] == 1.7
    assert out["one_worker_eps"] == 2000.0
    single = dataclasses.replace(result, workers=1, one_worker_eps=None).to_json()
    assert single["workers_vs_one"] is None


def test_agent_thread_shares_split_the_window_per_worker() -> None:
    # Two workers over 2 s: 1.2 s and 0.8 s on a core, 0.4 s and 0.2 s queued.
    before = [(10.0, 1.0), (20.0, 2.0)]
    after = [(11.2, 1.4), (20.8, 2.2)]
    assert agent_thread_shares(before, after, 2.0) == {
        "on_a_core": 50.0,
        "waiting_for_a_core": 15.0,
        "neither (I/O, GIL, idle)": 35.0,
    }
    assert agent_thread_shares([], [], 2.0) == {}


def test_main_thread_sched_reads_this_process_and_tolerates_a_missing_one() -> None:
    on_cpu, _ = main_thread_sched(os.getpid())
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:  # burn a little CPU on this thread
        pass
    assert main_thread_sched(os.getpid())[0] > on_cpu
    assert main_thread_sched(2**22 + 12345) == (0.0, 0.0)  # no such process


def test_the_latency_curve_is_a_table_and_a_plot(tmp_path: Path) -> None:
    from stream.devtools.bench.latency import CurvePoint, curve_table, plot_curve

    points = [
        CurvePoint(0.1, 4_000, 60.0, 95.0, 20.0, 35.0),
        CurvePoint(0.4, 16_000, 150.0, 400.0, 25.0, None),  # a reader that saw nothing
    ]
    table = curve_table(points).splitlines()
    assert table[2] == "| 10% | 4,000 | 60 | 95 | 20 | 35 |"
    assert table[3].endswith("| 25 | — |")
    png = plot_curve(points, tmp_path / "curve" / "latency-curve.png", "test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = _result(latency_curve=[p.to_json() for p in points]).to_json()
    assert out["latency_curve"][1] == {
        "load": 0.4,
        "rate_eps": 16_000,
        "p50_ms": 150.0,
        "p99_ms": 400.0,
        "raw_p50_ms": 25.0,
        "raw_p99_ms": None,
    }
    render(_result(latency_curve=out["latency_curve"]))
