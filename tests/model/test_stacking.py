"""The three value heads (network, BG/NBD + Gamma-Gamma, blend) and the choice between them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from model.cadence import BTYD_SCORES, btyd_scores
from model.features import N_FEATURES, raw_column
from model.registry import bootstrap_dir, load_version
from model.scorer import Scorer, save_weights
from model.training.stacking import logistic, pick
from model.value import SEGMENT_ORDER, SOURCES, ValueHead


def _bootstrap() -> Scorer:
    return load_version(bootstrap_dir()).scorer


def test_logistic_recovers_coefficients_and_keeps_the_signs_it_is_told() -> None:
    rng = np.random.default_rng(1)
    x1, x2 = rng.normal(size=(2, 40_000))
    y = (rng.random(40_000) < 1 / (1 + np.exp(-(1.5 * x1 - 0.7 * x2 + 0.3)))).astype(float)
    w = np.ones_like(y)
    a, b, c = logistic([x1, x2], y, w, [True, False])
    assert abs(a - 1.5) < 0.1 and abs(b + 0.7) < 0.1 and abs(c - 0.3) < 0.1
    # A weight kept non-negative stays at 0 where the rows would make it negative.
    a, b, _ = logistic([x1, x2], y, w, [True, True])
    assert b == 0.0 and a > 1.0
    # Rows that cannot tell: no fit at all.
    assert not logistic([x1], np.zeros_like(y), w, [True]).any()


def _stacked(scorer: Scorer, source: str) -> Scorer:
    assert scorer.towers is not None
    value = replace(
        scorer.towers.value,
        stack=np.array([[0.4, -1.0], [0.8, -2.0], [1.2, 0.5]]),
        platt=scorer.towers.value.platt * (0.0 if source == "btyd" else 1.0),
        source=source,
    )
    return replace(scorer, towers=replace(scorer.towers, value=value))


def _rows(n: int, seed: int) -> np.ndarray:
    scorer = _bootstrap()
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, size=(n, N_FEATURES)) * scorer.scale[:N_FEATURES]
    return np.asarray(np.maximum(x + scorer.mean[:N_FEATURES], 0.0))


def test_a_stacked_head_round_trips_through_the_weights_file(tmp_path: Path) -> None:
    for source in ("btyd", "blend"):
        scorer = _stacked(_bootstrap(), source)
        assert scorer.towers is not None
        path = tmp_path / f"{source}.npz"
        save_weights(
            path, scorer.mean, scorer.scale, list(scorer.layers), scorer.clip, scorer.towers
        )
        loaded = Scorer.load(path, scorer.classes)
        assert loaded.towers is not None and loaded.towers.value.source == source
        x = _rows(500, 3)
        ours, theirs = scorer.score(x), loaded.score(x)
        np.testing.assert_array_equal(ours.probabilities, theirs.probabilities)
        np.testing.assert_array_equal(ours.traits, theirs.traits)
        # The stack is read: the same rows score otherwise with the network's head alone.
        assert not np.allclose(ours.probabilities, _bootstrap().score(x).probabilities)


def test_the_btyd_head_publishes_the_btyd_expected_spend() -> None:
    scorer = _stacked(_bootstrap(), "btyd")
    assert scorer.towers is not None and scorer.towers.cadence is not None
    x = _rows(300, 4)
    spend = scorer.score(x).traits[:, 1]
    expected = btyd_scores(scorer.towers.cadence, x)[:, BTYD_SCORES.index("spend")]
    np.testing.assert_array_equal(spend, expected)
    assert (spend[raw_column(x, "order_count") < 0.5] == 0).all()


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.1, 3.0))
def test_a_stacked_probability_never_falls_when_its_btyd_score_rises(
    seed: int, more: float
) -> None:
    scorer = _bootstrap()
    assert scorer.towers is not None
    value: ValueHead = _stacked(scorer, "blend").towers.value  # type: ignore[union-attr]
    rng = np.random.default_rng(seed)
    heads = rng.normal(0.0, 2.0, size=(64, 4))
    btyd = np.zeros((64, len(BTYD_SCORES)))
    btyd[:, :3] = rng.normal(0.0, 2.0, size=(64, 3))
    btyd[:, 3] = 1.0
    classes = SEGMENT_ORDER
    base = value.probabilities(heads, classes, btyd)
    for k, check in (
        (0, lambda p: 1 - p[:, classes.index("at_risk")]),  # activity
        (1, lambda p: p[:, classes.index("high_value")] + p[:, classes.index("regular")]),
        (2, lambda p: p[:, classes.index("high_value")]),  # above the line
    ):
        raised = btyd.copy()
        raised[:, k] += more
        assert (check(value.probabilities(heads, classes, raised)) >= check(base) - 1e-12).all()


judged_st = st.fixed_dictionaries(
    {
        s: st.fixed_dictionaries(
            {
                "high_value_f1": st.floats(0.0, 1.0),
                "max_ece_beyond_noise": st.floats(0.0, 0.2),
                "gini": st.none(),
            }
        )
        for s in SOURCES
    }
)


@given(judged_st)
def test_the_choice_is_the_best_calibrated_head_and_prefers_the_simpler(
    judged: dict[str, dict[str, float]],
) -> None:
    chosen = pick(judged, 0.03)
    ok = [s for s, j in judged.items() if j["max_ece_beyond_noise"] <= 0.03]
    if ok:
        assert chosen in ok
        best = max(judged[s]["high_value_f1"] for s in ok)
        assert judged[chosen]["high_value_f1"] == best
        assert chosen == next(s for s in SOURCES if s in ok and judged[s]["high_value_f1"] == best)
    else:
        assert judged[chosen]["high_value_f1"] == max(j["high_value_f1"] for j in judged.values())


def test_a_miscalibrated_head_is_not_chosen_over_a_calibrated_one_with_a_lower_f1() -> None:
    judged = {
        "network": {"high_value_f1": 0.40, "max_ece_beyond_noise": 0.01, "gini": 0.8},
        "btyd": {"high_value_f1": 0.55, "max_ece_beyond_noise": 0.09, "gini": 0.9},
        "blend": {"high_value_f1": 0.41, "max_ece_beyond_noise": 0.02, "gini": 0.85},
    }
    assert pick(judged, 0.03) == "blend"


@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, 40),
    st.floats(1.0, 700.0),
    st.floats(0.0, 1.0),
    st.floats(1.0, 200.0),
)
def test_p_purchase_falls_with_silence_and_rises_with_an_order_placed_now(
    orders: int, age_days: float, silent_share: float, more_silence: float
) -> None:
    from model.cadence import p_purchase
    from model.features import FEATURE_NAMES, LOG_FEATURES

    cadence = _bootstrap().towers.cadence  # type: ignore[union-attr]
    assert cadence is not None

    def row(n: int, age: float, since: float) -> np.ndarray:
        x = np.zeros((1, N_FEATURES))
        for name, value in (
            ("order_count", n),
            ("days_since_first_order", age),
            ("days_since_last_order", since),
        ):  # in model-input units, as raw_column reads them back
            x[0, FEATURE_NAMES.index(name)] = np.log1p(value) if name in LOG_FEATURES else value
        return x

    since = silent_share * age_days
    p = p_purchase(cadence, row(orders, age_days, since))[0]
    assert 0.0 <= p <= 1.0
    quieter = p_purchase(cadence, row(orders, age_days + more_silence, since + more_silence))[0]
    assert quieter <= p + 1e-12
    # An order placed just now: more likely to buy again. (More past orders at
    # the same long silence may rightly lower it: a frequent buyer gone quiet
    # has most likely left.)
    now = p_purchase(cadence, row(orders, age_days, 0.0))[0]
    assert p_purchase(cadence, row(orders + 1, age_days, 0.0))[0] >= now - 1e-12
    assert p_purchase(cadence, row(0, 0.0, 0.0))[0] == 0.0


def test_a_head_failing_the_behavioural_checks_is_not_chosen() -> None:
    judged = {
        "network": {"high_value_f1": 0.38, "max_ece_beyond_noise": 0.01, "gini": 0.8},
        "btyd": {"high_value_f1": 0.39, "max_ece_beyond_noise": 0.01, "gini": 0.8,
                 "behaviour_passed": False},
        "blend": {"high_value_f1": 0.37, "max_ece_beyond_noise": 0.01, "gini": 0.8},
    }  # fmt: skip
    assert pick(judged, 0.03) == "network"
