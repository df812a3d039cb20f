"""Thirty simulated daily retrains on a drifting population: noise-sized losses never add up.

Each day, the shop's users are scored at three closed cutoffs (a fresh draw
of the same users around a slowly drifting mean), and a retrain arrives: the
serving model's weights with a small loss on high_value (a slightly shrunk
high_value column, plus noise), the kind of candidate one training recipe
gives from run to run. On day 20 a clearly better model arrives. The real
:func:`model.training.gate.judge.judge` decides each day on a real registry.

The same schedule under the old rule (the serving model alone as the bar,
and points instead of intervals) lets the losses add up: the test shows it,
so the check can fail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

import model.training.gate.judge as gate
from model.features import N_FEATURES
from model.registry import current_version, promote
from model.scorer import save_weights
from model.segments import DEFAULT_SEGMENTS
from model.training.evaluate import classification_report
from tests.model.gate_models import describe

CLASSES = list(DEFAULT_SEGMENTS)
HV = CLASSES.index("high_value")
USERS = 1500
CUTOFFS = 3
DAYS = 30
TOLERANCE = 0.01
#: The truth: four informative inputs, one per class, each pushing its class.
TRUE = np.eye(4) * 2.0
BIAS = np.array([-1.2, 0.4, 0.2, 0.6])


def _kernel(w: np.ndarray) -> np.ndarray:
    kernel = np.zeros((N_FEATURES, len(CLASSES)))
    kernel[:4, :] = w
    return kernel


def _rows(day: int, rng: np.random.Generator, users: int = USERS) -> dict[str, np.ndarray]:
    """The users at three closed cutoffs; the population's mean drifts day by day."""
    base = rng.normal(0.0, 1.0, (users, 4)) + np.array([0.01, 0.0, -0.01, 0.0]) * day
    xs, ys, cuts, groups = [], [], [], []
    for c in range(CUTOFFS):
        x = np.zeros((users, N_FEATURES))
        x[:, :4] = base + rng.normal(0.0, 0.5, (users, 4))
        x[:, -1] = rng.normal(5.0, 1.0, users)  # population noise PSI can compare
        logits = x[:, :4] @ TRUE + BIAS + rng.gumbel(size=(users, 4))
        xs.append(x)
        ys.append(logits.argmax(axis=1))
        cuts.append(np.full(users, 1_000 + c))
        groups.append(np.arange(users))
    v = CUTOFFS - 1  # the latest cutoff holds the V rows
    return {
        "x": xs[v],
        "y": ys[v],
        "cutoffs": cuts[v],
        "groups": groups[v],
        "backtest_x": np.concatenate(xs[:v]),
        "backtest_y": np.concatenate(ys[:v]),
        "backtest_spend": np.zeros(users * v),
        "backtest_cutoffs": np.concatenate(cuts[:v]),
        "backtest_groups": np.concatenate(groups[:v]),
    }


def _model(root: Path, name: str, w: np.ndarray, rows: dict[str, np.ndarray]) -> Path:
    d = root / name
    d.mkdir(parents=True)
    layers = [(_kernel(w), BIAS.copy())]
    save_weights(d / "weights.npz", np.zeros(N_FEATURES), np.ones(N_FEATURES), layers)
    pred = (rows["x"][:, :4] @ w + BIAS).argmax(axis=1)
    describe(d, rows["y"], pred, rows["x"], validation_cutoff_ms=1_000 + CUTOFFS - 1)
    np.savez_compressed(d / "validation.npz", **rows)
    return d


def _f1(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    pred = (x[:, :4] @ w + BIAS).argmax(axis=1)
    return float(classification_report(y, pred, CLASSES)["high_value_f1"])


def _schedule(root: Path) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    weights: dict[str, np.ndarray] = {"day-00": TRUE * np.array([0.9, 1, 1, 1])}
    _model(root, "day-00", weights["day-00"], _rows(0, rng))
    promote(root, "day-00", "first model")
    outcomes = []
    for day in range(1, DAYS + 1):
        serving = weights[str(current_version(root))]
        if day == 20:
            # A clearly better retrain: the high_value column restored and more.
            w = TRUE.copy()
        else:
            # A noise-sized loss on high_value: its column shrunk by 6%, plus noise.
            w = serving * np.array([0.94, 1, 1, 1]) + rng.normal(0.0, 0.01, (4, 4))
        name = f"day-{day:02d}"
        weights[name] = w
        _model(root, name, w, _rows(day, rng))
        verdict = gate.judge(root, root / name, TOLERANCE)
        if verdict.passed:
            promote(root, name, verdict.reason)
        outcomes.append((day, verdict.passed))
    # Every model seen, scored on the last day's population drawn afresh and
    # large enough that the scores' own noise is far inside the tolerance.
    final = _rows(DAYS, np.random.default_rng(99), users=40 * USERS)
    x = np.concatenate([final["x"], final["backtest_x"]])
    y = np.concatenate([final["y"], final["backtest_y"]])
    scores = {name: _f1(w, x, y) for name, w in weights.items()}
    return {"outcomes": dict(outcomes), "scores": scores, "serving": str(current_version(root))}


def test_thirty_retrains_never_leave_the_serving_model_below_the_best_seen(
    tmp_path: Path,
) -> None:
    run = _schedule(tmp_path)
    scores, serving = run["scores"], run["serving"]
    assert run["outcomes"][20], "the clearly better model is promoted"
    assert scores[serving] >= max(scores.values()) - TOLERANCE, (serving, scores)
    # Most noise-sized losses are refused (the interval's low end is below -tolerance).
    refused = [d for d, ok in run["outcomes"].items() if not ok and d != 20]
    assert len(refused) >= 25, run["outcomes"]
    gate_record = orjson.loads((tmp_path / "day-05" / "gate.json").read_bytes())
    assert len(gate_record["cutoffs_ms"]) == CUTOFFS
    assert gate_record["serving"]["evidence"]["users"] == USERS
    assert len(gate_record["serving"]["evidence"]["cutoffs"]) == CUTOFFS


def test_the_old_rule_lets_the_same_losses_add_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above can fail: the serving model alone as the bar, and the point
    difference as its own interval (the rule before evidence), ratchets down."""

    def point(y: np.ndarray, a: np.ndarray, b: np.ndarray, k: int, **_: Any) -> dict[str, Any]:
        def f(p: np.ndarray) -> float:
            said, truth = p == k, y == k
            return 2 * float((said & truth).sum()) / max(float(said.sum() + truth.sum()), 1.0)

        d = f(a) - f(b)
        return {"difference": d, "low": d, "high": d, "level": 0.9, "rows": len(y),
                "users": len(y), "support": int((y == k).sum())}  # fmt: skip

    monkeypatch.setattr(gate, "INCUMBENTS", 1)
    monkeypatch.setattr(gate, "paired_f1_difference", point)
    monkeypatch.setattr("model.training.gate.guards.per_class_differences", lambda *a, **k: {})
    run = _schedule(tmp_path)
    scores, serving = run["scores"], run["serving"]
    losses = [d for d, ok in run["outcomes"].items() if ok and d > 20]
    assert losses, "the old rule promotes noise-sized losses"
    assert scores[serving] < max(scores.values()) - TOLERANCE, (serving, scores)
