"""The gate decides on evidence: paired intervals, the best of the last promoted models,
guards on every class, and a refusal when the serving model cannot be compared.

The models here are one-layer networks whose decisions are set row by row
(each reads its own one-hot columns of the validation rows), so each test
states exactly how a candidate differs from the models before it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from model.features import N_FEATURES
from model.registry import promote
from model.scorer import save_weights
from model.segments import DEFAULT_SEGMENTS
from model.training.gate.evidence import paired_f1_difference
from model.training.gate.judge import decide, judge
from tests.model.gate_models import describe
from tests.model.test_gate import PASSING

CLASSES = list(DEFAULT_SEGMENTS)
HV = CLASSES.index("high_value")
ROWS = 2000
#: Columns 4 * slot .. 4 * slot + 3 of the rows hold model ``slot``'s decisions.
SLOTS = N_FEATURES // 4


def _truth(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice(len(CLASSES), ROWS, p=[0.1, 0.2, 0.3, 0.4])


def _noisy(y: np.ndarray, wrong: float, seed: int) -> np.ndarray:
    """``y`` with a share ``wrong`` of rows decided at random."""
    rng = np.random.default_rng(seed)
    out = y.copy()
    flip = rng.random(len(y)) < wrong
    out[flip] = rng.integers(0, len(CLASSES), int(flip.sum()))
    return out


class Registry:
    """Models that decide given class indices on shared validation rows."""

    def __init__(self, root: Path, y: np.ndarray) -> None:
        self.root, self.y = root, y
        self.x = np.zeros((len(y), N_FEATURES))
        # A column of population noise so PSI has a distribution to compare.
        self.x[:, -1] = np.random.default_rng(1).normal(5, 1, len(y))
        self.used = 0

    def model(self, name: str, pred: np.ndarray, *, kind: str = "events") -> Path:
        slot = self.used
        self.used += 1
        assert slot < SLOTS
        self.x[np.arange(len(pred)), 4 * slot + pred] = 1.0
        kernel = np.zeros((N_FEATURES, len(CLASSES)))
        for k in range(len(CLASSES)):
            kernel[4 * slot + k, k] = 20.0
        d = self.root / name
        d.mkdir(parents=True)
        save_weights(
            d / "weights.npz", np.zeros(N_FEATURES), np.ones(N_FEATURES), [(kernel, np.zeros(4))]
        )
        describe(d, self.y, pred, self.x, validation_cutoff_ms=1, kind=kind)
        return d

    def rows(self) -> None:
        """Every model's validation rows are the same rows (written once all exist)."""
        for d in self.root.iterdir():
            if d.is_dir():
                np.savez_compressed(d / "validation.npz", x=self.x, y=self.y)


def _gate(d: Path) -> dict[str, Any]:
    gate: dict[str, Any] = orjson.loads((d / "gate.json").read_bytes())
    return gate


def test_a_noise_sized_loss_is_refused_and_a_clear_gain_promoted(tmp_path: Path) -> None:
    y = _truth()
    reg = Registry(tmp_path, y)
    serving = _noisy(y, 0.5, seed=1)
    reg.model("serving", serving)
    # Worse on a handful of high_value rows only: a point loss of about 0.01,
    # inside the tolerance by the old point rule.
    slightly = serving.copy()
    hit = np.flatnonzero((serving == HV) & (y == HV))[:3]
    slightly[hit] = CLASSES.index("regular")
    reg.model("slightly-worse", slightly)
    reg.model("clearly-better", _noisy(y, 0.3, seed=2))
    reg.rows()
    promote(tmp_path, "serving", "test")

    worse = judge(tmp_path, tmp_path / "slightly-worse")
    assert not worse.passed
    assert worse.candidate_f1 >= worse.current_f1 - 0.01  # the old rule would have promoted it
    ev = _gate(tmp_path / "slightly-worse")["serving"]["evidence"]
    assert ev["difference"] < 0 and ev["low"] < -0.01 and ev["rows"] == ROWS

    better = judge(tmp_path, tmp_path / "clearly-better")
    assert better.passed, better.reason
    assert _gate(tmp_path / "clearly-better")["serving"]["evidence"]["low"] > 0


def test_the_bar_is_the_best_of_the_last_promoted_models_not_only_the_serving_one(
    tmp_path: Path,
) -> None:
    y = _truth()
    reg = Registry(tmp_path, y)
    reg.model("best", _noisy(y, 0.3, seed=3))
    reg.model("worse", _noisy(y, 0.5, seed=4))
    reg.model("like-worse", _noisy(y, 0.5, seed=5))
    reg.rows()
    promote(tmp_path, "best", "test")
    promote(tmp_path, "worse", "forced")  # a loss that slipped through
    verdict = judge(tmp_path, tmp_path / "like-worse")
    gate = _gate(tmp_path / "like-worse")
    assert not verdict.passed
    assert gate["serving"]["version"] == "best"
    assert "best of the last 5" in verdict.reason
    assert {i["version"] for i in gate["incumbents"]} == {"best", "worse"}


