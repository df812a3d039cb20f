"""The docker-compose topology, run locally without containers.

Embedded broker and Redis, two `segmenter worker` processes in one group,
one `segmenter retrain` on a short interval, and a real Prometheus scraping
all three, as deploy/prometheus/prometheus.yml does in compose.
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

from stream.embedded import free_port
from stream.settings import Settings
from tests.conftest import REPO, WorkerProcess, settings_env
from tests.faults.scenario import backlog
from tests.helpers import wait_applied
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
    workers = [worker_factory(base.model_copy(update={"metrics_port": p})) for p in ports[:2]]
    for w in workers:
        w.wait_ready()
    # Enough history for the model to beat both baselines, so the gate promotes.
    sent, ends = backlog(base, users=300, days=240, seed=5)

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
                "--tolerance",
                "1.0",
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
        for w in workers:
            wait_until(lambda w=w: f"to {version}" in w.log(), 30, f"worker switched to {version}")

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
            lambda: query("sum(max by (segment) (segmenter_segment_users))") == 300,
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
