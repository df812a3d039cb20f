"""The buy-till-you-die inputs (model/cadence.py): they move the way their meaning says."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from model.cadence import Cadence, extend
from model.features import vector
from model.training.behaviour.archetypes import NOW_MS, _orders
from stream.core.fold import DAY_MS, fold_all

params = st.builds(
    Cadence,
    r=st.floats(0.05, 5),
    alpha=st.floats(0.1, 50),
    a=st.floats(0.05, 5),
    b=st.floats(0.05, 10),
    horizon_days=st.just(90.0),
    p=st.none() | st.floats(0.5, 20),
    q=st.none() | st.floats(1.2, 20),
    v=st.none() | st.floats(1, 200),
)


def _row(days_ago: list[float], total: float, scored_after: float = 0.0) -> np.ndarray:
    state = fold_all(_orders("u", days_ago, total))
    return vector(state, NOW_MS + int(scored_after * DAY_MS))[None, :]


@settings(max_examples=60, deadline=None)
@given(
    cadence=params,
    n=st.integers(1, 30),
    span=st.floats(0, 300),
    silence=st.floats(0, 400),
    later=st.floats(1, 300),
)
def test_p_alive_and_purchases_fall_with_silence_and_rise_with_an_order_now(
    cadence: Cadence, n: int, span: float, silence: float, later: float
) -> None:
    history = [silence + span * i / max(n - 1, 1) for i in range(n)]
    now = cadence.quantities(_row(history, 50.0))
    aged = cadence.quantities(_row(history, 50.0, later))
    ordered = cadence.quantities(_row([*history, 0.0], 50.0))
    for k in (0, 1):  # P(alive), expected purchases
        assert aged[k][0] <= now[k][0] + 1e-12
        assert ordered[k][0] >= now[k][0] - 1e-12


def test_a_frequent_buyer_gone_quiet_is_less_alive_than_a_rare_one_after_the_same_silence() -> None:
    """The point of the cadence inputs: 100 days of silence after weekly buying is
    not the 100 days of silence after buying twice a year."""
    cadence = Cadence(r=0.243, alpha=4.414, a=0.793, b=2.426, horizon_days=90.0)
    frequent = cadence.quantities(_row([100 + 6 * i for i in range(6)], 120.0))[0][0]
    rare = cadence.quantities(_row([100, 280], 120.0))[0][0]
    assert frequent < rare


def test_customers_who_never_ordered_get_zeros_and_the_row_is_only_extended() -> None:
    cadence = Cadence(r=1.0, alpha=5.0, a=1.0, b=2.0, horizon_days=90.0)
    x = np.zeros((3, _row([5.0], 10.0).shape[1]))
    assert all((q == 0).all() for q in cadence.quantities(x))
    assert extend(x, None) is x
    assert extend(x, cadence).shape == (3, x.shape[1] + 3)


def test_cadence_survives_the_weights_file_round_trip_with_no_gamma_gamma() -> None:
    c = Cadence(r=1.0, alpha=5.0, a=1.0, b=2.0, horizon_days=90.0)
    stored = {k: (np.nan if v is None else v) for k, v in c.to_dict().items()}
    assert Cadence.from_dict(stored) == c
