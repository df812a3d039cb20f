"""Training examples at cutoffs: features from events <= T, labels from (T, T + H].

Point-in-time correctness comes from walking time forward once: the fold sees
only events at or before each cutoff, through the same :func:`stream.fold.apply`
and :func:`model.features.vector` the worker uses, and the labels look only at
the window after it.

Three disjoint, time-ordered row sets come out of one example table (see
:func:`temporal_split` and :func:`early_stopping_split`)::

    fit rows          early-stopping rows        validation rows (reported, gated)
    c < E             E = latest c with c + H <= V    V = the latest cutoff

Every fit and early-stopping label window closes by V, so neither the weights
nor the choice of epoch have seen anything the validation features could not,
and no validation row is ever shown to the fit.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from model.features import N_FEATURES, vector
from model.labels import label_users, window_activity
from model.segments import DEFAULT_SEGMENTS
from stream.events import Event
from stream.fold import DAY_MS, UserState, apply


@dataclass
class Examples:
    x: np.ndarray
    y: np.ndarray  # class indices into ``classes``
    users: list[str]
    cutoffs: np.ndarray  # the cutoff (ms) each row was made at
    classes: tuple[str, ...] = DEFAULT_SEGMENTS
    label_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.users)

    def subset(self, mask: np.ndarray) -> Examples:
        idx = np.flatnonzero(mask)
        return Examples(
            x=self.x[idx],
            y=self.y[idx],
            users=[self.users[i] for i in idx],
            cutoffs=self.cutoffs[idx],
            classes=self.classes,
            label_names=[self.label_names[i] for i in idx],
        )


def default_cutoffs(
    first_ms: int,
    last_ms: int,
    *,
    horizon_ms: int,
    step_ms: int,
    warmup_ms: int = 30 * DAY_MS,
    since_ms: int | None = None,
) -> list[int]:
    """Cutoffs from ``first + warmup`` while a full horizon still fits before ``last``.

    The last cutoff is pinned at ``last - horizon`` so the validation window
    (the latest one) always has complete labels. ``since_ms`` drops cutoffs
    before it: it bounds which *examples* are made, not which events are
    folded, so a user's features at a cutoff still count their older history
    (as the worker's state does). Cutoffs are laid out backwards from the end,
    so the ones kept are exactly those an unbounded call would give there.
    """
    end = last_ms - horizon_ms
    start = first_ms + warmup_ms
    if since_ms is not None:
        start = max(start, since_ms)
    if end < start:
        return []
    cutoffs = list(range(end, start - 1, -step_ms))
    return sorted(cutoffs)


def drop_duplicate_events(events: Iterable[Event]) -> list[Event]:
    """Keep the first occurrence of each ``(user_id, event_id)``, in the given order.

    The worker skips a redelivered event_id of a user (``stream/pipeline.py``:
    per-partition offsets plus the user's last ``dedup_window`` event ids of each input topic), so
    a duplicate never reaches its fold; training must not fold it either, or
    offline features (and labels: a redelivered order is not a second
    purchase) would differ from what the worker holds. Offline the rule is
    exact rather than bounded: the two agree for every redelivery the worker
    can recognise, which is what at-least-once delivery produces.
    """
    seen: set[tuple[str, str]] = set()
    kept: list[Event] = []
    for event in events:
        key = (event.user_id, event.event_id)
        if key in seen:
            continue
        seen.add(key)
        kept.append(event)
    return kept


def sort_events(events: Iterable[Event]) -> list[Event]:
    """Events deduplicated in arrival order, then stably sorted by event time."""
    # Dedup before sorting: when two copies differ, the worker keeps the one
    # that arrived first, and arrival order is only known here. Stable sort:
    # events with one timestamp keep their log order, as a partition would
    # deliver them.
    return sorted(drop_duplicate_events(events), key=lambda e: e.timestamp)


def build_examples(
    events: Sequence[Event],
    cutoffs: Sequence[int],
    *,
    horizon_ms: int,
    top_quantile: float = 0.2,
    classes: tuple[str, ...] = DEFAULT_SEGMENTS,
) -> Examples:
    """One example per (cutoff, user first seen at or before it). ``events`` sorted by time.

    Duplicate event ids are dropped here too (a no-op after :func:`sort_events`),
    so no caller can fold a redelivered event the worker would have skipped.
    """
    events = drop_duplicate_events(events)
    times = [e.timestamp for e in events]
    index = {c: i for i, c in enumerate(classes)}
    states: dict[str, UserState] = {}
    rows: list[np.ndarray] = []
    ys: list[int] = []
    users: list[str] = []
    at: list[int] = []
    names: list[str] = []
    i = 0
    for cutoff in sorted(cutoffs):
        while i < len(events) and events[i].timestamp <= cutoff:
            event = events[i]
            state = states.get(event.user_id)
            if state is None:
                state = states[event.user_id] = UserState()
            apply(state, event)
            i += 1
        lo = bisect.bisect_right(times, cutoff)
        hi = bisect.bisect_right(times, cutoff + horizon_ms)
        activity = window_activity(events[lo:hi])
        labels = label_users(states.keys(), activity, top_quantile=top_quantile)
        for user, state in states.items():
            label = labels[user]
            if label not in index:
                continue  # a model trained without this class cannot learn it
            rows.append(vector(state, cutoff))
            ys.append(index[label])
            users.append(user)
            at.append(cutoff)
            names.append(label)
    x = np.stack(rows) if rows else np.zeros((0, N_FEATURES))
    return Examples(
        x=x,
        y=np.asarray(ys, dtype=np.int64),
        users=users,
        cutoffs=np.asarray(at, dtype=np.int64),
        classes=classes,
        label_names=names,
    )


def labels_closed_by(cutoffs: np.ndarray, boundary_ms: int, horizon_ms: int) -> np.ndarray:
    """Mask of cutoffs whose label window (c, c + H] has closed by ``boundary_ms``.

    The one gap rule between an earlier set of rows and a later one: a row
    whose label window ends by the later set's cutoff has seen nothing the
    later set's features could not.
    """
    return cutoffs + horizon_ms <= boundary_ms


def temporal_split(examples: Examples, horizon_ms: int) -> tuple[Examples, Examples]:
    """Validate on the latest cutoff; train on cutoffs whose labels end by then.

    Users are never split at random: the same user at an earlier cutoff is in
    training and at the latest cutoff in validation, which is how the model is
    used (trained on the past, asked about the present). A training cutoff T
    is kept only if T + horizon <= the validation cutoff, so no training label
    has seen anything the validation features could not.

    The training rows still include the early-stopping rows: pass them to
    :func:`early_stopping_split` before fitting.
    """
    if len(examples) == 0:
        raise ValueError("no training examples: the data is shorter than warm-up + horizon")
    last = int(examples.cutoffs.max())
    val = examples.cutoffs == last
    train = labels_closed_by(examples.cutoffs, last, horizon_ms)
    if not train.any():
        span_days = (last - int(examples.cutoffs.min())) / DAY_MS
        raise ValueError(
            f"no training cutoff ends its label window before the validation cutoff "
            f"(cutoffs span {span_days:.0f} days, horizon {horizon_ms / DAY_MS:.0f} days): "
            "give more history or a shorter --horizon"
        )
    return examples.subset(train), examples.subset(val)


def early_stopping_split(train: Examples) -> tuple[Examples, Examples]:
    """Carve the latest training cutoff off as the early-stopping set: ``(fit, stop)``.

    ``train`` is the training side of :func:`temporal_split`, so the
    early-stopping cutoff E already has its labels closed by the validation
    cutoff (E + H <= V) and no validation row is among either set.

    Early stopping picks the epoch by the loss on the rows it watches; were
    those the validation rows, the report and the gate would score a model
    chosen on them. So it watches E, the validation set's latest possible
    stand-in, and the fit gets every earlier cutoff.

    Why no label gap between fit and E (fit cutoffs c + H <= E) as well: it
    would leave only the earliest cutoffs, when users are new, to fit on. On
    generated data (300 users, 240 days, 60-day horizon, seeds 5-7) it cut
    validation macro-F1 from 0.79-0.83 to 0.58-0.63. Fit labels that run past
    E can only make the early-stopping loss optimistic (stopping a little
    late); they cannot reach the validation window, which is what is reported.
    """
    if len(train) == 0:
        raise ValueError("no training examples to carve an early-stopping set from")
    stop_cutoff = int(train.cutoffs.max())
    stop = train.cutoffs == stop_cutoff
    fit = train.cutoffs < stop_cutoff
    if not fit.any():
        raise ValueError(
            "only one training cutoff closes its labels before the validation cutoff, and "
            "early stopping needs it: give more history, a shorter --step or a shorter --horizon"
        )
    return train.subset(fit), train.subset(stop)
