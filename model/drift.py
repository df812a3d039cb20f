"""Input drift: each feature's live distribution against the one the model was trained on.

Pure (NumPy only). Training stores :func:`reference` of its model-input matrix
in the manifest (``"drift_reference"``); the worker feeds every scored batch to
a :class:`DriftMonitor` built from it and exports :meth:`DriftMonitor.snapshot`.

The measure is the population stability index over the reference's quantile
bins, ``PSI = sum((a - e) * ln(a / e))``: under 0.1 is "no real change",
0.1-0.25 "some", over 0.25 "significant" (docs/design.md, "How a model is judged").

Bins are right-closed, ``(-inf, e0], (e0, e1], ..., (e_last, inf)``, so a point
mass (most features are 0 for many users) fills a bin of its own instead of
sharing one with the values just above it. Inputs are model inputs: rows of
:func:`model.features.transform` (``log1p`` applied, not standardised).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.features import FEATURE_NAMES, N_FEATURES, raw_row, transform
from stream.core.events import Folded
from stream.core.fold import UserState, apply

#: PSI at or above this is a "significant shift" (the alert's line).
SIGNIFICANT_PSI = 0.25


def reference(
    x: np.ndarray, names: Sequence[str] = FEATURE_NAMES, bins: int = 10
) -> dict[str, Any]:
    """The training distribution of each column of ``x``, as JSON-able data for a manifest.

    Per feature: the interior ``bins``-quantile edges (deduplicated: a feature
    that is 0 for half the rows gives one edge at 0, not five), the share of
    rows in each of the ``len(edges) + 1`` bins, and the observed min and max.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(names):
        raise ValueError(f"expected a matrix with {len(names)} columns, got shape {x.shape}")
    if len(x) == 0:
        raise ValueError("a drift reference needs at least one row")
    if not np.all(np.isfinite(x)):
        raise ValueError("a drift reference needs finite inputs")
    if bins < 2:
        raise ValueError(f"bins must be at least 2, got {bins}")
    qs = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    features: dict[str, Any] = {}
    for j, name in enumerate(names):
        column = x[:, j]
        edges = np.unique(np.quantile(column, qs))
        counts = np.bincount(np.searchsorted(edges, column, side="left"), minlength=len(edges) + 1)
        features[name] = {
            "edges": edges.tolist(),
            "proportions": (counts / len(column)).tolist(),
            "min": float(column.min()),
            "max": float(column.max()),
        }
    return {"bins": bins, "rows": len(x), "features": features}


def serving_rows(events: Iterable[Folded], since_ms: int | None = None) -> np.ndarray:
    """The model inputs the worker scores as ``events`` arrive: one row per event.

    Each event is folded into its user's state and the user scored as of that
    event, which is what the worker's batch path does (``stream/worker/pipeline.py``)
    and what it feeds the drift monitor. Build the manifest's reference from
    these, not from training examples at cutoffs: a cutoff row describes a
    user some days after their last event, an arriving event's row describes
    them at it (``days_since_last_activity`` is 0), so the two never match.
    ``events`` sorted by time and deduplicated (``model.training.dataset.sort_events``);
    every one is folded, rows are kept from ``since_ms`` on.
    """
    states: dict[str, UserState] = {}
    rows: list[tuple[float, ...]] = []
    # Transformed a chunk at a time (it is elementwise): a million rows held as
    # tuples of floats would take about a gigabyte, as an array 160 MB.
    chunks: list[np.ndarray] = [np.zeros((0, N_FEATURES))]
    for event in events:
        state = states.get(event.user_id)
        if state is None:
            state = states[event.user_id] = UserState()
        apply(state, event)
        if since_ms is None or event.timestamp >= since_ms:
            rows.append(raw_row(state, state.last_seen))
            if len(rows) >= _CHUNK_ROWS:
                chunks.append(transform(rows))
                rows.clear()
    if rows:
        chunks.append(transform(rows))
    return np.concatenate(chunks)


_CHUNK_ROWS = 50_000


