"""The gate's baseline rule, on paired intervals of the candidate minus each rule. Pure."""

from __future__ import annotations

from typing import Any

from model.training.gate.guards import REFERENCE_MARGIN, baseline_checks


def _ev(difference: float, low: float, high: float) -> dict[str, Any]:
    return {"difference": difference, "low": low, "high": high, "level": 0.9, "rows": 600}


def _passed(candidate: float, value: float, ev: dict[str, Any] | None, name: str = "rfm") -> bool:
    (check,) = baseline_checks(
        "high_value_f1", candidate, {name: value}, {name: ev} if ev else {}, tolerance=0.01
    )
    return bool(check["passed"])


def test_a_tie_within_noise_with_a_rule_passes() -> None:
    # 0.378 against 0.380, the interval of the difference about +-0.03: not shown worse.
    assert _passed(0.378, 0.380, _ev(-0.002, -0.031, 0.027))


def test_a_clear_loss_to_a_rule_is_refused() -> None:
    # Trailing beyond the tolerance, or shown worse by the whole interval.
    assert not _passed(0.35, 0.38, _ev(-0.03, -0.06, 0.001))
    assert not _passed(0.375, 0.38, _ev(-0.005, -0.009, -0.001))


def test_without_rows_the_rule_must_be_beaten_outright() -> None:
    # A model written before its baselines' rows were kept has no interval.
    assert not _passed(0.380, 0.380, None)
    assert _passed(0.381, 0.380, None)


def test_the_clv_reference_keeps_its_point_margin_and_reports_its_interval() -> None:
    ev = _ev(-0.04, -0.08, -0.01)
    (check,) = baseline_checks(
        "high_value_f1", 0.40, {"clv": 0.40 + REFERENCE_MARGIN - 0.001}, {"clv": ev}, tolerance=0.01
    )
    assert check["passed"] and check["interval"] == ev
    assert not _passed(0.40, 0.40 + REFERENCE_MARGIN + 0.001, ev, name="clv")
