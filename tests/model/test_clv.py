"""The buy-till-you-die baseline: BG/NBD and Gamma-Gamma fits, and the segments made from them."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import hyp2f1
from scipy.stats import spearmanr

from model.features import FEATURE_NAMES, N_FEATURES, transform
from model.training.baselines import rfm_baseline
from model.training.clv import (
    BGNBD,
    FitError,
    GammaGamma,
    clv_baseline,
    fit_bgnbd,
    fit_gamma_gamma,
)
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
HOLDOUT_WEEKS = 52.0
# a < 1 (as fitted on CDNOW) and a > 1: eq. 10 must hold on both sides of its 0/0 at a = 1.
PARAMS = [(1.0, 8.0, 0.8, 3.0), (2.0, 12.0, 1.5, 4.0)]


def simulate_bgnbd(
    n: int, params: tuple[float, float, float, float], seed: int, holdout: float = HOLDOUT_WEEKS
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, t_x, T, holdout purchases) for ``n`` customers drawn from the BG/NBD story.

    Each customer buys at Poisson rate lambda ~ Gamma(r, 1/alpha) from their
    first purchase at time 0, and after each repeat purchase dies with
    probability p ~ Beta(a, b): the number of repeats before dying is geometric.
    """
    r, alpha, a, b = params
    rng = np.random.default_rng(seed)
    T = rng.uniform(26.0, 78.0, n)
    lam = rng.gamma(r, 1.0 / alpha, n)
    p = rng.beta(a, b, n)
    x, t_x, later = np.zeros(n), np.zeros(n), np.zeros(n)
    for i in range(n):
        repeats = min(int(rng.geometric(p[i])), 10_000)
        times = np.cumsum(rng.exponential(1.0 / lam[i], repeats))
        calibration = times[times <= T[i]]
        x[i] = len(calibration)
        t_x[i] = calibration[-1] if len(calibration) else 0.0
        later[i] = np.count_nonzero((times > T[i]) & (times <= T[i] + holdout))
    return x, t_x, T, later


@pytest.fixture(scope="module", params=PARAMS, ids=["a<1", "a>1"])
def simulated(
    request: pytest.FixtureRequest,
) -> tuple[tuple[float, float, float, float], tuple[np.ndarray, ...], BGNBD]:
    data = simulate_bgnbd(3000, request.param, seed=7)
    return request.param, data, fit_bgnbd(*data[:3])


def test_bgnbd_fit_recovers_simulated_params(
    simulated: tuple[tuple[float, float, float, float], tuple[np.ndarray, ...], BGNBD],
) -> None:
    true, _, fitted = simulated
    got = np.array([fitted.r, fitted.alpha, fitted.a, fitted.b])
    relative = np.abs(got / np.array(true) - 1.0)
    # Over 10 seeds r and alpha stayed within 12%, a and b within 23% (a/b is weakly identified).
    assert relative[:2].max() < 0.2, (true, got)
    assert relative[2:].max() < 0.35, (true, got)


def test_bgnbd_expected_purchases_track_the_holdout(
    simulated: tuple[tuple[float, float, float, float], tuple[np.ndarray, ...], BGNBD],
) -> None:
    true, (x, t_x, T, later), fitted = simulated
    expected = fitted.expected_purchases(HOLDOUT_WEEKS, x, t_x, T)
    assert expected.sum() == pytest.approx(later.sum(), rel=0.15)
    rho = spearmanr(expected, later).statistic
    assert rho > 0.5
    # Poisson noise caps any ranking; the fitted model must rank as well as the true one.
    oracle = spearmanr(BGNBD(*true).expected_purchases(HOLDOUT_WEEKS, x, t_x, T), later).statistic
    assert rho > oracle - 0.02


