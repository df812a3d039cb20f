"""Drift shows: a real worker measures its inputs against the serving model's reference."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from model.drift import SIGNIFICANT_PSI, reference, serving_rows
from model.registry import LoadedModel, bootstrap_dir, load_current, set_current
from model.training.dataset import sort_events
from model.training.sources import decode_records
from stream.devtools.embedded import free_port
from stream.settings import Settings
from stream.sinks import ConfluentSink
from stream.training.generate import GeneratorConfig, generate_events
from stream.worker.app import pipeline_config
from stream.worker.pipeline import BatchProcessor
from stream.worker.state.store import StateStore
from tests.conftest import REPO, WorkerProcess, settings_env
from tests.factories import DAY, T0, as_event, click, order
from tests.helpers import as_items, produce, raw_records, wait_applied
from tests.stream.test_observability import samples, total, wait_until

pytestmark = pytest.mark.integration


CLICK_FEATURE = "product_views_30d"


def click_and_order_reference() -> dict[str, Any]:
    """The reference a model trained on clickstream plus orders would store."""
    generated = generate_events(GeneratorConfig(users=150, days=60, seed=7))
    events = decode_records((g.topic, g.key.encode(), orjson.dumps(g.value)) for g in generated)
    return reference(serving_rows(sort_events(events.events)))


def add_model(model_dir: Path, version: str, drift_reference: dict[str, Any] | None) -> None:
    """The bootstrap model under another version, with this drift reference (or none)."""
    target = model_dir / version
    shutil.copytree(bootstrap_dir(), target)
    manifest = orjson.loads((target / "manifest.json").read_bytes())
    manifest["version"] = version
    manifest.pop("drift_reference", None)
    if drift_reference is not None:
        manifest["drift_reference"] = drift_reference
    (target / "manifest.json").write_bytes(orjson.dumps(manifest))


def orders_only(n_users: int, prefix: str) -> list[dict[str, Any]]:
    return [
        order(f"{prefix}-{i}", T0 + d * DAY + i * 1000, total=20.0 + i)
        for i in range(n_users)
        for d in (0, 7, 14)
    ]


def drift_samples(port: int) -> dict[str, float]:
    return {
        s.labels["feature"]: s.value
        for s in samples(port)
        if s.name == "segmenter_feature_drift_psi"
    }


def models_show(settings: Settings, **env: str) -> dict[str, Any]:
    """`segmenter models show` of the current version, as an operator runs it."""
    out = subprocess.run(
        [sys.executable, "-m", "stream.cli", "models", "show"],
        capture_output=True,
        text=True,
        env=settings_env(settings) | env,
        cwd=REPO,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = orjson.loads(out.stdout)
    return result


def test_orders_only_traffic_shows_click_features_drifted_on_metrics_and_in_models_show(
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
) -> None:
    port = free_port()
    settings = settings_factory(metrics_port=port, housekeeping_interval_s=0.5)
    # A model from before drift references: what older manifests look like.
    add_model(settings.model_dir, "old-v0", None)
    set_current(settings.model_dir, "old-v0")
    worker = worker_factory(settings)
    worker.wait_ready()

    # The model predates drift references: it gets no drift metrics.
    wait_applied(settings, produce(settings, as_items(settings, orders_only(5, "old"))), worker)
    time.sleep(1.5)  # three housekeeping rounds
    assert drift_samples(port) == {}
    assert not any(s.name == "segmenter_inputs_out_of_range_ratio" for s in samples(port))
    assert worker.log().count("no drift reference") == 1
    old = models_show(settings)["drift"]
    assert old["reference"] is None and old["live"]["available"] is False
    assert "no drift reference" in old["live"]["reason"]

    add_model(settings.model_dir, "drift-v1", click_and_order_reference())
    set_current(settings.model_dir, "drift-v1")
    wait_until(
        lambda: total(port, "segmenter_model_info", version="drift-v1") == 1,
        60,
        "drift-v1",
    )

    values = orders_only(120, "buyer")
    wait_applied(settings, produce(settings, as_items(settings, values)), worker)
    wait_until(
        lambda: drift_samples(port).get(CLICK_FEATURE, 0.0) > SIGNIFICANT_PSI,
        60,
        f"{CLICK_FEATURE} drift on /metrics",
    )
    psi = drift_samples(port)
    assert set(psi) == set(click_and_order_reference()["features"])
    assert total(port, "segmenter_inputs_out_of_range_ratio") >= 0.0

    shown = models_show(settings)
    assert shown["version"] == "drift-v1" and "drift_reference" not in shown
    drift = shown["drift"]
    assert drift["reference"]["rows"] > 1000
    assert drift["reference"]["features"][CLICK_FEATURE]["bins"] >= 2
    live = drift["live"]
    assert live["available"] is True, live
    assert live["workers"] == 1 and live["rows"] == len(values)
    assert CLICK_FEATURE in live["significant"]
    assert live["psi"][CLICK_FEATURE] > SIGNIFICANT_PSI

    # Without Redis there is no live view, and the stored reference still shows.
    unreachable = models_show(settings, SEGMENTER_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert unreachable["drift"]["live"]["available"] is False
    assert "Redis" in unreachable["drift"]["live"]["reason"]
    assert unreachable["drift"]["reference"] == drift["reference"]


def test_the_processor_feeds_drift_one_row_per_arriving_event_after_its_commit(
    settings_factory: Callable[..., Settings],
) -> None:
    """Re-scores of quiet users, redeliveries and the sweep add nothing: the
    reference (``serving_rows``) holds one row per event, and so does the window."""
    settings = settings_factory()
    seen: list[tuple[str, np.ndarray]] = []

    def observe(model: LoadedModel, x: np.ndarray, skip: list[int]) -> None:
        seen.append((model.version, np.delete(x, skip, axis=0)))

    values = [
        click("quiet", T0, "page_view"),
        order("quiet", T0 + 1000, total=50.0),
        click("busy", T0 + 2000),
        # 20 days later: "quiet" is re-scored at 14 days of inactivity first
        click("quiet", T0 + 20 * DAY, "add_to_cart"),
    ]
    batch = raw_records(settings, values)

    async def run() -> None:
        store = StateStore.from_settings(settings)
        sink = ConfluentSink(settings.kafka_client_config())
        model = load_current(settings.model_dir)
        proc = BatchProcessor(
            store,
            sink,
            lambda: model,
            pipeline_config(settings),
            clock_ms=lambda: T0 + 400 * DAY,
            observe_inputs=observe,
        )
        try:
            await proc.process(batch)
            await proc.process(batch)  # redelivered: nothing applied, nothing observed
            await proc.reevaluate(range(settings.topic_partitions))
        finally:
            sink.close()
            await store.close()

    asyncio.run(run())
    assert len(seen) == 1
    version, x = seen[0]
    assert version == load_current(settings.model_dir).version
    events = sort_events([as_event(v) for v in values])
    assert np.array_equal(np.sort(x, axis=0), np.sort(serving_rows(events), axis=0))