def test_a_gain_on_high_value_bought_with_at_risk_is_refused_by_its_guard(tmp_path: Path) -> None:
    y = _truth()
    reg = Registry(tmp_path, y)
    serving = _noisy(y, 0.4, seed=6)
    reg.model("serving", serving)
    # Exactly right on high_value, but every at_risk user called potential.
    trade = serving.copy()
    trade[y == HV] = HV
    trade[trade == CLASSES.index("at_risk")] = CLASSES.index("potential")
    reg.model("trade", trade)
    reg.rows()
    promote(tmp_path, "serving", "test")
    verdict = judge(tmp_path, tmp_path / "trade")
    failed = {c["check"] for c in _gate(tmp_path / "trade")["checks"] if not c["passed"]}
    assert not verdict.passed
    assert "guard at_risk F1" in failed and "serving serving" not in failed


def test_a_serving_model_that_cannot_be_scored_refuses_the_candidate(tmp_path: Path) -> None:
    y = _truth()
    reg = Registry(tmp_path, y)
    reg.model("serving", _noisy(y, 0.5, seed=7))
    reg.model("cand", _noisy(y, 0.3, seed=8))
    reg.rows()
    promote(tmp_path, "serving", "test")
    (tmp_path / "serving" / "weights.npz").write_bytes(b"not a weights file")
    verdict = judge(tmp_path, tmp_path / "cand")
    assert not verdict.passed and "comparable" in verdict.reason


def _serving(low: float) -> dict[str, Any]:
    ev = {"difference": low + 0.02, "low": low, "high": low + 0.04, "level": 0.9, "rows": 500}
    report = {"high_value_f1": 0.40}
    return {"version": "s", "usable": True, "home": True, "why": "x", "report": report,
            "evidence": ev}  # fmt: skip


def test_home_ground_decides_on_the_low_end_of_the_interval() -> None:
    def passed(low: float) -> bool:
        checks = decide(
            "high_value_f1", 0.40, {}, _serving(low), PASSING, tolerance=0.01,
            synthetic_over_real=False,
        )  # fmt: skip
        return all(c["passed"] for c in checks)

    assert passed(-0.005) and not passed(-0.02)


def _truth_and_two_models(
    seed: int, n: int, wrong_a: float, wrong_b: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` true classes, and two models' decisions wrong on about those shares of rows."""
    y = np.random.default_rng(seed).choice(4, n)
    return y, _noisy(y, wrong_a, seed + 1), _noisy(y, wrong_b, seed + 2)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 1000), st.floats(0.0, 0.6), st.floats(0.0, 0.6))
def test_the_paired_interval_is_antisymmetric_and_holds_its_point(
    seed: int, wrong_a: float, wrong_b: float
) -> None:
    y, a, b = _truth_and_two_models(seed, 300, wrong_a, wrong_b)
    ab = paired_f1_difference(y, a, b, 0, draws=300, seed=seed)
    ba = paired_f1_difference(y, b, a, 0, draws=300, seed=seed)
    assert ab["difference"] == -ba["difference"]
    assert abs(ab["low"] + ba["high"]) < 1e-3 and abs(ab["high"] + ba["low"]) < 1e-3
    assert ab["low"] <= ab["high"]
    same = paired_f1_difference(y, a, a, 0, draws=100)
    assert same["difference"] == same["low"] == same["high"] == 0.0


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 1000), st.integers(2, 4), st.floats(0.0, 0.6))
def test_a_user_seen_at_several_cutoffs_counts_once_in_the_interval(
    seed: int, copies: int, wrong: float
) -> None:
    # Rows at several cutoffs repeat users. Grouped by user, k copies of every
    # row are exactly the evidence of one (F1 is a ratio of sums, and a draw
    # weighs a user's copies alike); ungrouped, they would pass for k times the
    # users and narrow the interval.
    y, a, b = _truth_and_two_models(seed, 200, wrong, 0.3)
    once = paired_f1_difference(y, a, b, 0, draws=300, seed=seed)
    rep = [np.tile(v, copies) for v in (y, a, b)]
    users = np.tile(np.arange(len(y)), copies)
    grouped = paired_f1_difference(*rep, 0, draws=300, seed=seed, groups=users)
    assert (grouped["low"], grouped["high"]) == (once["low"], once["high"])
    assert grouped["users"] == once["users"] == len(y) and grouped["rows"] == copies * len(y)
    ungrouped = paired_f1_difference(*rep, 0, draws=300, seed=seed)
    assert ungrouped["high"] - ungrouped["low"] <= once["high"] - once["low"] + 1e-9
