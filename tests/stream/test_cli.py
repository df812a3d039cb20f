"""The command line as a user runs it: real processes, real servers."""

from __future__ import annotations

import asyncio
import ctypes
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from model.registry import load_current
from stream.settings import Settings
from stream.sinks import ConfluentSink
from stream.worker.app import pipeline_config
from stream.worker.pipeline import BatchProcessor
from stream.worker.records import RawRecord
from stream.worker.state.store import StateStore
from tests.conftest import REPO, settings_env
from tests.factories import DAY, T0, click, order


def segmenter(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        capture_output=True,
        text=True,
        env=env
        if env is not None
        else {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTER_")},
        cwd=REPO,
        timeout=timeout,
    )


def test_help_lists_the_commands() -> None:
    out = segmenter("--help")
    assert out.returncode == 0
    for command in ("demo", "worker", "generate", "produce", "train", "user"):
        assert command in out.stdout


@pytest.mark.parametrize(
    ("var", "value", "expect"),
    [
        ("SEGMENTER_KAFKA_URL", "localhost", "SEGMENTER_KAFKA_URL"),
        ("SEGMENTER_REDIS_URL", "http://x", "SEGMENTER_REDIS_URL"),
        ("SEGMENTER_BATCH_MAX", "lots", "SEGMENTER_BATCH_MAX"),
    ],
)
def test_wrong_setting_fails_at_start_up_naming_the_variable(
    var: str, value: str, expect: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTER_")} | {var: value}
    out = segmenter("worker", env=env, timeout=60)
    assert out.returncode != 0
    assert expect in out.stderr and "Traceback" not in out.stderr


def test_bad_playbook_stops_the_worker_at_start_up_with_line_and_reason(tmp_path: Path) -> None:
    bad = tmp_path / "playbook.yaml"
    bad.write_text("segments:\n  at_risk:\n    action: win_back\n  vip:\n    action: x\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTER_")} | {
        "SEGMENTER_PLAYBOOK_PATH": str(bad),
        "SEGMENTER_MODEL_DIR": str(tmp_path / "models"),
    }
    out = segmenter("worker", env=env, timeout=60)
    assert out.returncode != 0
    assert f"{bad}:4: unknown segment 'vip'" in out.stderr
    assert "Traceback" not in out.stderr


def test_secrets_are_masked_in_settings_output() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTER_")} | {
        "SEGMENTER_REDIS_PASSWORD": "hunter2-secret",
        "SEGMENTER_REDIS_URL": "redis://admin:pa55word@127.0.0.1:6379/0",
    }
    out = segmenter("settings", env=env)
    assert out.returncode == 0, out.stderr
    assert "hunter2-secret" not in out.stdout and "pa55word" not in out.stdout
    assert "SEGMENTER_REDIS_PASSWORD=**********" in out.stdout


def test_generate_writes_deterministic_jsonl(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert (
        segmenter(
            "generate", "--users", "20", "--days", "30", "--seed", "5", "--out", str(a)
        ).returncode
        == 0
    )
    assert (
        segmenter(
            "generate", "--users", "20", "--days", "30", "--seed", "5", "--out", str(b)
        ).returncode
        == 0
    )
    assert a.read_bytes() == b.read_bytes()
    first = orjson.loads(a.read_bytes().splitlines()[0])
    assert set(first) == {"topic", "key", "value"} and first["key"] == first["value"]["user_id"]


@pytest.mark.integration
def test_user_prints_the_documented_json(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory()
    values = [
        click("ann", T0, "page_view"),
        click("ann", T0 + 1000),
        click("ann", T0 + 2000, "add_to_cart"),
    ]
    values += [order("ann", T0 + 5 * DAY, total=42.5)]

    async def feed() -> None:
        store = StateStore.from_settings(settings)
        sink = ConfluentSink(settings.kafka_client_config())
        model = load_current(settings.model_dir)
        proc = BatchProcessor(store, sink, lambda: model, pipeline_config(settings))
        recs = [
            RawRecord(
                settings.topic_orders
                if v["event_type"].startswith("order")
                else settings.topic_clickstream,
                0,
                i,
                b"ann",
                orjson.dumps(v),
            )
            for i, v in enumerate(values)
        ]
        await proc.process(recs)
        sink.close()
        await store.close()

    asyncio.run(feed())
    out = segmenter("user", "ann", "--json", env=settings_env(settings))
    assert out.returncode == 0, out.stderr
    data = orjson.loads(out.stdout)
    assert set(data) >= {"user_id", "segment", "probabilities", "model_version", "features"}
    f = data["features"]
    assert f["order_count"] == 1 and f["total_spend"] == 42.5
    assert f["product_views"] == 1 and f["cart_adds"] == 1 and f["session_count"] == 1
    assert f["first_seen_at"] == "2024-01-01T00:00:00Z"
    assert f["last_order_at"] == f["last_seen_at"] == "2024-01-06T00:00:00Z"
    assert abs(sum(data["probabilities"].values()) - 1) < 1e-3

    missing = segmenter("user", "nobody", "--json", env=settings_env(settings))
    assert missing.returncode == 1 and "nobody" in missing.stderr


@pytest.mark.integration
def test_demo_runs_on_embedded_servers_and_leaves_no_process(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTER_")}
    env |= {
        "SEGMENTER_MODEL_DIR": str(tmp_path / "models"),
        "SEGMENTER_DATA_DIR": str(tmp_path / "faust"),
    }
    # As a child subreaper, anything the demo leaves behind is re-parented to
    # this test process instead of init, so it shows up among our children.
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    try:
        before = _children()
        out = segmenter(
            "demo", "--users", "40", "--days", "60", "--rate", "0", env=env, timeout=300
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "demo summary" in out.stdout
        assert "users now in" in out.stdout
        time.sleep(0.5)
        left = _children() - before
        for pid in left:
            os.waitpid(pid, os.WNOHANG)  # reap zombies: exited, merely not yet collected
        assert _children() - before == set(), "the demo left a process running"
    finally:
        libc.prctl(36, 0, 0, 0, 0)


def _children() -> set[int]:
    me = os.getpid()
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[1]) == me and stat[0] != "Z":
            pids.add(int(entry.name))
    return pids
