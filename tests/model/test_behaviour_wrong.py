"""Every directional expectation fails a model that is wrong in its direction.

A check that no model can fail proves nothing. The wrong model here is a plain
softmax over the feature row whose signs are flipped where the expectations
look: more orders, views, sessions and categories raise P(at_risk), silence
lowers it, and spend lowers P(high_value) while refunds raise it. The same
model, softened, fails every archetype and pair of both suites, which the
shipped bootstrap passes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from model.features import FEATURE_NAMES, N_FEATURES
from model.registry import bootstrap_dir, load_version
from model.scorer import Scorer
from model.segments import DEFAULT_SEGMENTS
from model.training.behaviour import archetypes
from model.training.behaviour import directions as behaviour
from model.training.behaviour.archetypes_release import RELEASE, RELEASE_PAIRS

CLASSES = tuple(DEFAULT_SEGMENTS)


def _wrong(strength: float = 1.0) -> Scorer:
    w = np.zeros((N_FEATURES, len(CLASSES)))
    at_risk, high_value = CLASSES.index("at_risk"), CLASSES.index("high_value")
    for name, sign in {
        "order_count": 1.0,
        "orders_30d": 1.0,
        "orders_90d": 1.0,
        "session_count": 1.0,
        "distinct_categories": 1.0,
        "product_views_30d": 1.0,
        "days_since_last_activity": -1.0,
        "days_since_last_order": -1.0,
    }.items():
        w[FEATURE_NAMES.index(name), at_risk] = sign
    for name, sign in {
        "total_spend": -1.0,
        "spend_30d": -1.0,
        "spend_90d": -1.0,
        "avg_order_value": -1.0,
        "return_ratio": 5.0,
    }.items():
        w[FEATURE_NAMES.index(name), high_value] = sign
    return Scorer(
        CLASSES,
        np.zeros(N_FEATURES),
        np.ones(N_FEATURES),
        ((strength * w, np.zeros(len(CLASSES))),),
        None,
    )


@pytest.mark.parametrize("expectation", behaviour.EXPECTATIONS, ids=lambda e: e.name)
def test_a_model_wrong_in_its_direction_fails_it(expectation: behaviour.Expectation) -> None:
    with np.load(bootstrap_dir() / "validation.npz") as val:
        rows = val["x"]
    (result,) = behaviour.check(_wrong().predict, CLASSES, rows, (expectation,))
    assert result["applicable"]
    assert not result["passed"], result
    assert result["rate"] > 10 * expectation.max_violation_rate


def _placements(predict: Any, classes: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    result = archetypes.run(predict, classes)
    return {r["name"]: r for r in result["archetypes"] + result["pairs"]}


ARCHETYPE_CHECKS = [
    pytest.param(a.name, id=f"{suite}-{a.name}")
    for suite, group in (("development", archetypes.ARCHETYPES), ("release", RELEASE))
    for a in group
] + [
    pytest.param(p.name, id=f"{suite}-{p.name}")
    for suite, group in (("development", archetypes.PAIRS), ("release", RELEASE_PAIRS))
    for p in group
]


@pytest.mark.parametrize("name", ARCHETYPE_CHECKS)
def test_every_archetype_and_pair_fails_a_wrong_model_and_holds_for_the_bootstrap(
    name: str,
) -> None:
    # Both suites gate promotion; each check must be able to refuse a model, or
    # passing it says nothing. The wrong model is softened: at full strength its
    # P(high_value) underflows to 0 for both twins of a pair, a tie that passes.
    wrong = _placements(_wrong(0.1).predict, CLASSES)[name]
    assert wrong["applicable"] and not wrong["passed"], wrong
    shipped = load_version(bootstrap_dir())
    right = _placements(shipped.scorer.predict, shipped.classes)[name]
    assert right["applicable"] and right["passed"], right
