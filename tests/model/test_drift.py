"""Drift: the stored reference, PSI, and the rolling window the worker keeps."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from model.drift import (
    SIGNIFICANT_PSI,
    DriftMonitor,
    bin_counts,
    psi,
    psi_by_feature,
    reference,
    serving_rows,
    summary,
)
from model.features import FEATURE_NAMES, N_FEATURES, vector
from stream.core.fold import UserState, apply
from tests.factories import DAY, T0, as_event, click, order

NAMES = ("a", "b", "c")

# Model inputs look like this: many exact zeros (no orders, no carts), ties,
# and a spread of log1p'd counts and money above them.
values = st.one_of(
    st.just(0.0),
    st.just(1.0),
    st.floats(min_value=0.0, max_value=20.0, allow_nan=False, allow_subnormal=False),
)


def matrices(min_rows: int = 1, max_rows: int = 200, cols: int = len(NAMES)) -> st.SearchStrategy:
    return hnp.arrays(
        np.float64, st.tuples(st.integers(min_rows, max_rows), st.just(cols)), elements=values
    )


def naive_counts(
    ref: dict[str, Any], rows: np.ndarray, names: Sequence[str] = NAMES
) -> dict[str, list[int]]:
    return {n: bin_counts(ref["features"][n], rows[:, j]).tolist() for j, n in enumerate(names)}


@given(matrices(), st.integers(2, 12))
def test_reference_is_json_with_one_bin_more_than_edges_and_the_sample_range(
    x: np.ndarray, bins: int
) -> None:
    ref = reference(x, NAMES, bins=bins)
    assert orjson.loads(orjson.dumps(ref)) == ref
    assert ref["bins"] == bins and ref["rows"] == len(x)
    for j, name in enumerate(NAMES):
        f = ref["features"][name]
        assert 1 <= len(f["edges"]) <= bins - 1
        assert all(a < b for a, b in itertools.pairwise(f["edges"]))
        assert len(f["proportions"]) == len(f["edges"]) + 1
        assert math.isclose(sum(f["proportions"]), 1.0)
        assert (f["min"], f["max"]) == (x[:, j].min(), x[:, j].max())
        counts = bin_counts(f, x[:, j])
        assert np.allclose(counts / len(x), f["proportions"])


def test_ties_at_zero_give_zero_a_bin_of_its_own() -> None:
    column = np.array([0.0] * 60 + list(np.linspace(1, 5, 40)))
    ref = reference(column[:, None], ["views"])["features"]["views"]
    assert ref["edges"][0] == 0.0 and ref["edges"].count(0.0) == 1
    assert math.isclose(ref["proportions"][0], 0.6)


@given(matrices(min_rows=1))
def test_a_sample_against_its_own_reference_has_no_drift(x: np.ndarray) -> None:
    monitor = DriftMonitor(reference(x, NAMES), window_rows=len(x), names=NAMES)
    monitor.observe(x)
    snap = monitor.snapshot()
    assert snap.rows == len(x)
    assert all(v < 1e-12 for v in snap.psi.values()), snap.psi
    assert snap.out_of_range_ratio == 0.0


distributions = hnp.arrays(
    np.float64,
    st.integers(1, 12),
    elements=st.floats(min_value=0.0, max_value=1000.0, allow_subnormal=False),
).filter(lambda a: a.sum() > 0)


@given(st.data())
def test_psi_is_non_negative_symmetric_and_zero_for_equal_distributions(
    data: st.DataObject,
) -> None:
    e = data.draw(distributions)
    a = data.draw(hnp.arrays(np.float64, e.shape, elements=st.floats(0.0, 1000.0)))
    a[0] += 1.0  # never empty
    assert psi(e, a) >= 0.0
    assert math.isclose(psi(e, a), psi(a, e), rel_tol=1e-12, abs_tol=1e-15)
    assert psi(e, e) == 0.0
    assert psi(e, 3 * e) < 1e-12  # counts or proportions alike


@given(st.data())
def test_psi_grows_as_the_live_distribution_moves_away(data: st.DataObject) -> None:
    positive = st.floats(min_value=1.0, max_value=100.0)
    n = data.draw(st.integers(2, 10))
    e = data.draw(hnp.arrays(np.float64, n, elements=positive))
    a = data.draw(hnp.arrays(np.float64, n, elements=positive))
    e, a = e / e.sum(), a / a.sum()
    steps = [psi(e, (1 - t) * e + t * a) for t in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert all(x <= y + 1e-12 for x, y in itertools.pairwise(steps)), steps


def test_psi_of_an_empty_bin_is_finite_and_significant() -> None:
    assert SIGNIFICANT_PSI < psi(np.array([0.5, 0.5]), np.array([1.0, 0.0])) < math.inf
    with pytest.raises(ValueError):
        psi(np.array([1.0, 0.0]), np.array([0.0, 0.0]))


@settings(max_examples=60)
@given(
    matrices(min_rows=1, max_rows=60),
    st.lists(matrices(min_rows=0, max_rows=40), min_size=1, max_size=12),
    st.integers(1, 50),
    st.integers(1, 20),
    st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_the_window_is_the_newest_rows_whatever_the_batch_sizes(
    train: np.ndarray,
    batches: list[np.ndarray],
    window: int,
    chunk: int,
    snap_between: list[bool],
) -> None:
    ref = reference(train, NAMES)
    monitor = DriftMonitor(ref, window_rows=window, chunk_rows=chunk, names=NAMES)
    seen = np.zeros((0, len(NAMES)))
    for batch, snap_now in zip(batches, snap_between, strict=False):
        monitor.observe(batch)
        seen = np.concatenate([seen, batch])
        if snap_now:  # binning some rows early must not change what is counted
            monitor.snapshot()
    snap = monitor.snapshot()
    full = monitor.window_rows
    assert min(len(seen), full - monitor.chunk_rows + 1) <= snap.rows <= min(len(seen), full)
    newest = seen[len(seen) - snap.rows :]
    assert snap.counts == (naive_counts(ref, newest) if snap.rows else {})
    lo = np.array([ref["features"][n]["min"] for n in NAMES])
    hi = np.array([ref["features"][n]["max"] for n in NAMES])
    assert snap.out_of_range_rows == int(((newest < lo) | (newest > hi)).any(axis=1).sum())


def test_old_rows_stop_counting_once_the_window_has_rolled_past_them() -> None:
    rng = np.random.default_rng(1)
    train = rng.exponential(1.0, size=(5000, len(NAMES)))
    ref = reference(train, NAMES)
    monitor = DriftMonitor(ref, window_rows=1000, chunk_rows=100, names=NAMES)
    monitor.observe(train[:1000] + 50.0)  # everything shifted up: drift, out of range
    drifted = monitor.snapshot()
    assert min(drifted.psi.values()) > SIGNIFICANT_PSI and drifted.out_of_range_ratio == 1.0
    for start in range(1000, 2000, 250):  # a window's worth of rows like training's
        monitor.observe(train[start : start + 250])
    healed = monitor.snapshot()
    assert healed.rows == 1000 and healed.out_of_range_rows == 0
    assert max(healed.psi.values()) < 0.05


def test_out_of_range_counts_rows_not_cells() -> None:
    train = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5]])
    monitor = DriftMonitor(reference(train, NAMES), window_rows=100, names=NAMES)
    monitor.observe(
        np.array(
            [
                [9.0, 9.0, 9.0],  # three cells out: one row
                [-1.0, 0.5, 0.5],  # below the minimum
                [0.5, 0.5, 0.5],
                [1.0, 0.0, 1.0],  # at the bounds: in range
                [np.nan, 0.5, 0.5],  # not a number: not in range either
            ]
        )
    )
    snap = monitor.snapshot()
    assert (snap.rows, snap.out_of_range_rows) == (5, 3)
    assert snap.out_of_range_ratio == pytest.approx(3 / 5)


def test_monitor_finds_the_reference_features_among_the_input_columns() -> None:
    rng = np.random.default_rng(2)
    x = rng.exponential(1.0, size=(500, N_FEATURES))
    picked = ["product_views_30d", "tenure_days"]
    cols = [FEATURE_NAMES.index(n) for n in picked]
    monitor = DriftMonitor(reference(x[:, cols], picked))
    monitor.observe(x)
    snap = monitor.snapshot()
    assert set(snap.psi) == set(picked) and max(snap.psi.values()) < 1e-12
    with pytest.raises(ValueError, match="features the input does not"):
        DriftMonitor(reference(x[:, :1], ["no_such_feature"]))


def test_a_malformed_reference_is_refused() -> None:
    ref = reference(np.arange(20.0)[:, None], ["a"])
    ref["features"]["a"]["proportions"].pop()
    with pytest.raises(ValueError, match="one bin more"):
        DriftMonitor(ref, names=["a"])


def test_reference_refuses_what_it_cannot_describe() -> None:
    with pytest.raises(ValueError):
        reference(np.zeros((0, 3)), NAMES)
    with pytest.raises(ValueError):
        reference(np.zeros((4, 2)), NAMES)
    with pytest.raises(ValueError):
        reference(np.array([[0.0, np.inf, 1.0]]), NAMES)


def test_merged_counts_give_the_psi_of_the_union() -> None:
    rng = np.random.default_rng(3)
    ref = reference(rng.normal(size=(2000, 3)), NAMES)
    a, b = rng.normal(0.3, 1, size=(700, 3)), rng.normal(0.6, 1, size=(400, 3))
    one, two, both = (DriftMonitor(ref, 5000, names=NAMES) for _ in range(3))
    one.observe(a)
    two.observe(b)
    both.observe(np.concatenate([a, b]))
    sa, sb = one.snapshot(), two.snapshot()
    assert sa.counts and sb.counts
    merged = {n: [x + y for x, y in zip(sa.counts[n], sb.counts[n], strict=True)] for n in NAMES}
    expected = both.snapshot().psi
    assert psi_by_feature(ref, merged) == pytest.approx(expected)
    assert summary(ref)["features"]["a"]["bins"] == len(ref["features"]["a"]["proportions"])


def test_serving_rows_are_what_the_worker_scores_as_each_event_arrives() -> None:
    events = [
        as_event(v)
        for v in (
            click("u1", T0, "product_view"),
            click("u2", T0 + DAY),
            order("u1", T0 + 2 * DAY, total=40.0),
            click("u1", T0 + 9 * DAY, "add_to_cart"),
        )
    ]
    rows = serving_rows(events)
    state = UserState()
    expected = []
    for e in events:
        if e.user_id == "u1":
            apply(state, e)
            expected.append(vector(state, state.last_seen))
    assert rows.shape == (4, N_FEATURES)
    assert np.array_equal(rows[[0, 2, 3]], np.stack(expected))
    assert np.all(rows[:, FEATURE_NAMES.index("days_since_last_activity")] == 0.0)
    assert len(serving_rows(events, since_ms=T0 + 2 * DAY)) == 2
