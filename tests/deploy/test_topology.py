"""The docker-compose topology, run locally without containers.

Embedded broker and Redis, two `segmenter worker` processes in one group,
one `segmenter retrain` on a short interval, and a real Prometheus scraping
all three, as deploy/prometheus/prometheus.yml does in compose.

The retrain job's gate runs with its default tolerance against a real serving
model: the one an earlier retrain made from the first 200 of the 240 days.
(Not the bootstrap model: a test of the wiring should not hinge on how a
3,000-customer model compares with one trained on four populations.)

The history is a heavy-tailed population (:mod:`stream.training.populations`),
not the four clear-cut types of ``segmenter generate``: the gate's release
archetypes include a monthly buyer who browses only when buying, a customer
those types never show, and a model trained on them rightly fails it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from model.registry import current_version
from model.training.sources import decode_records
from model.training.train import TrainConfig, train_from_events
from stream.core.fold import DAY_MS
from stream.devtools.embedded import free_port
from stream.settings import Settings
from stream.training.populations import PopulationConfig, generate_population
from stream.training.produce import encode_generated
from tests.conftest import REPO, WorkerProcess, settings_env
from tests.helpers import produce, wait_applied
from tests.stream.test_observability import get, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Debian's prometheus"),
]


def assigned(log: str) -> set[str]:
    lines = re.findall(r"partitions assigned: (.*)", log)
    return {tp.strip() for tp in lines[-1].split(",") if tp.strip()} if lines else set()


def test_two_workers_a_retrain_job_and_prometheus_work_together(
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
    tmp_path: Path,
) -> None:
    ports = [free_port(), free_port(), free_port()]
    base = settings_factory(housekeeping_interval_s=1.0)
    # Enough customers for the model to beat the baselines and place every
    # archetype (at 1,500 it trailed RFM).
    topics = {"clickstream": base.topic_clickstream, "orders": base.topic_orders}
    population = PopulationConfig(users=3000, days=240, seed=5)
    sent = [(topics[t], k, v) for t, k, v in encode_generated(generate_population(population))]
    events = decode_records(
        sent, clickstream_topic=base.topic_clickstream, orders_topic=base.topic_orders
    ).events
    # Serving: yesterday's model, from the first 200 days of the same stream and
    # stopped after 2 epochs, its network alone. A retrain on all 240 days must earn its promotion
    # against it; two full fits on the same customers tie, and the gate rightly
    # refuses to swap models on a tie.
    users = {e.user_id for e in events}
    start = min(e.timestamp for e in events)
    train_from_events(
        [e for e in events if e.timestamp <= start + 200 * DAY_MS],
        base.model_dir,
        horizon_ms=60 * DAY_MS,
        step_ms=7 * DAY_MS,
        # The network alone: BG/NBD's head needs no epochs, and would make
        # yesterday's model as good as today's.
        cfg=TrainConfig(epochs=2, value_heads=("network",)),
        promote=True,
        version="earlier-retrain",
    )
    assert current_version(base.model_dir) == "earlier-retrain"
    workers = [worker_factory(base.model_copy(update={"metrics_port": p})) for p in ports[:2]]
    for w in workers:
        w.wait_ready()
    ends = produce(base, sent)

    retrain_log = tmp_path / "retrain.log"
    retrain_env = settings_env(base.model_copy(update={"metrics_port": ports[2]}))
    with retrain_log.open("wb") as fh:
        retrain = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stream.cli",
                "retrain",
                "--every",
                "60s",
                "--window",
                "240d",
                "--horizon",
                "60d",
                "--step",
                "7d",
            ],
            env=retrain_env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    targets = {"segmenter-worker": ports[:2], "segmenter-retrain": ports[2:]}
    scrape = [
        {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in ps]}]}
        for job, ps in targets.items()
    ]
    config.write_text(
        orjson.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": scrape,
            }
        ).decode()  # JSON is YAML
    )
    prom = subprocess.Popen(
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
        wait_applied(base, ends, workers[0], timeout_s=180)
        # The two workers split the partitions between them, with nothing left over.
        wait_until(lambda: all(assigned(w.log()) for w in workers), 30, "both workers assigned")
        a, b = (assigned(w.log()) for w in workers)
        inputs = {f"{t}:{p}" for t in base.input_topics for p in range(base.topic_partitions)}
        assert a and b and not a & b and a | b == inputs

        # A retrain run promotes a model, and both workers switch to it.
        wait_until(lambda: "promoted" in retrain_log.read_text(), 180, "a retrain promotion")
        version = re.search(r"model (\S+): promoted", retrain_log.read_text()).group(1)  # type: ignore[union-attr]
        # Promoted by the gate at its default tolerance, against the serving model
        # scored on the same rows, and not by a margin the tolerance had to cover.
        verdict = orjson.loads((base.model_dir / version / "gate.json").read_bytes())
        assert verdict["current_f1"] is not None
        assert all(c["passed"] for c in verdict["checks"]), verdict["reason"]
        assert verdict["candidate_f1"] >= verdict["current_f1"], verdict["reason"]
        for w in workers:

            def switched(w: WorkerProcess = w) -> bool:
                return f"to {version}" in w.log()

            wait_until(switched, 30, f"worker switched to {version}")

        def query(expr: str) -> float | None:
            status, body = get(
                f"http://127.0.0.1:{prom_port}/api/v1/query?query={urllib.parse.quote(expr)}"
            )
            result = orjson.loads(body)["data"]["result"] if status == 200 else []
            return float(result[0]["value"][1]) if result else None

        wait_until(lambda: query("sum(up)") == 3, 60, "three targets up")
        wait_until(
            lambda: query('sum(segmenter_events_total{outcome="applied"})') == len(sent),
            30,
            "events",
        )
        wait_until(
            lambda: query("sum(max by (segment) (segmenter_segment_users))") == len(users),
            30,
            "population",
        )
        wait_until(
            lambda: (query('sum(segmenter_retrain_runs_total{outcome="promoted"})') or 0) >= 1,
            30,
            "retrain",
        )
        wait_until(
            lambda: query(f'sum(segmenter_model_info{{version="{version}"}})') == 2,
            30,
            "both serve it",
        )
    finally:
        for proc in (prom, retrain):
            proc.terminate()
            proc.wait(20)
    assert retrain.returncode in (0, -15), retrain_log.read_text()[-2000:]
    assert os.path.exists(base.model_dir / version / "report.json")
