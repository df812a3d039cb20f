"""The promotion gate: classes without support, one primary metric, no home advantage abroad."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
from hypothesis import given
from hypothesis import strategies as st

from model.drift import reference
from model.features import FEATURE_NAMES, N_FEATURES, SCHEMA_HASH
from model.registry import set_current
from model.scorer import save_weights
from model.segments import DEFAULT_SEGMENTS
from model.training.evaluate import classification_report, primary
from model.training.gate.judge import decide, judge

PASSING = {
    "directional": [
        {"name": "d", "description": "d", "applicable": True, "passed": True, "rate": 0.0,
         "threshold": 0.01, "rows": 10, "violations": 0, "worst": 0.0}
    ],
    "archetypes": [],
    "pairs": [],
}  # fmt: skip


def test_a_class_without_support_is_reported_as_such_not_as_zero() -> None:
    y = np.array([0, 0, 1, 3, 3])
    report = classification_report(y, np.array([0, 1, 1, 3, 3]), DEFAULT_SEGMENTS)
    assert report["per_class"]["potential"]["f1"] is None
    assert report["no_support"] == ["potential"]
    f1s = [report["per_class"][c]["f1"] for c in ("high_value", "regular", "at_risk")]
    assert report["macro_f1"] == sum(f1s) / 3


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=1, max_size=60))
def test_a_class_the_window_cannot_hold_changes_no_mean(pairs: list[tuple[int, int]]) -> None:
    y, p = (np.array(v) for v in zip(*pairs, strict=True))
    three = classification_report(y, p, ("a", "b", "c"))
    four = classification_report(y, p, ("a", "b", "c", "absent"))
    for key in ("macro_f1", "weighted_f1", "accuracy"):
        assert four[key] == three[key]


def test_primary_metric_falls_back_when_high_value_has_no_support() -> None:
    report = classification_report(np.array([1, 3]), np.array([1, 3]), DEFAULT_SEGMENTS)
    assert primary(report) == ("weighted_f1", 1.0)


def test_the_candidate_beats_the_rules_and_matches_the_clv_reference() -> None:
    def failed(candidate: float) -> list[str]:
        checks = decide(
            "high_value_f1",
            candidate,
            {"rfm": 0.30, "previous_segment": 0.35, "clv": 0.41},
            None,
            PASSING,
            tolerance=0.01,
            synthetic_over_real=False,
        )
        return [c["check"] for c in checks if not c["passed"]]

    assert failed(0.40) == []  # trails CLV by less than the margin
    assert failed(0.35) == ["beats previous_segment", "matches clv"]
    assert failed(0.30) == ["beats rfm", "beats previous_segment", "matches clv"]


def serving(home: bool, value: float) -> dict[str, Any]:
    report = {"high_value_f1": value}
    return {"version": "s", "usable": True, "home": home, "why": "x", "report": report}


def test_home_serving_model_gets_the_tolerance_a_foreign_one_does_not() -> None:
    def verdict(home: bool) -> bool:
        checks = decide(
            "high_value_f1",
            0.395,
            {},
            serving(home, 0.40),
            PASSING,
            tolerance=0.01,
            synthetic_over_real=False,
        )
        return all(c["passed"] for c in checks)

    assert verdict(home=True)
    assert not verdict(home=False)


def test_synthetic_never_replaces_real_and_behaviour_failures_refuse() -> None:
    bad = {
        "directional": [
            {"name": "d", "description": "d", "applicable": True, "passed": False, "rate": 0.2,
             "threshold": 0.01}
        ],
        "archetypes": [{"name": "whale", "got": "regular", "expected": ["high_value"],
                        "passed": False}],
        "pairs": [],
    }  # fmt: skip
    checks = decide("high_value_f1", 0.9, {}, None, bad, tolerance=0.01, synthetic_over_real=True)
    failed = {c["check"] for c in checks if not c["passed"]}
    assert failed == {"synthetic over real", "directional d", "archetypes"}


def _artifact(
    root: Path, name: str, *, kind: str, x: np.ndarray, y: np.ndarray, metrics: dict[str, Any]
) -> Path:
    d = root / name
    d.mkdir(parents=True)
    rng = np.random.default_rng(len(name))
    layers = [
        (rng.normal(0, 0.3, (N_FEATURES, 8)), np.zeros(8)),
        (rng.normal(0, 0.3, (8, 4)), np.zeros(4)),
    ]
    save_weights(d / "weights.npz", x.mean(axis=0), x.std(axis=0) + 1e-3, layers)
    np.savez_compressed(d / "validation.npz", x=x, y=y)
    manifest = {
        "version": name,
        "features": list(FEATURE_NAMES),
        "schema_hash": SCHEMA_HASH,
        "classes": list(DEFAULT_SEGMENTS),
        "training": {"source_kind": kind},
        "metrics": metrics,
        "drift_reference": reference(x),
    }
    (d / "manifest.json").write_bytes(orjson.dumps(manifest))
    (d / "report.json").write_bytes(orjson.dumps({"history": {}}))
    return d


def test_judge_scores_a_foreign_serving_model_like_a_baseline_on_the_candidates_rows(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    x = np.abs(rng.normal(1, 1, (300, N_FEATURES)))
    y = rng.choice([0, 1, 3], 300)  # orders-only: no potential rows
    _artifact(tmp_path, "boot", kind="synthetic", x=x + 3, y=y, metrics={})
    set_current(tmp_path, "boot")
    metrics = classification_report(y, y, DEFAULT_SEGMENTS)  # a perfect candidate
    metrics["baselines"] = {"rfm": classification_report(y, np.ones_like(y), DEFAULT_SEGMENTS)}
    metrics["checks"] = PASSING
    cand = _artifact(tmp_path, "cand", kind="events", x=x, y=y, metrics=metrics)

    verdict = judge(tmp_path, cand)

    gate = orjson.loads((cand / "gate.json").read_bytes())
    assert verdict.passed, verdict.reason
    assert gate["primary_metric"] == "high_value_f1" and gate["no_support"] == ["potential"]
    assert gate["serving"]["home"] is False and "synthetic" in gate["serving"]["why"]
    assert set(gate["scores"]) == {"candidate", "rfm", "serving boot"}
    assert [c["check"] for c in gate["checks"]][:2] == ["beats rfm", "serving boot"]
    assert "no support" in (cand / "report.md").read_text()
