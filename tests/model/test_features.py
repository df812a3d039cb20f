from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from model.features import (
    FEATURE_NAMES,
    N_FEATURES,
    SCHEMA_HASH,
    raw_features,
    raw_row,
    stack_rows,
    vector,
)
from stream.core.fold import fold_all
from tests.factories import DAY, T0, as_event, click, order
from tests.stream.test_fold import user_events


@given(user_events(), st.integers(min_value=0, max_value=400 * DAY))
def test_vector_is_finite_and_the_right_length(events, later: int) -> None:  # type: ignore[no-untyped-def]
    s = fold_all(events)
    x = vector(s, s.last_seen + later)
    assert x.shape == (N_FEATURES,)
    assert np.all(np.isfinite(x))


@given(user_events(), st.integers(min_value=1, max_value=400 * DAY))
def test_recency_grows_and_windows_shrink_as_stream_time_passes(events, later: int) -> None:  # type: ignore[no-untyped-def]
    s = fold_all(events)
    now, after = raw_features(s, s.last_seen), raw_features(s, s.last_seen + later)
    assert after["days_since_last_activity"] > now["days_since_last_activity"]
    assert after["orders_30d"] <= now["orders_30d"]
    assert after["spend_90d"] <= now["spend_90d"]
    # lifetime totals do not depend on when you look
    assert after["order_count"] == now["order_count"]


def test_features_are_taken_as_of_stream_time_not_the_wall_clock() -> None:
    s = fold_all([as_event(order(ts=T0, total=50.0))])
    f = raw_features(s, T0 + 10 * DAY)
    assert f["days_since_last_activity"] == 10.0
    assert f["days_since_last_order"] == 10.0


def test_orders_only_user_has_zero_click_features() -> None:
    s = fold_all([as_event(order(ts=T0 + i * DAY, total=30.0)) for i in range(3)])
    f = raw_features(s, T0 + 3 * DAY)
    assert f["product_views_30d"] == 0 and f["cart_adds_30d"] == 0 and f["session_count"] == 0
    assert f["cart_to_order"] == 1.0  # orders without carts convert by definition
    assert f["avg_order_value"] == 30.0


def test_clicks_only_user_has_zero_order_features() -> None:
    s = fold_all([as_event(click(ts=T0 + i * DAY)) for i in range(3)])
    f = raw_features(s, T0 + 3 * DAY)
    assert f["order_count"] == 0 and f["total_spend"] == 0 and f["has_ordered"] == 0
    assert f["days_since_last_order"] > f["tenure_days"]


def test_schema_hash_names_the_feature_set() -> None:
    assert len(FEATURE_NAMES) == N_FEATURES == len(set(FEATURE_NAMES))
    assert len(SCHEMA_HASH) == 16


@given(st.lists(st.tuples(user_events(), st.integers(0, 400 * DAY)), max_size=5))
def test_stacked_rows_are_the_rows_as_they_are(users) -> None:  # type: ignore[no-untyped-def]
    rows = [raw_row(fold_all(events), T0 + later) for events, later in users]
    stacked = stack_rows(rows)
    assert stacked.shape == (len(rows), N_FEATURES)
    assert np.array_equal(stacked, np.asarray(rows, dtype=np.float64).reshape(-1, N_FEATURES))
