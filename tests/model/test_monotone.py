"""Monotone by construction: any weights in the constrained set meet every directional expectation.

Random weights (hypothesis) are projected by the network's own Keras
constraints, then served by the NumPy scorer; the expectations of
model/training/behaviour.py must hold on random rows, however far outside any
training range. The same weights unconstrained violate them, so the test can
fail.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from model.features import FEATURE_NAMES, N_FEATURES, transform
from model.scorer import Scorer
from model.segments import DEFAULT_SEGMENTS
from model.training import behaviour
from model.training.monotone import MONOTONE, layout
from model.training.network import HiddenConstraint, OutputConstraint

CLASSES = DEFAULT_SEGMENTS


def random_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """Raw feature rows that a fold could produce, over a wide range (incl. EUR 900 orders)."""
    raw = np.zeros((n, N_FEATURES))
    col = {name: i for i, name in enumerate(FEATURE_NAMES)}
    orders = rng.integers(0, 40, n).astype(float)
    tenure = rng.uniform(0, 800, n)
    raw[:, col["order_count"]] = orders
    raw[:, col["tenure_days"]] = tenure
    raw[:, col["days_since_last_activity"]] = rng.uniform(0, 1, n) * tenure
    raw[:, col["days_since_last_order"]] = np.where(
        orders > 0, rng.uniform(0, 1, n) * tenure, tenure + 365
    )
    aov = rng.lognormal(3.5, 1.5, n)
    raw[:, col["total_spend"]] = orders * aov
    raw[:, col["avg_order_value"]] = np.where(orders > 0, aov, 0.0)
    raw[:, col["orders_30d"]] = orders * rng.uniform(0, 0.5, n)
    raw[:, col["orders_90d"]] = orders * rng.uniform(0.3, 0.8, n)
    raw[:, col["spend_30d"]] = raw[:, col["orders_30d"]] * aov
    raw[:, col["spend_90d"]] = raw[:, col["orders_90d"]] * aov
    sessions = rng.integers(0, 200, n).astype(float)
    raw[:, col["session_count"]] = sessions
    raw[:, col["product_views_30d"]] = rng.exponential(10, n)
    raw[:, col["cart_adds_30d"]] = rng.exponential(2, n)
    raw[:, col["cart_to_order"]] = np.where(orders > 0, rng.uniform(0, 1, n), 0.0)
    raw[:, col["orders_per_session"]] = np.divide(
        orders, sessions, out=np.zeros(n), where=sessions > 0
    )
    raw[:, col["return_ratio"]] = rng.uniform(0, 0.5, n)
    raw[:, col["distinct_categories"]] = rng.integers(0, 20, n)
    raw[:, col["has_ordered"]] = (orders > 0).astype(float)
    months = np.maximum(tenure, 30.0) / 30.0
    raw[:, col["orders_per_30d"]] = orders / months
    raw[:, col["spend_per_30d"]] = orders * aov / months
    return transform(raw)


def scorer(seed: int, hidden: tuple[int, ...], constrained: bool) -> Scorer:
    rng = np.random.default_rng(seed)
    plan = layout(hidden, CLASSES)
    sizes = [N_FEATURES, *hidden, len(CLASSES)]
    layers = []
    for i in range(len(sizes) - 1):
        kernel = rng.normal(0, 0.4, (sizes[i], sizes[i + 1])).astype(np.float32)
        if constrained and i < len(hidden):
            kernel = np.asarray(
                HiddenConstraint(plan.allowed[i], plan.sign if i == 0 else None)(kernel)
            )
        elif constrained:
            kernel = np.asarray(
                OutputConstraint(
                    plan.unit_block == 0, CLASSES.index("at_risk"), CLASSES.index("high_value")
                )(kernel)
            )
        layers.append((kernel.astype(np.float64), rng.normal(0, 0.5, sizes[i + 1])))
    mean = rng.normal(0, 1, N_FEATURES)
    scale = rng.uniform(0.5, 2.0, N_FEATURES)
    return Scorer(CLASSES, mean, scale, tuple(layers))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), hidden=st.sampled_from([(6,), (12,), (8, 4)]))
def test_constrained_weights_never_violate_a_directional_expectation(
    seed: int, hidden: tuple[int, ...]
) -> None:
    rows = random_rows(np.random.default_rng(seed), 400)
    results = behaviour.check(scorer(seed, hidden, True).predict, CLASSES, rows)
    assert all(r["applicable"] for r in results)
    assert {r["name"]: r["violations"] for r in results} == {r["name"]: 0 for r in results}


def test_the_same_weights_unconstrained_do_violate_them() -> None:
    rows = random_rows(np.random.default_rng(0), 400)
    results = behaviour.check(scorer(0, (12,), False).predict, CLASSES, rows)
    assert sum(r["violations"] for r in results) > 0


def test_every_monotone_feature_is_a_model_input_and_free_ones_reach_every_unit() -> None:
    assert set(MONOTONE) <= set(FEATURE_NAMES)
    plan = layout((9,), CLASSES)
    free = [i for i, f in enumerate(FEATURE_NAMES) if f not in MONOTONE]
    assert free and plan.allowed[0][free].all()
    # A monotone input reaches only its own block's units.
    for i, f in enumerate(FEATURE_NAMES):
        if f in MONOTONE:
            assert 0 < plan.allowed[0][i].sum() < 9
