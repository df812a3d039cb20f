"""Model promotions while events flow: a live switch, and a restart with a promotion in flight."""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from model.registry import bootstrap_dir, ensure_serving_model, read_manifest
from stream.settings import Settings
from tests.conftest import TopicReader, WorkerProcess, settings_env
from tests.faults.scenario import PacedStream, finish_and_account, history, wait_progress
from tests.stream.test_cli import segmenter

#: The shipped bootstrap model's version: what a fresh registry serves.
BOOTSTRAP = read_manifest(bootstrap_dir())["version"]

pytestmark = pytest.mark.integration


def add_version(model_dir: Path, version: str) -> None:
    """A second model: the bootstrap weights with the output bias nudged, under a new name."""
    import numpy as np

    ensure_serving_model(model_dir)
    target = model_dir / version
    shutil.copytree(bootstrap_dir(), target)
    manifest = orjson.loads((target / "manifest.json").read_bytes())
    manifest["version"] = version
    (target / "manifest.json").write_bytes(orjson.dumps(manifest))
    with np.load(target / "weights.npz") as data:
        arrays = {k: data[k] for k in data.files}
    last = int(arrays["n_layers"]) - 1
    arrays[f"bias_{last}"] = arrays[f"bias_{last}"] + np.float32(0.05)
    np.savez(target / "weights.npz", **arrays)  # type: ignore[arg-type]


def test_worker_switches_model_mid_stream_on_announcement_without_loss(
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
    reader_factory: Callable[[str], TopicReader],
) -> None:
    # Housekeeping is slow here, so only the announcement can make the switch quick.
    settings = settings_factory(batch_max=100, housekeeping_interval_s=120)
    add_version(settings.model_dir, "v2-promoted")
    sent = history(settings, users=150)
    stream = PacedStream(settings, sent, head=len(sent) // 5, rate=1000)
    worker = worker_factory(settings)
    worker.wait_ready()
    wait_progress(settings, len(sent) // 3, [worker])

    promoted_at = time.monotonic()
    out = segmenter(
        "models", "promote", "v2-promoted", "--reason", "test", env=settings_env(settings)
    )
    assert out.returncode == 0, out.stderr
    while f"model switched from {BOOTSTRAP} to v2-promoted" not in worker.log():
        assert time.monotonic() - promoted_at < 20, worker.log()[-2000:]
        time.sleep(0.1)

    ledger = finish_and_account(
        settings, sent, stream.join(), worker, reader_factory, "promotion mid-stream"
    )
    changes = reader_factory(settings.topic_segments)
    changes.poll(2.0)
    by_partition: dict[int, list[str]] = {}
    for m in changes.messages:
        by_partition.setdefault(m.partition(), []).append(orjson.loads(m.value())["model_version"])
    seen = {v for vs in by_partition.values() for v in vs}
    assert seen == {BOOTSTRAP, "v2-promoted"}
    # Once switched, never back: in each partition (publish order), v2 follows v1 only.
    for versions in by_partition.values():
        if "v2-promoted" in versions:
            first_v2 = versions.index("v2-promoted")
            assert set(versions[first_v2:]) == {"v2-promoted"}
    assert ledger.applied == ledger.sent
    assert worker.stop() == 0


def test_restart_while_a_promotion_is_in_flight(
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
    reader_factory: Callable[[str], TopicReader],
) -> None:
    """The promotion completes, and is announced, while the worker is frozen mid-stream
    (SIGSTOP), possibly between publishing a batch and committing it; then the worker
    is SIGKILLed. Its successor must serve the new model and lose nothing."""
    settings = settings_factory(batch_max=100, housekeeping_interval_s=120)
    add_version(settings.model_dir, "v2-in-flight")
    sent = history(settings, users=150)
    stream = PacedStream(settings, sent, head=len(sent) // 5, rate=1000)
    first = worker_factory(settings)
    first.wait_ready()
    wait_progress(settings, len(sent) // 3, [first])
    first.proc.send_signal(signal.SIGSTOP)
    out = segmenter(
        "models", "promote", "v2-in-flight", "--reason", "test", env=settings_env(settings)
    )
    assert out.returncode == 0, out.stderr
    assert "current: v2-in-flight" in out.stdout, out.stdout
    announced = reader_factory(settings.topic_models).wait_for(lambda m: len(m) >= 1)
    assert orjson.loads(announced[-1].value())["version"] == "v2-in-flight"  # the frozen worker
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(30)

    second = worker_factory(settings)
    second.wait_ready()
    assert "serving model v2-in-flight" in second.log()
    ledger = finish_and_account(
        settings, sent, stream.join(), second, reader_factory, "restart during promotion"
    )
    changes = reader_factory(settings.topic_segments)
    changes.poll(2.0)
    by_partition: dict[int, list[str]] = {}
    for m in changes.messages:
        by_partition.setdefault(m.partition(), []).append(orjson.loads(m.value())["model_version"])
    assert {v for vs in by_partition.values() for v in vs} == {BOOTSTRAP, "v2-in-flight"}
    for versions in by_partition.values():  # the successor publishes v2 only
        if "v2-in-flight" in versions:
            assert set(versions[versions.index("v2-in-flight") :]) == {"v2-in-flight"}
    print(f"re-published by the new model after the crash: {ledger.rescored}")
    assert second.stop() == 0
