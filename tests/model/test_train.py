"""Training end to end on small generated data: dataset, split, fit, artifact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from model.dataset import build_examples, default_cutoffs, sort_events, temporal_split
from model.registry import current_version, load_version
from model.sources import decode_records
from model.train import TrainConfig, train_from_events
from stream.fold import DAY_MS
from stream.generate import GeneratorConfig, generate
from stream.produce import encode_generated


@pytest.fixture(scope="module")
def events() -> list:  # type: ignore[type-arg]
    decoded = decode_records(
        encode_generated(generate(GeneratorConfig(users=250, days=240, seed=3)))
    )
    assert not decoded.rejected
    return sort_events(decoded.events)


def test_examples_use_only_events_up_to_each_cutoff(events: list) -> None:  # type: ignore[type-arg]
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


def test_train_writes_a_versioned_model_and_same_seed_gives_same_weights(
    events: list,
    tmp_path: Path,  # type: ignore[type-arg]
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


def test_class_weights_are_balanced_tempered_and_zero_for_absent_classes() -> None:
    from model.train import class_weights

    y = np.array([0] * 80 + [1] * 20)
    full = class_weights(y, 3, 1.0)
    assert full[2] == 0.0 and full[1] == pytest.approx(4 * full[0])
    half = class_weights(y, 3, 0.5)
    assert half[1] == pytest.approx(full[1] ** 0.5)
    assert class_weights(y, 3, 0.0) == {0: 1.0, 1: 1.0, 2: 0.0}


def test_model_beats_both_baselines_on_generated_data(tmp_path: Path) -> None:
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
    for name, baseline in metrics["baselines"].items():
        assert metrics["macro_f1"] > baseline["macro_f1"], (
            name,
            metrics["macro_f1"],
            baseline["macro_f1"],
        )
    for png in ("confusion_matrix", "f1_vs_baselines", "training_curves", "segment_distribution"):
        assert (target / f"{png}.png").stat().st_size > 1000
    assert "previous_segment" in (target / "report.md").read_text()