def _eq10_direct(m: BGNBD, t: float, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """eq. 10 exactly as printed in Fader, Hardie & Lee (2005), without Euler's transformation."""
    r, alpha, a, b = m.r, m.alpha, m.a, m.b
    z = t / (alpha + T + t)
    hyp = hyp2f1(r + x, b + x, a + b + x - 1, z)
    head = (a + b + x - 1) / (a - 1) * (1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp)
    odds = np.where(x > 0, a / (b + x - 1) * ((alpha + T) / (alpha + t_x)) ** (r + x), 0.0)
    return np.asarray(head / (1 + odds))


@pytest.mark.parametrize("params", [*PARAMS, (0.243, 4.414, 0.793, 2.426)])
def test_expected_purchases_match_eq10_as_printed(params: tuple[float, ...]) -> None:
    x, t_x, T, _ = simulate_bgnbd(300, PARAMS[0], seed=1)
    m = BGNBD(*params)
    np.testing.assert_allclose(
        m.expected_purchases(39.0, x, t_x, T), _eq10_direct(m, 39.0, x, t_x, T), rtol=1e-9
    )


@pytest.mark.parametrize(
    "a, b", [(1.0, 3.0), (0.5, 0.5), (0.25, 0.75)], ids=["a=1", "a+b=1", "a+b=1'"]
)
def test_expected_purchases_are_continuous_through_removable_singularities(
    a: float, b: float
) -> None:
    # a = 1 zeroes (a - 1); a + b = 1 puts the 2F1 pole c = 0 at x = 0 (hypothesis found this one).
    x, t_x, T = np.array([0.0, 1.0, 5.0]), np.array([0.0, 10.0, 40.0]), np.array([30.0, 30.0, 50.0])
    at = BGNBD(1.0, 8.0, a, b).expected_purchases(13.0, x, t_x, T)
    below = BGNBD(1.0, 8.0, a - 1e-3, b).expected_purchases(13.0, x, t_x, T)
    above = BGNBD(1.0, 8.0, a + 1e-3, b).expected_purchases(13.0, x, t_x, T)
    assert np.all(np.isfinite(at))
    np.testing.assert_allclose(at, (below + above) / 2, rtol=1e-4)


@settings(max_examples=200, deadline=None)
@given(
    r=st.floats(0.05, 10.0),
    alpha=st.floats(0.1, 50.0),
    a=st.floats(0.05, 10.0),
    b=st.floats(0.05, 20.0),
    x=st.integers(0, 60),
    T=st.floats(0.5, 200.0),
    fractions=st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0)),
    horizon=st.floats(0.5, 104.0),
)
def test_a_more_recent_last_purchase_never_lowers_expected_purchases(
    r: float,
    alpha: float,
    a: float,
    b: float,
    x: int,
    T: float,
    fractions: tuple[float, float],
    horizon: float,
) -> None:
    m = BGNBD(r, alpha, a, b)
    older, recent = sorted(fractions)
    t_x = np.array([older, recent]) * T if x > 0 else np.zeros(2)
    ey = m.expected_purchases(horizon, np.full(2, float(x)), t_x, np.full(2, T))
    assert np.all(np.isfinite(ey)) and np.all(ey >= 0)
    assert ey[1] >= ey[0] * (1 - 1e-9)
    # And a longer horizon never expects fewer purchases.
    longer = m.expected_purchases(2 * horizon, np.full(2, float(x)), t_x, np.full(2, T))
    assert np.all(longer >= ey * (1 - 1e-9))


def test_bgnbd_refuses_data_without_repeat_buyers() -> None:
    with pytest.raises(FitError):
        fit_bgnbd(np.zeros(100), np.zeros(100), np.full(100, 20.0))
    with pytest.raises(ValueError):
        fit_bgnbd(np.ones(20), np.full(20, 30.0), np.full(20, 20.0))  # t_x beyond T


