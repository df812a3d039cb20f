"""Training end to end on small generated data: dataset, split, fit, artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from model.registry import current_version, load_version
from model.training.dataset import (
    GATE_CUTOFFS,
    Examples,
    build_examples,
    default_cutoffs,
    early_stopping_split,
    sort_events,
    temporal_split,
)
from model.training.sources import decode_records
from model.training.train import Fitted, TrainConfig, train_from_events
from stream.core.events import Event
from stream.core.fold import DAY_MS
from stream.training.generate import GeneratorConfig, generate
from stream.training.produce import encode_generated


@pytest.fixture(scope="module")
def events() -> list[Event]:
    decoded = decode_records(
        encode_generated(generate(GeneratorConfig(users=250, days=240, seed=3)))
    )
    assert not decoded.rejected
    return sort_events(decoded.events)


def test_examples_use_only_events_up_to_each_cutoff(events: list[Event]) -> None:
    cutoffs = default_cutoffs(
        events[0].timestamp, events[-1].timestamp, horizon_ms=60 * DAY_MS, step_ms=14 * DAY_MS
    )
    ex = build_examples(events, cutoffs, horizon_ms=60 * DAY_MS)
    first = min(cutoffs)
    # Features rebuilt from a stream cut at T equal those built from all the
    # events: nothing after T leaked into them (the labels, of course, differ).
    cut = [e for e in events if e.timestamp <= first]
    only = build_examples(cut, [first], horizon_ms=60 * DAY_MS)
    mask = ex.cutoffs == first
    assert only.users == [u for u, m in zip(ex.users, mask, strict=True) if m]
    np.testing.assert_array_equal(ex.x[mask], only.x)
    train, val = temporal_split(ex, 60 * DAY_MS)
    assert val.cutoffs.min() == max(cutoffs)
    assert (train.cutoffs + 60 * DAY_MS <= val.cutoffs.min()).all()
    fit, stop = early_stopping_split(train)
    assert fit.cutoffs.max() < stop.cutoffs.min() == train.cutoffs.max()


def rows(ex: Examples) -> set[tuple[str, int]]:
    return {(u, int(c)) for u, c in zip(ex.users, ex.cutoffs, strict=True)}


def test_fit_never_sees_the_validation_rows_the_report_and_gate_score(
    events: list[Event],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Early stopping watches its own earlier cutoff, not the reported validation window."""
    import model.training.train

    horizon = 60 * DAY_MS
    real_fit = model.training.train.fit
    seen: list[tuple[Examples, Examples]] = []

    def spy(train: Examples, early_stopping: Examples, *args: Any, **kwargs: Any) -> Fitted:
        seen.append((train, early_stopping))
        return real_fit(train, early_stopping, *args, **kwargs)

    monkeypatch.setattr(model.training.train, "fit", spy)
    target = train_from_events(
        events,
        tmp_path,
        horizon_ms=horizon,
        step_ms=14 * DAY_MS,
        cfg=TrainConfig(hidden=(8,), epochs=2, seed=1),
        promote=False,
        version="no-peeking",
    )
    [(fit_rows, stop_rows)] = seen
    training = orjson.loads((target / "manifest.json").read_bytes())["training"]
    v = training["validation_cutoff_ms"]
    # What the gate re-scores the serving model on is the validation window...
    with np.load(target / "validation.npz") as saved:
        val_x, val_y = saved["x"], saved["y"]
    everything = build_examples(
        sort_events(events),
        training["cutoffs"],
        horizon_ms=horizon,
    )
    val = everything.subset(everything.cutoffs == v)
    np.testing.assert_array_equal(val_x, val.x)
    np.testing.assert_array_equal(val_y, val.y)
    # ...and none of its rows, nor any row at or after its cutoff, reached the fit.
    assert not rows(val) & (rows(fit_rows) | rows(stop_rows))
    assert fit_rows.cutoffs.max() < v and stop_rows.cutoffs.max() < v
    # Every label the fit or early stopping used had closed by the validation cutoff.
    assert (fit_rows.cutoffs + horizon <= v).all()
    assert (stop_rows.cutoffs + horizon <= v).all()
    # Early stopping is one cutoff, after every fit cutoff, recorded in the manifest.
    e = training["early_stopping_cutoff_ms"]
    assert set(stop_rows.cutoffs.tolist()) == {e}
    assert fit_rows.cutoffs.max() < e
    assert training["fit_cutoffs"] == sorted(set(fit_rows.cutoffs.tolist()))
    assert training["examples"] == len(fit_rows)
    assert training["early_stopping_examples"] == len(stop_rows)
    # The gate's earlier closed cutoffs: backtest rows only, none a fit or
    # early-stopping cutoff, each row the fold at its cutoff.
    gate = training["gate_cutoffs_ms"]
    assert len(gate) == GATE_CUTOFFS and gate[-1] == v
    assert not set(gate) & (set(training["fit_cutoffs"]) | {e})
    assert all(c + horizon > v for c in gate)
    with np.load(target / "validation.npz") as saved:
        back_x, back_cut = saved["backtest_x"], saved["backtest_cutoffs"]
        back_groups, groups = saved["backtest_groups"], saved["groups"]
    assert sorted(set(back_cut.tolist())) == gate[:-1]
    earlier = build_examples(sort_events(events), gate[:-1], horizon_ms=horizon)
    np.testing.assert_array_equal(back_x, earlier.x)
    # One group per user, shared by that user's rows at every cutoff.
    assert len(set(back_groups.tolist()) | set(groups.tolist())) == len(
        set(val.users) | set(earlier.users)
    )
    # Standardisation comes from the fit rows alone (the feature row's part of the input).
    mean = orjson.loads((target / "manifest.json").read_bytes())["normalisation"]["mean"]
    n = fit_rows.x.shape[1]
    np.testing.assert_allclose(mean[:n], fit_rows.x.mean(axis=0), rtol=1e-6, atol=1e-9)