def psi(expected: np.ndarray, actual: np.ndarray, eps: float = 1e-4) -> float:
    """Population stability index of ``actual`` against ``expected``.

    Both are per-bin proportions (counts are normalised too). A bin empty on
    one side is floored at ``eps`` instead of giving an infinite log ratio.
    Each term ``(a - e) * ln(a / e)`` is >= 0, so PSI is >= 0, 0 only for equal
    distributions, and symmetric in its arguments.
    """
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape:
        raise ValueError(f"bin counts differ: {e.shape} vs {a.shape}")
    e_total, a_total = e.sum(), a.sum()
    if not (e_total > 0 and a_total > 0):
        raise ValueError("PSI needs a non-empty distribution on both sides")
    e = np.maximum(e / e_total, eps)
    a = np.maximum(a / a_total, eps)
    return float(np.sum((a - e) * np.log(a / e)))


def bin_counts(reference_feature: Mapping[str, Any], column: np.ndarray) -> np.ndarray:
    """Rows of ``column`` in each of a reference feature's bins (right-closed)."""
    edges = np.asarray(reference_feature["edges"], dtype=np.float64)
    index = np.searchsorted(edges, np.asarray(column, dtype=np.float64), side="left")
    return np.bincount(index, minlength=len(edges) + 1)


