"""The training report: four PNG figures and report.md linking them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from model.segments import DEFAULT_SEGMENTS
from model.training.evaluate import classification_report
from model.training.report.render import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = (
    "confusion_matrix.png",
    "f1_vs_baselines.png",
    "training_curves.png",
    "segment_distribution.png",
)


def _random_report(rng: np.random.Generator, y: np.ndarray, hit: float) -> dict[str, Any]:
    # Keep a share of the true labels so the figures have something other than noise.
    guess = rng.integers(0, len(DEFAULT_SEGMENTS), size=len(y))
    pred = np.where(rng.random(len(y)) < hit, y, guess)
    return classification_report(y, pred, DEFAULT_SEGMENTS)


def test_write_report_writes_figures_and_markdown(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, len(DEFAULT_SEGMENTS), size=400)
    model = _random_report(rng, y, 0.7)
    baselines = {
        "rfm": _random_report(rng, y, 0.4),
        "previous_segment": _random_report(rng, y, 0.5),
    }
    history = {
        "loss": [1.3, 1.0, 0.8, 0.7],
        "val_loss": [1.35, 1.1, 0.9, 0.85],
        "accuracy": [0.4, 0.55, 0.65, 0.7],
        "val_accuracy": [0.38, 0.5, 0.6, 0.66],
    }
    distribution = {
        "train": {"high_value": 200, "regular": 700, "potential": 600, "at_risk": 500},
        "validation": {c: int((y == i).sum()) for i, c in enumerate(DEFAULT_SEGMENTS)},
        "predicted": {"high_value": 90, "regular": 110, "potential": 100, "at_risk": 100},
    }
    out = tmp_path / "v1"
    paths = write_report(
        out,
        version="v1",
        classes=DEFAULT_SEGMENTS,
        model_metrics=model,
        baselines=baselines,
        history=history,
        distribution=distribution,
        gate={"outcome": "promoted", "reason": "no serving model to compare with"},
        training={
            "events": 1000,
            "examples": 2000,
            "validation_examples": 400,
            "window": {"from_ms": 1_704_067_200_000, "until_ms": 1_729_987_200_000},
            "horizon_ms": 60 * 86_400_000,
        },
    )
    assert {p.name for p in paths} == {*FIGURES, "report.md"}
    assert all(p.parent == out for p in paths)
    for name in FIGURES:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 1024, name
    md = (out / "report.md").read_text()
    assert "v1" in md
    assert "macro-F1" in md
    for name in baselines:
        assert name in md
    for name in FIGURES:
        assert f"]({name})" in md
    assert "promoted" in md
    assert "no serving model to compare with" in md


def test_write_report_copes_with_no_history_and_no_extras(tmp_path: Path) -> None:
    y = np.array([0, 1, 1, 3])
    model = classification_report(y, np.array([0, 1, 3, 3]), DEFAULT_SEGMENTS)
    paths = write_report(
        tmp_path,
        version="v2",
        classes=DEFAULT_SEGMENTS,
        model_metrics=model,
        baselines={},
        history={},
        distribution={"train": {"regular": 3}, "validation": {"regular": 1}},
    )
    assert len(paths) == 5
    assert all(p.exists() for p in paths)
    assert "gate" not in (tmp_path / "report.md").read_text().lower()
