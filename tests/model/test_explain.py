"""Explanations: occlusion as defined, row by row, in bounded memory.

A change message's ``explanation`` names the features that pushed hardest
toward the new segment: for each feature, the new segment's probability less
the same with that one feature at its training mean. The fast path
(:func:`model.explain.contributions`) reuses what a variant shares with its
row; these tests hold it to the definition, computed here the slow way.
"""

from __future__ import annotations

import tracemalloc
from functools import cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model import explain
from model.cadence import CADENCE_READS, btyd_scores
from model.features import FEATURE_NAMES, LOG_MASK, N_FEATURES
from model.registry import bootstrap_dir, load_version
from model.scorer import Scorer


@cache
def served() -> Scorer:
    return load_version(bootstrap_dir()).scorer


@cache
def rows() -> np.ndarray:
    """Real model inputs (the bootstrap's validation rows) and wide random ones."""
    with np.load(bootstrap_dir() / "validation.npz") as val:
        real = np.asarray(val["x"], dtype=np.float64)[:3000]
    scorer = served()
    wide = np.random.default_rng(11).normal(0.0, 3.0, size=(3000, N_FEATURES))
    wide = np.maximum(wide * scorer.scale[:N_FEATURES] + scorer.mean[:N_FEATURES], 0.0)
    return np.concatenate([real, wide])


def mlp() -> Scorer:
    """A model of the kind before the value head (Dense, then softmax)."""
    rng = np.random.default_rng(5)
    layers = (
        (rng.normal(0, 0.3, (N_FEATURES, 16)), rng.normal(0, 0.1, 16)),
        (rng.normal(0, 0.3, (16, 4)), rng.normal(0, 0.1, 4)),
    )
    classes = ("high_value", "regular", "potential", "at_risk")
    return Scorer(classes, np.full(N_FEATURES, 0.5), np.ones(N_FEATURES), layers, None)


def by_definition(scorer: Scorer, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Each feature of each row set to its mean, one variant at a time, through predict."""
    out = np.empty(x.shape)
    for i, (row, c) in enumerate(zip(x, classes, strict=True)):
        variants = np.repeat(row[None, :], N_FEATURES, axis=0)
        variants[np.arange(N_FEATURES), np.arange(N_FEATURES)] = scorer.mean[:N_FEATURES]
        out[i] = scorer.predict(row[None, :])[0, c] - scorer.predict(variants)[:, c]
    return out


picks = st.lists(st.integers(0, 5999), min_size=1, max_size=40)


@settings(max_examples=40, deadline=None)
@given(picked=picks, seed=st.integers(0, 2**16))
@pytest.mark.parametrize("kind", ["towers", "mlp"])
def test_contributions_are_occlusion_as_defined(kind: str, picked: list[int], seed: int) -> None:
    scorer = served() if kind == "towers" else mlp()
    x = rows()[picked]
    classes = np.random.default_rng(seed).integers(0, len(scorer.classes), len(x))
    got = explain.contributions(scorer, x, classes)
    want = by_definition(scorer, x, classes)
    # The fast path adds one column's share to the row's first layer instead of
    # multiplying the whole variant out: the same sum, rounded differently.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(start=st.integers(0, 5999), size=st.integers(1, 900), shuffle=st.booleans())
def test_a_rows_explanation_does_not_depend_on_the_rows_explained_with_it(
    start: int, size: int, shuffle: bool
) -> None:
    """Bit for bit, across the chunks the batch is cut into: a replay that cuts the
    stream into other batches publishes the same explanation under the same version."""
    scorer = served()
    x = rows()
    classes = np.arange(len(x)) % len(scorer.classes)
    whole = explain.contributions(scorer, x, classes)
    picked = np.arange(start, min(start + size, len(x)))
    if shuffle:
        picked = np.random.default_rng(start).permutation(picked)
    part = explain.contributions(scorer, x[picked], classes[picked])
    assert np.array_equal(part, whole[picked])


@settings(max_examples=60, deadline=None)
@given(
    row=st.integers(0, 5999),
    feature=st.sampled_from([n for n in FEATURE_NAMES if n not in CADENCE_READS]),
    value=st.floats(0.0, 20.0),
)
def test_the_cadence_reads_no_column_but_its_own(row: int, feature: str, value: float) -> None:
    """What lets the fast path reuse a row's cadence scores for every other feature."""
    cadence = served().towers.cadence  # type: ignore[union-attr]
    assert cadence is not None
    x = rows()[[row]]
    moved = x.copy()
    moved[0, FEATURE_NAMES.index(feature)] = value
    assert np.array_equal(cadence.inputs(moved), cadence.inputs(x))
    assert np.array_equal(btyd_scores(cadence, moved), btyd_scores(cadence, x))


def test_every_column_the_cadence_reads_moves_it() -> None:
    """The converse: a column dropped from CADENCE_READS would be explained wrongly."""
    cadence = served().towers.cadence  # type: ignore[union-attr]
    assert cadence is not None
    x = rows()[:500]
    for name in CADENCE_READS:
        moved = x.copy()
        moved[:, FEATURE_NAMES.index(name)] *= 1.5
        moved[:, FEATURE_NAMES.index(name)] += 0.5
        assert not np.array_equal(btyd_scores(cadence, moved), btyd_scores(cadence, x)), name


def test_explaining_a_backlog_batch_holds_little_memory() -> None:
    """A backlog batch changes thousands of users at once. All their variants in one
    forward pass took 32 KiB each (130 MiB for 4,000), the worker's RSS high-water
    mark; in chunks it is a few MiB whatever the batch."""
    scorer = served()
    x = rows()[:4000]
    classes = np.zeros(len(x), dtype=np.intp)
    explain.contributions(scorer, x[:10], classes[:10])  # imports and caches first
    tracemalloc.start()
    try:
        explain.contributions(scorer, x, classes)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    out_bytes = x.nbytes  # the (n, F) answer itself
    assert peak - out_bytes < 24 * 2**20, f"{peak / 2**20:.1f} MiB"


def test_top_reasons_are_the_largest_contributions_in_human_units() -> None:
    scorer = served()
    x = rows()[:300]
    classes = np.arange(len(x)) % len(scorer.classes)
    contrib = explain.contributions(scorer, x, classes)
    reasons = explain.top_reasons(scorer, x, classes, k=3)
    assert len(reasons) == len(x)
    for i, why in enumerate(reasons):
        assert len(why) == 3
        js = [FEATURE_NAMES.index(r["feature"]) for r in why]
        assert sorted(contrib[i], reverse=True)[:3] == [contrib[i, j] for j in js]
        for r, j in zip(why, js, strict=True):
            human = np.expm1(x[i, j]) if LOG_MASK[j] else x[i, j]
            assert r["value"] == round(float(human), 4)
            assert r["contribution"] == round(float(contrib[i, j]), 4)
    assert explain.top_reasons(scorer, x[:0], []) == []