def test_train_writes_a_versioned_model_and_same_seed_gives_same_weights(
    events: list[Event],
    tmp_path: Path,
) -> None:
    cfg = TrainConfig(hidden=(8,), epochs=3, seed=11)
    kwargs = {"horizon_ms": 60 * DAY_MS, "step_ms": 14 * DAY_MS, "cfg": cfg}
    a = train_from_events(events, tmp_path / "a", version="v-a", **kwargs)  # type: ignore[arg-type]
    b = train_from_events(events, tmp_path / "b", version="v-b", **kwargs)  # type: ignore[arg-type]
    assert current_version(tmp_path / "a") == "v-a"
    manifest = orjson.loads((a / "manifest.json").read_bytes())
    assert set(manifest) >= {
        "features",
        "schema_hash",
        "classes",
        "normalisation",
        "training",
        "metrics",
    }
    assert (a / "model.keras").exists() and (a / "report.json").exists()
    wa, wb = np.load(a / "weights.npz"), np.load(b / "weights.npz")
    for name in wa.files:
        np.testing.assert_array_equal(wa[name], wb[name])
    served = load_version(a)
    assert served.classes == ("high_value", "regular", "potential", "at_risk")


def test_model_beats_every_baseline_on_generated_data(tmp_path: Path) -> None:
    """The issue's bar: on data with known latent types, the MLP earns its keep."""
    decoded = decode_records(
        encode_generated(generate(GeneratorConfig(users=300, days=240, seed=5)))
    )
    target = train_from_events(
        decoded.events,
        tmp_path,
        horizon_ms=60 * DAY_MS,
        step_ms=7 * DAY_MS,
        cfg=TrainConfig(seed=0),
        promote=False,
        version="beats-baselines",
    )
    metrics = orjson.loads((target / "manifest.json").read_bytes())["metrics"]
    # On the gate's primary metric, against every baseline (CLV included).
    assert set(metrics["baselines"]) == {"rfm", "previous_segment", "clv"}
    for name, baseline in metrics["baselines"].items():
        assert metrics["high_value_f1"] > baseline["high_value_f1"], (
            name,
            metrics["high_value_f1"],
            baseline["high_value_f1"],
        )
    # Three value heads judged on the validation rows; the chosen one is what is served.
    choice = metrics["value_source"]
    assert set(choice["candidates"]) == {"network", "btyd", "blend"}
    served = load_version(target).scorer.towers
    assert served is not None and served.value.source == choice["chosen"]
    assert (served.value.stack is None) == (choice["chosen"] == "network")
    # Monotone by construction: no row of the validation window moves the wrong way.
    assert all(d["violations"] == 0 for d in metrics["checks"]["directional"])
    for png in (
        "confusion_matrix",
        "f1_vs_baselines",
        "training_curves",
        "segment_distribution",
        "reliability",
        "cumulative_gains",
        "deciles",
    ):
        assert (target / f"{png}.png").stat().st_size > 1000
    report = (target / "report.md").read_text()
    for section in (
        "## Directional checks",
        "## Archetypes",
        "## Drift reference",
        "## Ranking by value",
        "## Calibration of the published probabilities",
        "Value head served: **",
    ):
        assert section in report
    assert "previous_segment" in (target / "report.md").read_text()