def psi_by_feature(ref: Mapping[str, Any], counts: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """PSI per feature of live bin ``counts`` (e.g. several workers' windows summed)."""
    out = {}
    for name, observed in counts.items():
        expected = ref["features"].get(name)
        if expected is not None and sum(observed) > 0:
            out[name] = psi(np.asarray(expected["proportions"]), np.asarray(observed))
    return out


def summary(ref: Mapping[str, Any]) -> dict[str, Any]:
    """What an operator wants from a stored reference: its size and each feature's range."""
    return {
        "bins": ref["bins"],
        "rows": ref["rows"],
        "features": {
            name: {"min": f["min"], "max": f["max"], "bins": len(f["proportions"])}
            for name, f in ref["features"].items()
        },
    }


@dataclass(frozen=True)
class DriftSnapshot:
    """The window as of one moment: rows in it, PSI per feature, out-of-range share."""

    rows: int
    psi: dict[str, float]
    out_of_range_ratio: float
    #: Rows of the window with some feature outside the reference's [min, max].
    out_of_range_rows: int = 0
    #: Per feature, rows of the window in each reference bin (to merge windows exactly).
    counts: dict[str, list[int]] | None = None


class DriftMonitor:
    """The last ``window_rows`` observed rows, binned against a reference on demand.

    Cheap where it runs per batch: :meth:`observe` only copies the batch's rows
    into a ring of ``ceil(window_rows / chunk_rows)`` chunks. The binning is
    done by :meth:`snapshot` (called on a timer), once per row at most, and
    kept per chunk: rows that roll out of the window before a snapshot are
    never binned, so the work per snapshot is bounded by the window whatever
    the traffic. The window (``window_rows`` rounded up to whole chunks) rolls
    a chunk at a time: it is always the newest rows observed, more than
    ``window_rows - chunk_rows`` of them and at most ``window_rows`` once
    warmed up.

    Inputs are model inputs (finite; :func:`model.features.transform` clamps).
    A row with a non-finite value counts as out of range.
    """

    def __init__(
        self,
        reference: Mapping[str, Any],
        window_rows: int = 10_000,
        chunk_rows: int = 1_000,
        *,
        names: Sequence[str] = FEATURE_NAMES,
    ) -> None:
        if window_rows < 1 or chunk_rows < 1:
            raise ValueError("window_rows and chunk_rows must be at least 1")
        features: Mapping[str, Any] = reference["features"]
        unknown = set(features) - set(names)
        if unknown:
            raise ValueError(f"reference has features the input does not: {sorted(unknown)}")
        self.names: tuple[str, ...] = tuple(features)
        positions = [list(names).index(n) for n in self.names]
        # None: the reference covers every column in order, and a batch is
        # copied without a gather.
        self._columns = None if positions == list(range(len(names))) else np.array(positions)
        edges = [np.asarray(features[n]["edges"], dtype=np.float64) for n in self.names]
        self._expected = [
            np.asarray(features[n]["proportions"], dtype=np.float64) for n in self.names
        ]
        for name, e, p in zip(self.names, edges, self._expected, strict=True):
            if e.ndim != 1 or len(p) != len(e) + 1 or np.any(np.diff(e) <= 0):
                raise ValueError(f"reference for {name}: edges must increase, one bin more")
        self._sizes = [len(e) + 1 for e in edges]
        widest = max((len(e) for e in edges), default=0)
        # Padded with +inf, above which nothing lies: the rows above each edge,
        # differenced, are the rows in each bin (the padding's bins stay empty).
        self._edges = np.full((len(edges), widest, 1), np.inf)
        for i, e in enumerate(edges):
            self._edges[i, : len(e), 0] = e
        self._min = np.array([features[n]["min"] for n in self.names], dtype=np.float64)[:, None]
        self._max = np.array([features[n]["max"] for n in self.names], dtype=np.float64)[:, None]
        self.chunk_rows = min(chunk_rows, window_rows)
        n_chunks = -(-window_rows // self.chunk_rows)
        #: Rounded up to whole chunks.
        self.window_rows = n_chunks * self.chunk_rows
        self._data = np.empty((n_chunks * self.chunk_rows, len(self.names)))
        self._filled = [0] * n_chunks  # rows written into each chunk
        self._binned = [0] * n_chunks  # of which already counted in _counts
        self._counts = np.zeros((n_chunks, len(self.names), widest + 1), dtype=np.int64)
        self._outside = np.zeros(n_chunks, dtype=np.int64)
        self._head = 0  # the chunk being filled

    def observe(self, x: np.ndarray) -> None:
        """Add the rows of ``x`` (model inputs, one row per scoring) to the window."""
        n = len(x)
        start = max(0, n - self.window_rows)  # older ones would roll out at once
        size = self.chunk_rows
        while start < n:
            head = self._head
            room = size - self._filled[head]
            if room == 0:
                head = self._head = (head + 1) % len(self._filled)
                self._filled[head] = self._binned[head] = 0
                self._counts[head] = 0
                self._outside[head] = 0
                continue
            stop = min(n, start + room)
            at = head * size + self._filled[head]
            if self._columns is None:
                self._data[at : at + stop - start] = x[start:stop]
            else:
                self._data[at : at + stop - start] = x[start:stop, self._columns]
            self._filled[head] += stop - start
            start = stop

    def _bin_pending(self) -> None:
        size = self.chunk_rows
        for chunk, (filled, binned) in enumerate(zip(self._filled, self._binned, strict=True)):
            if filled == binned:
                continue
            at = chunk * size
            # (features, rows), contiguous: every comparison below runs along rows
            block = np.ascontiguousarray(self._data[at + binned : at + filled].T)
            above = np.count_nonzero(block[:, None, :] > self._edges, axis=2)
            rows = filled - binned
            # rows in bin i = rows above edge i-1 minus rows above edge i
            cumulative = np.concatenate(
                [np.full((len(above), 1), rows), above, np.zeros((len(above), 1), np.int64)],
                axis=1,
            )
            self._counts[chunk] += cumulative[:, :-1] - cumulative[:, 1:]
            inside = ((block >= self._min) & (block <= self._max)).all(axis=0)
            self._outside[chunk] += rows - int(np.count_nonzero(inside))
            self._binned[chunk] = filled

    def snapshot(self) -> DriftSnapshot:
        self._bin_pending()
        rows = sum(self._filled)
        if rows == 0:
            return DriftSnapshot(0, {}, 0.0, 0, {})
        totals = self._counts.sum(axis=0)
        counts = {name: totals[i, : self._sizes[i]] for i, name in enumerate(self.names)}
        outside = int(self._outside.sum())
        return DriftSnapshot(
            rows=rows,
            psi={name: psi(self._expected[i], counts[name]) for i, name in enumerate(self.names)},
            out_of_range_ratio=outside / rows,
            out_of_range_rows=outside,
            counts={name: c.tolist() for name, c in counts.items()},
        )
