"""Ranking and calibration metrics (model/training/ranking.py): pure, with property tests."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from model.training.gate.judge import decide
from model.training.ranking import (
    auc,
    calibration_report,
    deciles,
    ece,
    ece_noise_floor,
    normalised_gini,
    top_capture,
)

values = st.lists(st.floats(0, 1e4, allow_nan=False), min_size=2, max_size=200)


@settings(max_examples=80, deadline=None)
@given(realised=values, seed=st.integers(0, 1000))
def test_hindsight_is_one_chance_is_below_it_and_an_order_preserving_map_changes_nothing(
    realised: list[float], seed: int
) -> None:
    r = np.asarray(realised)
    best = normalised_gini(r, r)
    if best is None:  # all equal: nothing to rank
        assert np.ptp(r) == 0 or r.sum() == 0 or len(set(realised)) == 1
        return
    assert abs(best - 1.0) < 1e-9
    noisy = np.random.default_rng(seed).permutation(r)
    g = normalised_gini(noisy, r)
    assert g is not None and g <= 1.0 + 1e-9
    # Only the order of the prediction matters.
    assert normalised_gini(noisy * 2.0, r) == normalised_gini(noisy, r)


def test_a_reversed_ranking_scores_minus_one_and_capture_is_the_top_share() -> None:
    r = np.arange(1.0, 11.0)
    assert abs(normalised_gini(-r, r) + 1.0) < 1e-9  # type: ignore[operator]
    assert top_capture(r, r, 0.2) == (10 + 9) / r.sum()
    assert top_capture(-r, r, 0.2) == (1 + 2) / r.sum()


@settings(max_examples=60, deadline=None)
@given(
    score=st.lists(st.integers(0, 5), min_size=2, max_size=60),
    seed=st.integers(0, 1000),
)
def test_auc_is_the_share_of_positive_negative_pairs_ranked_right(
    score: list[int], seed: int
) -> None:
    s = np.asarray(score, dtype=float)
    pos = np.random.default_rng(seed).random(len(s)) < 0.4
    if pos.all() or not pos.any():
        assert auc(s, pos) is None
        return
    pairs = [(a, b) for a in s[pos] for b in s[~pos]]
    expected = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)
    assert abs(auc(s, pos) - expected) < 1e-12  # type: ignore[operator]


def test_deciles_cover_every_row_highest_first() -> None:
    p = np.arange(100.0)
    table = deciles(p, p * 2)
    assert [d["rows"] for d in table] == [10] * 10
    assert table[0]["predicted"] > table[-1]["predicted"]
    assert all(abs(d["realised"] - 2 * d["predicted"]) < 1e-9 for d in table)


def test_a_calibrated_model_sits_on_its_noise_floor_and_one_three_times_too_sure_does_not() -> None:
    """The issue's finding: P(high_value) about three times the observed rate. The bound
    must refuse that however many rows there are, and must not refuse a calibrated
    model for having few."""
    rng = np.random.default_rng(3)
    for n in (300, 5000):
        p = rng.beta(1, 12, n)  # a rare class, like high_value
        y = rng.random(n) < p
        raw, floor = ece(p, y), ece_noise_floor(p)
        assert raw - floor < 0.015, (n, raw, floor)
        overconfident = np.minimum(3 * p, 1.0)
        assert ece(overconfident, y) - ece_noise_floor(overconfident) > 0.03, n


def test_the_gate_refuses_a_miscalibrated_candidate_and_says_which_class() -> None:
    rng = np.random.default_rng(5)
    n = 4000
    p = rng.dirichlet([1, 3, 3, 6], n)
    y = np.array([rng.choice(4, p=row) for row in p])
    classes = ("high_value", "regular", "potential", "at_risk")
    good = calibration_report(p, y, classes)
    skewed = p.copy()
    skewed[:, 0] = np.minimum(3 * skewed[:, 0], 0.95)
    skewed /= skewed.sum(axis=1, keepdims=True)
    bad = calibration_report(skewed, y, classes)

    def verdict(report: dict) -> dict:  # type: ignore[type-arg]
        checks = decide(
            "high_value_f1",
            0.5,
            {},
            None,
            {},
            tolerance=0.01,
            synthetic_over_real=False,
            calibration=report,
        )
        return next(c for c in checks if c["check"] == "calibrated")

    assert verdict(good)["passed"]
    refused = verdict(bad)
    assert not refused["passed"] and "high_value" in refused["detail"]
