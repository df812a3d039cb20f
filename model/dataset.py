"""Training examples at cutoffs: features from events <= T, labels from (T, T + H].

Point-in-time correctness comes from walking time forward once: the fold sees
only events at or before each cutoff, through the same :func:`stream.fold.apply`
and :func:`model.features.vector` the worker uses, and the labels look only at
the window after it.
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
    first_ms: int, last_ms: int, *, horizon_ms: int, step_ms: int, warmup_ms: int = 30 * DAY_MS
) -> list[int]:
    """Cutoffs from ``first + warmup`` while a full horizon still fits before ``last``.

    The last cutoff is pinned at ``last - horizon`` so the validation window
    (the latest one) always has complete labels.
    """
    end = last_ms - horizon_ms
    start = first_ms + warmup_ms
    if end < start:
        return []
    cutoffs = list(range(end, start - 1, -step_ms))
    return sorted(cutoffs)


def sort_events(events: Iterable[Event]) -> list[Event]:
    # Stable sort: events with one timestamp keep their log order, as a
    # partition would deliver them.
    return sorted(events, key=lambda e: e.timestamp)


def build_examples(
    events: Sequence[Event],
    cutoffs: Sequence[int],
    *,
    horizon_ms: int,
    top_quantile: float = 0.2,
    classes: tuple[str, ...] = DEFAULT_SEGMENTS,
) -> Examples:
    """One example per (cutoff, user first seen at or before it). ``events`` sorted by time."""
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


def temporal_split(examples: Examples, horizon_ms: int) -> tuple[Examples, Examples]:
    """Validate on the latest cutoff; train on cutoffs whose labels end by then.

    Users are never split at random: the same user at an earlier cutoff is in
    training and at the latest cutoff in validation, which is how the model is
    used (trained on the past, asked about the present). A training cutoff T
    is kept only if T + horizon <= the validation cutoff, so no training label
    has seen anything the validation features could not.
    """
    if len(examples) == 0:
        raise ValueError("no training examples: the data is shorter than warm-up + horizon")
    last = int(examples.cutoffs.max())
    val = examples.cutoffs == last
    train = examples.cutoffs + horizon_ms <= last
    if not train.any():
        span_days = (last - int(examples.cutoffs.min())) / DAY_MS
        raise ValueError(
            f"no training cutoff ends its label window before the validation cutoff "
            f"(cutoffs span {span_days:.0f} days, horizon {horizon_ms / DAY_MS:.0f} days): "
            "give more history or a shorter --horizon"
        )
    return examples.subset(train), examples.subset(val)
