"""Alert rules, their unit tests, and the dashboard: valid, tested, and about real metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY, generate_latest

import stream.metrics  # noqa: F401 - registers the service's metrics
from tests.conftest import REPO

PROM = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "segmenter.json"
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="needs Debian's prometheus package (.ci/run installs it)",
)


def exported_series() -> set[str]:
    """Every series name the service can export (histograms with their suffixes)."""
    names = set()
    for line in generate_latest(REGISTRY).decode().splitlines():
        match = re.match(r"# TYPE (segmenter_\w+) (\w+)", line)
        if match:
            name, kind = match.groups()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def referenced(expr: str) -> set[str]:
    return set(re.findall(r"\bsegmenter_[a-z_]+\b", expr))


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_every_metric_the_alerts_and_dashboard_query_is_exported() -> None:
    exported = exported_series()
    for expr in alert_exprs() + dashboard_exprs():
        missing = referenced(expr) - exported
        assert not missing, f"{expr!r} queries {missing}, which the service does not export"


def test_metric_names_follow_prometheus_conventions() -> None:
    for line in generate_latest(REGISTRY).decode().splitlines():
        match = re.match(r"# TYPE (segmenter_\w+) (\w+)", line)
        if not match:
            continue
        name, kind = match.groups()
        if kind == "counter":
            assert name.endswith("_total"), name
        if "seconds" in name or "latency" in name:
            assert name.endswith(("_seconds", "_seconds_total")), name


def test_dashboard_shows_what_sres_need() -> None:
    titles = {p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]}
    for wanted in (
        "Throughput by topic and outcome",
        "Consumer lag per partition",
        "Event to publish latency",
        "Segment populations",
        "Segment transitions",
        "Dead letters by reason",
        "Model version serving",
        "Retrain history",
        "Input drift (PSI per feature)",
        "Inputs outside the training range",
        "Rule audience members",
        "Audience enters and exits",
    ):
        assert wanted in titles


def test_drift_panel_draws_the_significant_shift_line() -> None:
    panels = {p["title"]: p for p in json.loads(DASHBOARD.read_text())["panels"]}
    drift = panels["Input drift (PSI per feature)"]
    steps = drift["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, 0.25]
    assert drift["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line"
    assert "segmenter_feature_drift_psi" in drift["targets"][0]["expr"]
    assert "{{feature}}" in drift["targets"][0]["legendFormat"]
    ratio = panels["Inputs outside the training range"]
    assert "segmenter_inputs_out_of_range_ratio" in ratio["targets"][0]["expr"]


def test_drift_alert_fires_per_feature_over_the_line_after_half_an_hour() -> None:
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    (rule,) = [
        r for g in rules["groups"] for r in g["rules"] if r["alert"] == "SegmenterFeatureDrift"
    ]
    assert rule["for"] == "30m" and "by (feature)" in rule["expr"]
    assert "segmenter_feature_drift_psi" in rule["expr"] and "> 0.25" in rule["expr"]
    assert "retrain" in rule["annotations"]["description"]


def test_every_alert_has_a_unit_test_and_a_runbook() -> None:
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())
    tested = {a["alertname"] for t in tests["tests"] for a in t["alert_rule_test"]}
    assert names == tested
    runbook = (REPO / "docs" / "operations.md").read_text()
    for name in names:
        assert f"`{name}`" in runbook, f"no runbook entry for {name} in docs/operations.md"


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    out = subprocess.run(
        ["promtool", "check", "rules", str(PROM / "alerts.yml")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_promtool_unit_tests_every_alert() -> None:
    out = subprocess.run(
        ["promtool", "test", "rules", "alerts_test.yml"], capture_output=True, text=True, cwd=PROM
    )
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_prometheus_config_is_valid(tmp_path: Path) -> None:
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    shutil.copy(PROM / "alerts.yml", tmp_path / "alerts.yml")
    config["rule_files"] = [str(tmp_path / "alerts.yml")]  # the container path, made local
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    out = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
