"""Dataset rules: duplicate events, the cutoff window, and the three row sets."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.features import N_FEATURES, vector
from model.training.dataset import (
    Examples,
    build_examples,
    default_cutoffs,
    drop_duplicate_events,
    early_stopping_split,
    gate_cutoffs,
    labels_closed_by,
    sort_events,
    temporal_split,
)
from model.training.train import prepare_examples
from stream.core.events import Event
from stream.core.fold import fold_all
from tests.factories import DAY, T0, as_event, click, order

HORIZON_MS = 30 * DAY
CUTOFFS = [T0 + 40 * DAY, T0 + 70 * DAY]


@st.composite
def histories(draw: st.DrawFn) -> list[Event]:
    """A few users' events in arrival order (not sorted by time)."""
    out: list[Event] = []
    for _ in range(draw(st.integers(min_value=1, max_value=40))):
        user = draw(st.sampled_from(["u1", "u2", "u3"]))
        ts = T0 + draw(st.integers(min_value=0, max_value=100 * DAY))
        if draw(st.booleans()):
            total = float(draw(st.integers(min_value=1, max_value=900)))
            kind = draw(st.sampled_from(["order_placed", "order_placed", "order_refunded"]))
            out.append(as_event(order(user=user, ts=ts, total=total, kind=kind)))
        else:
            kind = draw(st.sampled_from(["page_view", "product_view", "add_to_cart"]))
            session = f"s{draw(st.integers(min_value=0, max_value=5))}"
            out.append(as_event(click(user=user, ts=ts, kind=kind, session_id=session)))
    return out


@st.composite
def with_redeliveries(draw: st.DrawFn) -> tuple[list[Event], list[Event]]:
    """(clean history, the same history with at-least-once redeliveries mixed in later)."""
    clean = draw(histories())
    delivered = list(clean)
    for _ in range(draw(st.integers(min_value=1, max_value=15))):
        original = draw(st.integers(min_value=0, max_value=len(clean) - 1))
        # A redelivery arrives after the original, anywhere later in the log.
        at = draw(
            st.integers(min_value=delivered.index(clean[original]) + 1, max_value=len(delivered))
        )
        delivered.insert(at, clean[original])
    return clean, delivered


def assert_same_examples(a: Examples, b: Examples) -> None:
    assert a.users == b.users
    np.testing.assert_array_equal(a.cutoffs, b.cutoffs)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)


#: Wider than any history drawn here: every re-sent click is within the window.
EVER = 10 * 365 * DAY


@settings(max_examples=200, deadline=None)
@given(with_redeliveries())
def test_re_sent_events_change_neither_features_nor_labels(
    histories_: tuple[list[Event], list[Event]],
) -> None:
    clean, delivered = histories_
    assert len(delivered) > len(clean)
    expected = build_examples(sort_events(clean), CUTOFFS, horizon_ms=HORIZON_MS)
    # Orders are recognised whatever the window; clicks within it.
    assert_same_examples(
        build_examples(sort_events(delivered, EVER), CUTOFFS, horizon_ms=HORIZON_MS), expected
    )
    for user in {e.user_id for e in clean}:
        mine = [e for e in sort_events(delivered, EVER) if e.user_id == user]
        assert len({e.event_id for e in mine}) == len(mine)


def test_the_first_copy_of_an_order_wins_and_only_within_one_user() -> None:
    first = as_event(order(user="u1", ts=T0, total=10.0, order_id="dup"))
    # Same order, different content: the worker keeps whichever it applied first.
    later = as_event(order(user="u1", ts=T0 - DAY, total=99.0, order_id="dup"))
    other_user = as_event(order(user="u2", ts=T0, total=5.0, order_id="dup"))
    refund = as_event(order(user="u1", ts=T0, total=10.0, order_id="dup", kind="order_refunded"))
    assert drop_duplicate_events([first, later, other_user, refund]) == [first, other_user, refund]
    assert sort_events([first, later, other_user]) == [first, other_user]
    assert sort_events([later, first]) == [later]


def test_a_click_re_sent_beyond_the_window_is_counted_again() -> None:
    early = as_event(click(user="u1", ts=T0, event_id="c1"))
    newer = as_event(click(user="u1", ts=T0 + 2 * DAY))
    again = as_event(click(user="u1", ts=T0, event_id="c1"))
    # Within the window the re-send is dropped; two days on (window 24 h) it
    # cannot be told from a new click: the documented limit of the window.
    assert drop_duplicate_events([early, again, newer]) == [early, newer]
    assert drop_duplicate_events([early, newer, again]) == [early, newer, again]
    assert drop_duplicate_events([early, newer, again], EVER) == [early, newer]


