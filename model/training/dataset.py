"""Training examples at cutoffs: features from events <= T, labels from (T, T + H].

Point-in-time correctness comes from walking time forward once: the fold sees
only events at or before each cutoff, through the same :func:`stream.core.fold.apply`
and :func:`model.features.vector` the worker uses, and the labels look only at
the window after it.

Three disjoint, time-ordered row sets come out of one example table (see
:func:`temporal_split` and :func:`early_stopping_split`)::

    fit rows          early-stopping rows        validation rows (reported, gated)
    c < E             E = latest c with c + H <= V    V = the latest cutoff

Every fit and early-stopping label window closes by V, so neither the weights
nor the choice of epoch have seen anything the validation features could not,
and no validation row is ever shown to the fit.

Backtest rows (:func:`gate_cutoffs`) are users at earlier closed cutoffs
between E and V, a third of a horizon apart: their label windows end by the
data's end but not by V, so no fit or early-stopping row is among them. The
gate scores the candidate and the incumbents there as well as at V, so one
cutoff's luck does not decide a promotion.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from model.features import N_FEATURES, vector
from model.labels import high_value_line, label_users, window_activity
from model.segments import DEFAULT_SEGMENTS
from stream.core.dedup import DEFAULT_CLICK_WINDOW_MS, DEFAULT_ORDER_MEMORY_MS, admitted
from stream.core.events import Folded
from stream.core.fold import DAY_MS, UserState, apply


@dataclass
class Examples:
    x: np.ndarray
    y: np.ndarray  # class indices into ``classes``
    users: list[str]
    cutoffs: np.ndarray  # the cutoff (ms) each row was made at
    classes: tuple[str, ...] = DEFAULT_SEGMENTS
    label_names: list[str] = field(default_factory=list)
    #: net spend in the row's label window (>= 0): what the value head predicts
    spend: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: the high_value line of the row's cutoff (top-quantile of that window's buyers)
    thresholds: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: days from the cutoff to the row's first order in the window (NaN: none)
    next_order_days: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        # Rows built without window outcomes (tests, hand-made tables) get
        # "unknown": no spend, no line, no next order.
        n = len(self.users)
        if len(self.spend) != n:
            self.spend = np.zeros(n)
        if len(self.thresholds) != n:
            self.thresholds = np.zeros(n)
        if len(self.next_order_days) != n:
            self.next_order_days = np.full(n, np.nan)

    def __len__(self) -> int:
        return len(self.users)

    @classmethod
    def concat(cls, parts: Sequence[Examples]) -> Examples:
        """Rows of several example tables (e.g. one per population), in order."""
        if not parts:
            raise ValueError("nothing to concatenate")
        return cls(
            x=np.concatenate([p.x for p in parts]),
            y=np.concatenate([p.y for p in parts]),
            users=[u for p in parts for u in p.users],
            cutoffs=np.concatenate([p.cutoffs for p in parts]),
            classes=parts[0].classes,
            label_names=[n for p in parts for n in p.label_names],
            spend=np.concatenate([p.spend for p in parts]),
            thresholds=np.concatenate([p.thresholds for p in parts]),
            next_order_days=np.concatenate([p.next_order_days for p in parts]),
        )

    def subset(self, mask: np.ndarray) -> Examples:
        idx = np.flatnonzero(mask)
        return Examples(
            x=self.x[idx],
            y=self.y[idx],
            users=[self.users[i] for i in idx],
            cutoffs=self.cutoffs[idx],
            classes=self.classes,
            label_names=[self.label_names[i] for i in idx],
            spend=self.spend[idx],
            thresholds=self.thresholds[idx],
            next_order_days=self.next_order_days[idx],
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


#: Closed cutoffs the gate compares models at: V and earlier ones (:func:`gate_cutoffs`).
GATE_CUTOFFS = 3


def gate_cutoffs(validation_cutoff: int, horizon_ms: int, n: int = GATE_CUTOFFS) -> list[int]:
    """V and the ``n - 1`` cutoffs before it, ``horizon / n`` apart (whole days), oldest first.

    All lie after V - H, so none is a training or early-stopping cutoff
    (:func:`temporal_split` keeps only c + H <= V), and none after V, so
    their label windows close by the data's end. A horizon shorter than
    ``n`` days gives fewer.
    """
    spacing = max(DAY_MS, (horizon_ms // n) // DAY_MS * DAY_MS)
    at = [validation_cutoff - j * spacing for j in range(n - 1, -1, -1)]
    return [c for c in at if c + horizon_ms > validation_cutoff]


def drop_duplicate_events(
    events: Iterable[Folded],
    click_window_ms: int = DEFAULT_CLICK_WINDOW_MS,
    order_memory_ms: int = DEFAULT_ORDER_MEMORY_MS,
) -> list[Folded]:
    """The events the worker would count, in the given (arrival) order.

    The worker drops a re-sent event by the rule of :mod:`stream.core.dedup`
    (orders by ``(event_type, order_id)`` within ``order_memory_ms`` of the
    user's newest order, clicks by ``event_id`` within ``click_window_ms`` of
    the user's event time and up to its per-hour cap), plus a redelivered
    record by its offset. Training applies the same rule to the same arrival
    order, so offline features and labels (a re-sent order is not a second
    purchase) count what the worker counts. Pass the worker's
    ``SEGMENTER_CLICK_DEDUP_HOURS`` and ``SEGMENTER_RETENTION_DAYS`` if they are
    not the defaults.
    """
    return list(admitted(events, _user_of, click_window_ms, order_memory_ms))


def _user_of(event: Folded) -> str:
    return event.user_id


def sort_events(
    events: Iterable[Folded], click_window_ms: int = DEFAULT_CLICK_WINDOW_MS
) -> list[Folded]:
    """Events deduplicated in arrival order, then stably sorted by event time."""
    # Dedup before sorting: which copy the worker keeps, and whether a click is
    # within the window, depend on arrival order, known only here. Stable
    # sort: events with one timestamp keep their log order, as a partition
    # would deliver them.
    return sorted(drop_duplicate_events(events, click_window_ms), key=lambda e: e.timestamp)


def build_examples(
    events: Sequence[Folded],
    cutoffs: Sequence[int],
    *,
    horizon_ms: int,
    top_quantile: float = 0.2,
    classes: tuple[str, ...] = DEFAULT_SEGMENTS,
) -> Examples:
    """One example per (cutoff, user first seen at or before it).

    ``events`` as :func:`sort_events` gives them: deduplicated in arrival
    order, then sorted by time. (Deduplicating again here, in time order,
    could drop a click the worker counted: one re-sent beyond the window.)
    """
    times = [e.timestamp for e in events]
    index = {c: i for i, c in enumerate(classes)}
    states: dict[str, UserState] = {}
    rows: list[np.ndarray] = []
    ys: list[int] = []
    users: list[str] = []
    at: list[int] = []
    names: list[str] = []
    spend: list[float] = []
    lines: list[float] = []
    next_order: list[float] = []
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
        line = high_value_line(states.keys(), activity, top_quantile)
        for user, state in states.items():
            label = labels[user]
            if label not in index:
                continue  # a model trained without this class cannot learn it
            rows.append(vector(state, cutoff))
            ys.append(index[label])
            users.append(user)
            at.append(cutoff)
            names.append(label)
            act = activity.get(user)
            spend.append(max(act.spend, 0.0) if act is not None and act.orders else 0.0)
            lines.append(line)
            first = act.first_order_at if act is not None else 0
            next_order.append((first - cutoff) / DAY_MS if first else np.nan)
    x = np.stack(rows) if rows else np.zeros((0, N_FEATURES))
    return Examples(
        x=x,
        y=np.asarray(ys, dtype=np.int64),
        users=users,
        cutoffs=np.asarray(at, dtype=np.int64),
        classes=classes,
        label_names=names,
        spend=np.asarray(spend, dtype=np.float64),
        thresholds=np.asarray(lines, dtype=np.float64),
        next_order_days=np.asarray(next_order, dtype=np.float64),
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


@dataclass
class Prepared:
    """The example table and its three time-ordered row sets (see the module docstring)."""

    events: list[Folded]  # deduplicated, sorted by event time: what was folded
    duplicates: int  # events dropped as redeliveries of an earlier event_id
    examples: Examples  # every row, at every cutoff
    train: Examples  # rows before validation: fit + early stopping (baselines fit on these)
    fit: Examples
    early_stopping: Examples
    val: Examples
    #: rows at the gate's earlier closed cutoffs (:func:`gate_cutoffs`): never fit
    backtest: Examples


def prepare_examples(
    events: Sequence[Folded],
    *,
    horizon_ms: int,
    step_ms: int,
    top_quantile: float = 0.2,
    cutoffs_since_ms: int | None = None,
    classes: tuple[str, ...] = DEFAULT_SEGMENTS,
) -> Prepared:
    """Events -> examples at cutoffs -> fit / early-stopping / validation rows.

    Every event is folded, however old: a feature such as tenure or total
    spend at a cutoff depends on the user's whole history, as it does in the
    worker. ``cutoffs_since_ms`` only limits which cutoffs become examples.
    """
    ordered = sort_events(events)
    if not ordered:
        raise ValueError("no events to train on")
    cutoffs = default_cutoffs(
        ordered[0].timestamp,
        ordered[-1].timestamp,
        horizon_ms=horizon_ms,
        step_ms=step_ms,
        since_ms=cutoffs_since_ms,
    )
    if len(cutoffs) < 3:
        raise ValueError(
            f"the events give {len(cutoffs)} cutoff(s); fitting, early stopping and validation "
            "need warm-up (30 d) + horizon + two steps of history (cutoffs within the window)"
        )
    backtest_at = [c for c in gate_cutoffs(cutoffs[-1], horizon_ms)[:-1] if c >= cutoffs[0]]
    examples = build_examples(
        ordered,
        sorted(set(cutoffs) | set(backtest_at)),
        horizon_ms=horizon_ms,
        top_quantile=top_quantile,
        classes=classes,
    )
    train, val = temporal_split(examples, horizon_ms)
    fit_rows, stop_rows = early_stopping_split(train)
    return Prepared(
        events=ordered,
        duplicates=len(events) - len(ordered),
        examples=examples,
        train=train,
        fit=fit_rows,
        early_stopping=stop_rows,
        val=val,
        backtest=examples.subset(np.isin(examples.cutoffs, backtest_at)),
    )