def simulate_gamma_gamma(n: int, p: float, q: float, v: float, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    frequency = rng.integers(1, 10, n).astype(np.float64)
    nu = rng.gamma(q, 1.0 / v, n)
    monetary = np.array([rng.gamma(p, 1.0 / nu[i], int(f)).mean() for i, f in enumerate(frequency)])
    return frequency, monetary


def test_gamma_gamma_fit_recovers_the_population_mean() -> None:
    frequency, monetary = simulate_gamma_gamma(3000, p=6.0, q=4.0, v=15.0, seed=3)
    gg = fit_gamma_gamma(frequency, monetary)
    assert gg.mean == pytest.approx(6.0 * 15.0 / 3.0, rel=0.05)
    assert gg.p == pytest.approx(6.0, rel=0.25)
    assert gg.q == pytest.approx(4.0, rel=0.25)


def test_gamma_gamma_ignores_non_buyers_and_refuses_too_few() -> None:
    frequency, monetary = simulate_gamma_gamma(500, p=6.0, q=4.0, v=15.0, seed=4)
    with_zeros = fit_gamma_gamma(np.r_[frequency, np.zeros(50)], np.r_[monetary, np.zeros(50)])
    assert with_zeros == fit_gamma_gamma(frequency, monetary)
    with pytest.raises(FitError):
        fit_gamma_gamma(np.zeros(50), np.full(50, 10.0))


def test_gamma_gamma_expected_value_rises_with_observed_spend() -> None:
    gg = GammaGamma(p=6.0, q=4.0, v=15.0)
    monetary = np.linspace(1.0, 500.0, 50)
    for f in (1.0, 3.0, 20.0):
        assert np.all(np.diff(gg.expected_value(np.full(50, f), monetary)) > 0)


def test_gamma_gamma_shrinks_one_order_toward_the_population_mean() -> None:
    gg = GammaGamma(p=6.0, q=4.0, v=15.0)
    monetary = np.array([5.0, 300.0])
    one = gg.expected_value(np.ones(2), monetary)
    many = gg.expected_value(np.full(2, 50.0), monetary)
    # Strictly between the customer's own mean and the population mean (30)...
    assert np.all((one - gg.mean) * (monetary - gg.mean) > 0)
    assert np.all(np.abs(one - gg.mean) < np.abs(monetary - gg.mean))
    # ...and more orders mean less shrinkage.
    assert np.all(np.abs(many - monetary) < np.abs(one - monetary))
    assert gg.expected_value(np.zeros(1), np.zeros(1))[0] == pytest.approx(gg.mean)


def _examples(
    columns: dict[str, np.ndarray], labels: list[str], classes: tuple[str, ...]
) -> Examples:
    """Examples from raw (un-logged) feature columns; unnamed features are 0."""
    n = len(labels)
    raw = np.zeros((n, N_FEATURES))
    for name, values in columns.items():
        raw[:, FEATURE_NAMES.index(name)] = values
    return Examples(
        x=transform(raw),
        y=np.array([classes.index(label) for label in labels], dtype=np.int64),
        users=[f"u{i}" for i in range(n)],
        cutoffs=np.zeros(n, dtype=np.int64),
        classes=classes,
        label_names=labels,
    )


def _orders_only_rows(n: int, seed: int) -> dict[str, np.ndarray]:
    """Feature columns of BG/NBD customers, in days (orders-only: last activity = last order)."""
    x, t_x, T, _ = simulate_bgnbd(n, PARAMS[0], seed=seed)
    since = (T - t_x) * 7.0
    aov = np.random.default_rng(seed).gamma(5.0, 20.0, n)
    return {
        "order_count": x + 1,
        "tenure_days": T * 7.0,
        # Orders-only: the first activity is the first order.
        "days_since_first_order": T * 7.0,
        "days_since_last_order": since,
        "days_since_last_activity": since,
        "avg_order_value": aov,
        "total_spend": aov * (x + 1),
    }


def _with_archetypes(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Append a heavy recent repeat buyer (row -2) and a lapsed single buyer (row -1)."""
    names = (
        "order_count",
        "tenure_days",
        "days_since_first_order",
        "days_since_last_order",
        "days_since_last_activity",
    )
    heavy = dict(
        zip(names, (40, 300, 300, 2, 2), strict=True), avg_order_value=400, total_spend=16e3
    )
    lapsed = dict(
        zip(names, (1, 400, 400, 400, 400), strict=True), avg_order_value=60, total_spend=60
    )
    return {k: np.r_[v, heavy[k], lapsed[k]] for k, v in rows.items()}


def _labels(n: int, hv: float, regular: float, rest: tuple[str, ...]) -> list[str]:
    n_hv, n_regular = round(hv * n), round(regular * n)
    tail = [rest[i % len(rest)] for i in range(n - n_hv - n_regular)]
    return ["high_value"] * n_hv + ["regular"] * n_regular + tail


@pytest.mark.parametrize(
    "classes",
    [("high_value", "regular", "potential", "at_risk"), ("high_value", "regular", "at_risk")],
)
def test_clv_puts_archetypes_where_the_labels_would(classes: tuple[str, ...]) -> None:
    train_rows = _orders_only_rows(400, seed=11)
    train = _examples(train_rows, _labels(400, 0.1, 0.3, ("at_risk",)), classes)
    val_rows = _with_archetypes(_orders_only_rows(300, seed=12))
    n = len(val_rows["order_count"])
    val = _examples(val_rows, ["at_risk"] * n, classes)
    pred = clv_baseline(train, val, horizon_ms=HORIZON_MS)
    assert pred.shape == (n,) and np.issubdtype(pred.dtype, np.integer)
    assert set(pred.tolist()) <= set(range(len(classes)))
    assert classes[pred[-2]] == "high_value"
    assert classes[pred[-1]] == "at_risk"
    # How many of each comes from the training label shares, not from an oracle.
    assert np.count_nonzero(pred == classes.index("high_value")) == round(0.1 * n)
    assert np.count_nonzero(pred == classes.index("regular")) == round(0.3 * n)


def test_clv_calls_recent_non_buyers_potential_when_training_says_so() -> None:
    classes = ("high_value", "regular", "potential", "at_risk")
    train_rows = _orders_only_rows(400, seed=13)
    labels = _labels(400, 0.1, 0.2, ("potential", "at_risk"))
    # In training, the potential rows were active within a week and the at_risk ones long ago.
    recency = np.array([3.0 if lab == "potential" else 200.0 for lab in labels])
    train_rows["days_since_last_activity"] = recency
    train = _examples(train_rows, labels, classes)
    val_rows = _with_archetypes(_orders_only_rows(300, seed=14))
    n = len(val_rows["order_count"])
    val_rows["days_since_last_activity"][:] = 200.0
    val_rows["days_since_last_activity"][:20] = 1.0  # browsing recently
    pred = clv_baseline(train, _examples(val_rows, ["at_risk"] * n, classes), horizon_ms=HORIZON_MS)
    buyers = pred <= classes.index("regular")
    assert np.all(pred[:20][~buyers[:20]] == classes.index("potential"))
    assert np.all(pred[20:][~buyers[20:]] == classes.index("at_risk"))


def test_clv_falls_back_to_recent_spend_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    classes = ("high_value", "regular", "at_risk")
    n = 60
    rows = {
        "order_count": np.ones(n),
        "tenure_days": np.full(n, 100.0),
        "days_since_last_order": np.full(n, 50.0),
        "spend_90d": np.arange(n, dtype=np.float64),
        "orders_90d": np.ones(n),
    }
    train = _examples(rows, _labels(n, 0.1, 0.2, ("at_risk",)), classes)
    val = _examples(rows, ["at_risk"] * n, classes)
    with caplog.at_level(logging.WARNING, logger="model.training.clv"):
        pred = clv_baseline(train, val, horizon_ms=HORIZON_MS)
    assert "spend_90d" in caplog.text
    # No repeat buyers to fit: the highest 90-day spenders are the high_value ones.
    assert pred[-round(0.1 * n) :].tolist() == [0] * round(0.1 * n)


def test_clv_on_empty_inputs_returns_valid_indices() -> None:
    classes = ("high_value", "regular", "at_risk")
    rows = _with_archetypes(_orders_only_rows(200, seed=15))
    empty = _examples({k: v[:0] for k, v in rows.items()}, [], classes)
    n = len(rows["order_count"])
    val = _examples(rows, ["at_risk"] * n, classes)
    assert clv_baseline(empty, empty, horizon_ms=HORIZON_MS).shape == (0,)
    # Without training labels the model's own expectations pick the buyers.
    pred = clv_baseline(empty, val, horizon_ms=HORIZON_MS)
    assert set(pred.tolist()) <= {0, 1, 2}
    assert pred[-2] == 0 and pred[-1] == 2


def test_clv_beats_chance_on_generated_data() -> None:
    decoded = decode_records(
        encode_generated(generate(GeneratorConfig(users=250, days=300, seed=3)))
    )
    events = sort_events(decoded.events)
    cutoffs = default_cutoffs(
        events[0].timestamp, events[-1].timestamp, horizon_ms=HORIZON_MS, step_ms=14 * DAY_MS
    )
    train, val = temporal_split(build_examples(events, cutoffs, horizon_ms=HORIZON_MS), HORIZON_MS)
    pred = clv_baseline(train, val, horizon_ms=HORIZON_MS)
    report = classification_report(val.y, pred, val.classes)
    assert report["macro_f1"] > 0.25
    # Measured 0.665 vs 0.620 on this seed; a broken fit drops far below the rule.
    rfm = classification_report(val.y, rfm_baseline(train, val), val.classes)
    assert report["macro_f1"] > rfm["macro_f1"] - 0.05
