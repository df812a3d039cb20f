"""The shipped bootstrap model: what a fresh install serves must behave.

It must place every archetype where the label definition says (all of them
judged: none may be excused as outside its training range or of a kind it
never saw), meet every directional expectation on its own validation rows
and on rows far outside any training range, and record what the gate and
the drift metrics need.
"""

from __future__ import annotations

import numpy as np
import orjson

from model.cadence import CADENCE_INPUTS
from model.features import FEATURE_NAMES
from model.registry import bootstrap_dir, load_version
from model.training.behaviour import archetypes
from model.training.behaviour import directions as behaviour
from tests.model.test_monotone import random_rows


def test_bootstrap_places_every_archetype_where_the_labels_say() -> None:
    model = load_version(bootstrap_dir())
    result = archetypes.run(model.scorer.predict, model.classes)
    assert all(a["applicable"] for a in result["archetypes"])
    misplaced = {a["name"]: a["got"] for a in result["archetypes"] if not a["passed"]}
    assert misplaced == {}
    assert all(p["passed"] for p in result["pairs"]), result["pairs"]


def test_bootstrap_meets_the_directional_expectations_everywhere() -> None:
    model = load_version(bootstrap_dir())
    with np.load(bootstrap_dir() / "validation.npz") as val:
        rows = val["x"]
    far = random_rows(np.random.default_rng(7), 2_000)
    guaranteed = tuple(e for e in behaviour.EXPECTATIONS if e.by_construction)
    for x in (rows, far):
        results = behaviour.check(model.scorer.predict, model.classes, x, guaranteed)
        assert all(r["applicable"] and r["violations"] == 0 for r in results), results
    # The moves users make that also shift free inputs: within their thresholds
    # on the rows the gate judges (there, a few rows in ten thousand move).
    for r in behaviour.check(model.scorer.predict, model.classes, rows):
        assert r["applicable"] and r["passed"], r


def test_the_eur_900_customer_is_high_value_from_the_first_order_on() -> None:
    """The issue's case: 12 orders of EUR 900 in 60 days must not end up regular."""
    model = load_version(bootstrap_dir())
    hv = model.classes.index("high_value")
    whale = next(a for a in archetypes.ARCHETYPES if a.name == "whale_at_last_order")
    events = whale.events()
    for after in (0.0, 5.0, 10.0):
        p = model.scorer.predict(archetypes._at(events, after))[0]
        assert p.argmax() == hv, (after, p)


def test_bootstrap_manifest_records_its_kind_range_drift_reference_and_gate() -> None:
    manifest = orjson.loads((bootstrap_dir() / "manifest.json").read_bytes())
    assert manifest["training"]["source_kind"] == "synthetic"
    assert manifest["training"]["parts"] >= 3  # several populations, not one generator
    assert set(manifest["drift_reference"]["features"]) == set(FEATURE_NAMES)
    # The input range covers the feature row and the buy-till-you-die inputs.
    assert manifest["inputs"] == [*FEATURE_NAMES, *CADENCE_INPUTS]
    assert len(manifest["input_range"]["lo"]) == len(manifest["inputs"])
    assert manifest["network"]["kind"] == "towers"
    # Calibrated: the gate's ECE bound holds on every class with support.
    for c, r in manifest["metrics"]["calibration"].items():
        assert not r["support"] or r["ece"] <= 0.03, (c, r)
    gate = orjson.loads((bootstrap_dir() / "gate.json").read_bytes())
    assert gate["primary_metric"] == "high_value_f1"
    assert {c["check"] for c in gate["checks"] if not c["passed"]} == set(), gate["reason"]


def test_bootstrap_predicted_spend_ranks_better_than_every_single_raw_input() -> None:
    """Issue 30: on its own validation buyers, the value head's predicted spend ranks
    realised spend (normalised Gini) and the high_value label (AUC) better than any
    one raw input; so does its P(high_value) the label."""
    from model.features import raw_column
    from model.training.assess import SINGLE_INPUTS
    from model.training.ranking import auc, normalised_gini

    model = load_version(bootstrap_dir())
    with np.load(bootstrap_dir() / "validation.npz") as val:
        x, y, spend = val["x"], val["y"], val["spend"]
    past = raw_column(x, "order_count") >= 1
    scores = model.scorer.score(x[past])
    predicted = scores.traits[:, 1]
    hv = y[past] == model.classes.index("high_value")
    gini = normalised_gini(predicted, spend[past])
    spend_auc = auc(predicted, hv)
    hv_auc = auc(scores.probabilities[:, 0], hv)
    for name in SINGLE_INPUTS:
        column = raw_column(x[past], name)
        assert gini > normalised_gini(column, spend[past]), name
        assert spend_auc > auc(column, hv), name
        assert hv_auc > auc(column, hv), name
