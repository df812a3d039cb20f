"""The worker's drift watch: bound to the serving version, gauges, reports, merging."""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from model.drift import DriftMonitor, psi_by_feature, reference
from model.features import FEATURE_NAMES, N_FEATURES
from model.registry import LoadedModel, bootstrap_dir, load_version
from stream import metrics
from stream.settings import SettingsError, load_settings
from stream.worker.drift import DriftTracker, merge_reports

NOW = 1_800_000_000.0
rng = np.random.default_rng(0)
TRAIN = rng.exponential(1.0, size=(3000, N_FEATURES))


def model(version: str, with_reference: bool = True) -> LoadedModel:
    base = load_version(bootstrap_dir())
    manifest = dict(base.manifest, version=version)
    manifest.pop("drift_reference", None)
    if with_reference:
        manifest["drift_reference"] = reference(TRAIN)
    return dataclasses.replace(base, version=version, manifest=manifest)


def exported() -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for name in ("segmenter_feature_drift_psi", "segmenter_inputs_out_of_range_ratio"):
        for fam in REGISTRY.collect():
            for s in fam.samples:
                if s.name == name:
                    out[name, s.labels.get("feature", "")] = s.value
    return out


@pytest.fixture(autouse=True)
def no_drift_gauges() -> Any:
    metrics.DRIFT.clear()
    yield
    metrics.DRIFT.clear()


def test_a_model_without_a_reference_exports_nothing_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracker = DriftTracker(1000, worker="w1", clock=lambda: NOW)
    old = model("old", with_reference=False)
    with caplog.at_level(logging.INFO, logger="stream.worker.drift"):
        for _ in range(3):
            tracker.observe(old, TRAIN[:100])
            assert tracker.publish(old) is None
    assert exported() == {}
    assert sum("no drift reference" in r.message for r in caplog.records) == 1


def test_the_window_and_gauges_follow_the_serving_version() -> None:
    tracker = DriftTracker(1000, worker="w1", clock=lambda: NOW)
    v1, v2 = model("v1"), model("v2")
    tracker.observe(v1, TRAIN[:500] + 30.0)  # far above training: drift, out of range
    report = tracker.publish(v1)
    assert report is not None
    assert (report["worker"], report["version"], report["rows"]) == ("w1", "v1", 500)
    assert report["out_of_range_ratio"] == 1.0 and report["at"].endswith("Z")
    gauges = exported()
    assert gauges["segmenter_inputs_out_of_range_ratio", ""] == 1.0
    assert {f for n, f in gauges if n == "segmenter_feature_drift_psi"} == set(FEATURE_NAMES)
    assert min(v for (n, _), v in gauges.items() if n == "segmenter_feature_drift_psi") > 0.25

    # Hot reload: the new version starts from an empty window, gauges gone meanwhile.
    assert tracker.publish(v2) is None and exported() == {}
    tracker.observe(v2, TRAIN[:500])
    fresh = tracker.publish(v2)
    assert fresh is not None and fresh["rows"] == 500 and fresh["out_of_range_ratio"] == 0.0
    assert max(v for (n, _), v in exported().items() if n == "segmenter_feature_drift_psi") < 0.1


def test_a_failure_to_observe_never_reaches_the_batch(caplog: pytest.LogCaptureFixture) -> None:
    tracker = DriftTracker(1000, worker="w1")
    v1 = model("v1")
    tracker.observe(v1, TRAIN[:10])
    with caplog.at_level(logging.WARNING, logger="stream.worker.drift"):
        tracker.observe(v1, np.zeros((3, 5)))  # wrong width: not this model's input
    assert "drift monitoring of model v1 stopped" in caplog.text
    assert tracker.publish(v1) is None and exported() == {}


def report(worker: str, version: str, x: np.ndarray, age_s: float) -> dict[str, Any]:
    tracker = DriftTracker(10_000, worker=worker, clock=lambda: NOW - age_s)
    m = model(version)
    tracker.observe(m, x)
    out = tracker.publish(m)
    assert out is not None
    return out


def test_merged_reports_are_the_psi_of_every_fresh_window_of_that_version() -> None:
    ref = reference(TRAIN)
    a, b = TRAIN[:400] * 1.5, TRAIN[400:700]
    reports = [
        report("w1", "v1", a, age_s=5),
        report("w2", "v1", b, age_s=20),
        report("w3", "v1", TRAIN[:50] + 99, age_s=3600),  # a worker long gone
        report("w4", "v0", TRAIN[:50] + 99, age_s=5),  # the previous model's
    ]
    merged = merge_reports(ref, reports, "v1", now=NOW, max_age_s=60)
    assert merged is not None
    assert (merged["workers"], merged["rows"]) == (2, 700)
    both = DriftMonitor(ref, 10_000)
    both.observe(np.concatenate([a, b]))
    expected = both.snapshot()
    assert merged["psi"] == pytest.approx({k: round(v, 4) for k, v in expected.psi.items()})
    assert merged["out_of_range_ratio"] == round(expected.out_of_range_ratio, 4)
    assert merged["significant"] == [k for k in merged["psi"] if merged["psi"][k] > 0.25]
    assert list(merged["psi"].values()) == sorted(merged["psi"].values(), reverse=True)
    assert merged["at"] == datetime.fromtimestamp(NOW - 5, UTC).isoformat().replace("+00:00", "Z")
    assert merge_reports(ref, reports, "v2", now=NOW, max_age_s=60) is None
    assert psi_by_feature(ref, {}) == {}


@pytest.mark.parametrize(("value", "ok"), [(0, True), (100, True), (50, False), (200_001, False)])
def test_drift_window_setting_is_off_or_at_least_a_hundred_rows(value: int, ok: bool) -> None:
    if ok:
        assert load_settings(drift_window_rows=value).drift_window_rows == value
    else:
        with pytest.raises(SettingsError, match="SEGMENTER_DRIFT_WINDOW_ROWS"):
            load_settings(drift_window_rows=value)


@pytest.mark.parametrize("n_skipped", [0, 1, 3, 40])
def test_skipped_rows_stay_out_of_the_window(n_skipped: int) -> None:
    x = TRAIN[:200]
    # the first and last rows among them, when any: no slice before or after
    picked = rng.choice(np.arange(1, 199), size=max(0, n_skipped - 2), replace=False)
    skip = sorted({0, 199, *picked.tolist()}) if n_skipped else []
    sliced, deleted = DriftTracker(1000, worker="a"), DriftTracker(1000, worker="b")
    v1 = model("v1")
    sliced.observe(v1, x, skip)
    deleted.observe(v1, np.delete(x, skip, axis=0))
    a, b = sliced.publish(v1), deleted.publish(v1)
    assert a is not None and b is not None
    assert a["rows"] == 200 - len(skip) and a["counts"] == b["counts"]