def test_cutoff_window_bounds_examples_not_the_history_folded_into_them() -> None:
    # An old customer: five orders long before the window, one click inside it.
    old = [as_event(order(user="old", ts=T0 + d * DAY, total=200.0)) for d in range(0, 50, 10)]
    old.append(as_event(click(user="old", ts=T0 + 300 * DAY)))
    others = [
        as_event(click(user=f"n{i}", ts=T0 + d * DAY))
        for i in range(5)
        for d in range(200 + i, 420, 15)
    ]
    events = sort_events(old + others)
    since = T0 + 250 * DAY
    prepared = prepare_examples(
        events, horizon_ms=HORIZON_MS, step_ms=7 * DAY, cutoffs_since_ms=since
    )
    ex = prepared.examples
    assert ex.cutoffs.min() >= since
    # The kept cutoffs are exactly the unbounded call's cutoffs in the window,
    # and the gate's earlier closed cutoffs, whose rows are backtest rows only.
    unbounded = default_cutoffs(
        events[0].timestamp, events[-1].timestamp, horizon_ms=HORIZON_MS, step_ms=7 * DAY
    )
    backtest = gate_cutoffs(unbounded[-1], HORIZON_MS)[:-1]
    cutoffs = sorted(set(ex.cutoffs.tolist()))
    assert cutoffs == sorted({c for c in unbounded if c >= since} | set(backtest))
    assert sorted(set(prepared.backtest.cutoffs.tolist())) == backtest
    training = set(prepared.train.cutoffs.tolist()) | set(prepared.val.cutoffs.tolist())
    assert not training & set(backtest)
    # Every row equals the full offline fold at its cutoff...
    assert_same_examples(ex, build_examples(events, cutoffs, horizon_ms=HORIZON_MS))
    # ...and for the old customer that is the fold of their whole history,
    # which a fold of the window alone would not give (orders, spend, tenure).
    rows = [i for i, u in enumerate(ex.users) if u == "old"]
    assert rows
    for i in rows:
        c = int(ex.cutoffs[i])
        full = vector(fold_all([e for e in old if e.timestamp <= c]), c)
        np.testing.assert_array_equal(ex.x[i], full)
        recent = [e for e in old if since <= e.timestamp <= c]
        if recent:
            assert not np.array_equal(ex.x[i], vector(fold_all(recent), c))


def examples_at(cutoffs: list[int], users: int = 3) -> Examples:
    at = np.repeat(np.asarray(cutoffs, dtype=np.int64), users)
    return Examples(
        x=np.zeros((len(at), N_FEATURES)),
        y=np.zeros(len(at), dtype=np.int64),
        users=[f"u{i % users}" for i in range(len(at))],
        cutoffs=at,
        label_names=["at_risk"] * len(at),
    )


def test_fit_early_stopping_and_validation_are_disjoint_and_in_time_order() -> None:
    step, horizon = 7 * DAY, 30 * DAY
    ex = examples_at([T0 + k * step for k in range(12)])
    train, val = temporal_split(ex, horizon)
    fit, stop = early_stopping_split(train)
    v = int(val.cutoffs.min())
    assert set(val.cutoffs.tolist()) == {int(ex.cutoffs.max())}
    # Early stopping watches the latest cutoff whose labels closed by validation...
    e = int(stop.cutoffs.min())
    assert set(stop.cutoffs.tolist()) == {e}
    assert e + horizon <= v
    assert e == max(c for c in ex.cutoffs.tolist() if c + horizon <= v)
    # ...and the fit every earlier one: nothing at or after E, nothing of validation.
    assert fit.cutoffs.max() < e and (fit.cutoffs + horizon <= v).all()
    assert len(fit) + len(stop) == len(train)
    rows = {(u, int(c)) for u, c in zip(ex.users, ex.cutoffs, strict=True)}
    split = [
        {(u, int(c)) for u, c in zip(s.users, s.cutoffs, strict=True)} for s in (fit, stop, val)
    ]
    assert not split[0] & split[1] and not split[0] & split[2] and not split[1] & split[2]
    assert split[0] | split[1] | split[2] <= rows


def test_one_training_cutoff_is_not_enough_for_early_stopping() -> None:
    horizon = 30 * DAY
    train, _ = temporal_split(examples_at([T0, T0 + 10 * DAY, T0 + 31 * DAY]), horizon)
    assert set(train.cutoffs.tolist()) == {T0}
    with pytest.raises(ValueError, match="early stopping"):
        early_stopping_split(train)


@given(
    v=st.integers(400 * DAY, 2000 * DAY),
    horizon_days=st.integers(1, 400),
    n=st.integers(1, 6),
)
def test_gate_cutoffs_are_closed_and_never_training_cutoffs(
    v: int, horizon_days: int, n: int
) -> None:
    horizon = horizon_days * DAY
    at = gate_cutoffs(v, horizon, n)
    assert at[-1] == v and at == sorted(set(at))
    assert len(at) == n or horizon_days < n
    # Each one's label window closes by V + H (the data's end), and none is a
    # training cutoff (those need c + H <= V).
    assert all(c <= v for c in at)
    assert not labels_closed_by(np.asarray(at), v, horizon).any()
