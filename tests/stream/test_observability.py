"""What SREs see: /metrics, /healthz, /readyz of a real worker, scraped by a real Prometheus."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from model.registry import bootstrap_dir, read_manifest, set_current
from stream.devtools.embedded import free_port
from stream.settings import Settings
from tests.conftest import WorkerProcess
from tests.factories import DAY, T0, click, order
from tests.helpers import as_items, produce, wait_applied

#: The shipped bootstrap model's version: what a fresh registry serves.
BOOTSTRAP = read_manifest(bootstrap_dir())["version"]

pytestmark = pytest.mark.integration


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError):
        return 0, b""  # not listening (yet)


def samples(port: int) -> list[Any]:
    _, body = get(f"http://127.0.0.1:{port}/metrics")
    return [s for fam in text_string_to_metric_families(body.decode()) for s in fam.samples]


def total(port: int, name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in samples(port)
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def traffic(n_users: int) -> list[dict[str, Any]]:
    values: list[dict[str, Any]] = []
    for i in range(n_users):
        user = f"obs-{i}"
        for d in range(0, 30, 10):
            ts = T0 + d * DAY + i * 1000
            values += [click(user, ts, "page_view"), click(user, ts + 10)]
            if i % 3 == 0:
                values.append(order(user, ts + 20, total=30.0 + i))
    return values


@pytest.fixture
def observed_worker(
    settings_factory: Callable[..., Settings], worker_factory: Callable[[Settings], WorkerProcess]
) -> Iterator[tuple[Settings, WorkerProcess, int]]:
    port = free_port()
    settings = settings_factory(metrics_port=port, housekeeping_interval_s=0.5)
    worker = worker_factory(settings)
    worker.wait_ready()
    yield settings, worker, port


def wait_until(check: Callable[[], bool], timeout_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_worker_exports_exact_counts_health_and_no_user_labels(
    observed_worker: tuple[Settings, WorkerProcess, int],
) -> None:
    settings, worker, port = observed_worker
    values = traffic(12)
    items = as_items(settings, values)
    items.append((settings.topic_clickstream, b"obs-0", b"\xff\xfe not json"))
    items.append((settings.topic_orders, b"obs-1", orjson.dumps(order("obs-1", T0, total=-1))))
    wait_applied(settings, produce(settings, items), worker)

    status, body = get(f"http://127.0.0.1:{port}/healthz")
    assert status == 200 and orjson.loads(body)["alive"] is True
    wait_until(lambda: get(f"http://127.0.0.1:{port}/readyz")[0] == 200, what="/readyz 200")
    ready = orjson.loads(get(f"http://127.0.0.1:{port}/readyz")[1])
    assert ready["checks"]["partitions"]["assigned"] == 2 * settings.topic_partitions
    assert ready["checks"]["model"]["version"] == BOOTSTRAP

    assert total(port, "segmenter_events_total", outcome="applied") == len(values)
    assert total(port, "segmenter_events_total", outcome="dead_lettered") == 2
    assert total(port, "segmenter_events_total", outcome="duplicate") == 0
    orders_applied = total(
        port, "segmenter_events_total", topic=settings.topic_orders, event_type="order_placed"
    )
    assert orders_applied == sum(1 for v in values if v["event_type"] == "order_placed")
    wait_until(lambda: total(port, "segmenter_segment_users") == 12, what="population gauge")
    wait_until(
        lambda: (
            any(s.name == "segmenter_consumer_lag" for s in samples(port))
            and total(port, "segmenter_consumer_lag") == 0
        ),
        what="lag 0",
    )
    assert total(port, "segmenter_model_info", version=BOOTSTRAP) == 1
    assert total(port, "segmenter_batch_seconds_count") >= 1
    assert total(port, "segmenter_redis_seconds_count", op="commit") >= 1
    assert total(port, "segmenter_publish_seconds_count") >= 1
    assert total(port, "segmenter_agent_wait_seconds_count") >= 1
    changes = total(port, "segmenter_segment_changes_total")
    assert (
        changes >= 12 and total(port, "segmenter_segment_changes_total", from_segment="none") == 12
    )

    users = {v["user_id"] for v in values}
    for s in samples(port):
        assert "user_id" not in s.labels and "user" not in s.labels, s
        assert not users & set(s.labels.values()), s


def test_promoted_model_is_picked_up_and_a_bad_one_refused(
    observed_worker: tuple[Settings, WorkerProcess, int],
) -> None:
    settings, worker, port = observed_worker
    model_dir = settings.model_dir
    for version, schema in (("v2-good", None), ("v3-bad-schema", "0" * 16)):
        target = model_dir / version
        shutil.copytree(bootstrap_dir(), target)
        manifest = orjson.loads((target / "manifest.json").read_bytes())
        manifest["version"] = version
        if schema:
            manifest["schema_hash"] = schema
        (target / "manifest.json").write_bytes(orjson.dumps(manifest))

    set_current(model_dir, "v2-good")
    wait_until(
        lambda: total(port, "segmenter_model_info", version="v2-good") == 1, what="v2 served"
    )
    assert total(port, "segmenter_model_info", version=BOOTSTRAP) == 0
    assert total(port, "segmenter_model_reloads_total", outcome="success") == 1

    set_current(model_dir, "v3-bad-schema")
    wait_until(
        lambda: total(port, "segmenter_model_reloads_total", outcome="rejected") >= 1,
        what="bad model rejected",
    )
    assert total(port, "segmenter_model_info", version="v2-good") == 1
    assert "refused" in worker.log()

    # changes are now stamped with the version that scored them
    values = [click("late-user", T0 + DAY, "page_view")]
    wait_applied(settings, produce(settings, as_items(settings, values)), worker)


@pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="needs Debian's prometheus (.ci/run installs it)"
)
def test_real_prometheus_scrapes_the_worker_and_sees_what_was_sent(
    observed_worker: tuple[Settings, WorkerProcess, int], tmp_path: Path
) -> None:
    settings, worker, port = observed_worker
    values = traffic(9)
    wait_applied(settings, produce(settings, as_items(settings, values)), worker)

    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: segmenter-worker\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
    )
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        api = f"http://127.0.0.1:{prom_port}/api/v1/query?query="

        def query(expr: str) -> float | None:
            status, body = get(api + urllib.request.quote(expr))
            if status != 200:
                return None
            result = orjson.loads(body)["data"]["result"]
            return float(result[0]["value"][1]) if result else None

        wait_until(lambda: query('up{job="segmenter-worker"}') == 1.0, 60, "prometheus scraping")
        wait_until(
            lambda: query('sum(segmenter_events_total{outcome="applied"})') == len(values),
            30,
            "applied count in prometheus",
        )
        wait_until(
            lambda: query("sum(segmenter_segment_users)") == 9, 30, "population in prometheus"
        )
        assert query("sum(segmenter_consumer_lag)") == 0
    finally:
        proc.terminate()
        proc.wait(10)
