"""Baselines on the temporal validation window: the RFM rule and "previous segment"."""

from __future__ import annotations

import numpy as np
import pytest

from model.features import N_FEATURES
from model.training.baselines import majority_class, previous_segment_baseline, rfm_baseline
from model.training.dataset import (
    Examples,
    build_examples,
    default_cutoffs,
    sort_events,
    temporal_split,
)
from model.training.evaluate import classification_report
from model.training.sources import decode_records
from stream.core.fold import DAY_MS
from stream.training.generate import GeneratorConfig, generate
from stream.training.produce import encode_generated

HORIZON_MS = 60 * DAY_MS
STEP_MS = 14 * DAY_MS


@pytest.fixture(scope="module")
def examples() -> Examples:
    decoded = decode_records(
        encode_generated(generate(GeneratorConfig(users=250, days=300, seed=3)))
    )
    assert not decoded.rejected
    events = sort_events(decoded.events)
    cutoffs = default_cutoffs(
        events[0].timestamp, events[-1].timestamp, horizon_ms=HORIZON_MS, step_ms=STEP_MS
    )
    return build_examples(events, cutoffs, horizon_ms=HORIZON_MS)


def test_rfm_predicts_valid_classes_for_every_validation_row(examples: Examples) -> None:
    train, val = temporal_split(examples, HORIZON_MS)
    pred = rfm_baseline(train, val)
    assert pred.shape == (len(val),)
    assert np.issubdtype(pred.dtype, np.integer)
    assert pred.min() >= 0
    assert pred.max() < len(val.classes)


def test_rfm_does_better_than_chance(examples: Examples) -> None:
    train, val = temporal_split(examples, HORIZON_MS)
    pred = rfm_baseline(train, val)
    report = classification_report(val.y, pred, val.classes)
    # Four classes: a constant guess scores at most 0.25 macro-F1 on one class.
    assert report["macro_f1"] > 0.25
    assert len(np.unique(pred)) >= 2


def test_rfm_maps_a_missing_class_to_the_nearest_present_one(examples: Examples) -> None:
    # Orders-only data has no "potential": the rule's "potential" rows must
    # still land on a class the model has (at_risk), never an out-of-range index.
    train, val = temporal_split(examples, HORIZON_MS)
    classes = ("high_value", "regular", "at_risk")
    remap = {i: classes.index(c) for i, c in enumerate(train.classes) if c in classes}

    def drop_potential(ex: Examples) -> Examples:
        keep = np.array([name in classes for name in ex.label_names])
        sub = ex.subset(keep)
        sub.y = np.array([remap[int(y)] for y in sub.y], dtype=np.int64)
        sub.classes = classes
        return sub

    pred = rfm_baseline(drop_potential(train), drop_potential(val))
    assert set(pred.tolist()) <= {0, 1, 2}


def _tiny(users_at: dict[int, list[tuple[str, int]]]) -> Examples:
    users: list[str] = []
    ys: list[int] = []
    cutoffs: list[int] = []
    for cutoff, rows in users_at.items():
        for user, y in rows:
            users.append(user)
            ys.append(y)
            cutoffs.append(cutoff)
    return Examples(
        x=np.zeros((len(users), N_FEATURES)),
        y=np.array(ys, dtype=np.int64),
        users=users,
        cutoffs=np.array(cutoffs, dtype=np.int64),
        label_names=["" for _ in users],
    )


def test_previous_segment_uses_only_a_fully_observed_cutoff() -> None:
    ex = _tiny(
        {
            10: [("a", 0), ("b", 1)],
            # 20 + 15 > 30: this label window is still open at the validation cutoff.
            20: [("a", 2), ("b", 2), ("c", 2)],
            30: [("a", 3), ("b", 3), ("c", 3), ("d", 3)],
        }
    )
    pred, known = previous_segment_baseline(ex, 30, 15, fallback=1)
    val = ex.subset(ex.cutoffs == 30)
    assert val.users == ["a", "b", "c", "d"]
    # a, b from cutoff 10; c and d were not seen at 10, so they get the fallback.
    assert pred.tolist() == [0, 1, 1, 1]
    assert known.tolist() == [True, True, False, False]


def test_previous_segment_falls_back_when_no_cutoff_is_fully_observed() -> None:
    ex = _tiny({20: [("a", 2)], 30: [("a", 3), ("b", 0)]})
    pred, known = previous_segment_baseline(ex, 30, 15, fallback=1)
    assert pred.tolist() == [1, 1]
    assert not known.any()


def test_previous_segment_on_generated_data(examples: Examples) -> None:
    train, val = temporal_split(examples, HORIZON_MS)
    last = int(val.cutoffs.max())
    fallback = majority_class(train.y, len(train.classes))
    pred, known = previous_segment_baseline(examples, last, HORIZON_MS, fallback)
    assert pred.shape == (len(val),)
    assert (pred[~known] == fallback).all()
    assert known.any()
    report = classification_report(val.y, pred, val.classes)
    assert report["macro_f1"] > 0.25
