"""The worker's watch on input drift: the serving model's reference against live inputs.

Glue around :class:`model.drift.DriftMonitor`. The batch processor hands it the
rows it scored for arriving events, after the batch has committed; a monitor
belongs to one model version and a new, empty one replaces it when another
version is served. On the housekeeping timer (every few seconds, never per
batch) :meth:`DriftTracker.publish` turns the window into the gauges and a
small report that the worker stores in Redis for ``segmenter models show``.

A model whose manifest has no ``drift_reference`` (trained before drift was
recorded) gets no drift metrics, which is said once in the log. Nothing here
may fail a batch: a batch that raised after its commit would be re-run.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from model.drift import SIGNIFICANT_PSI, DriftMonitor, psi_by_feature
from model.registry import LoadedModel
from stream import metrics

log = logging.getLogger(__name__)

#: Chunks the window rolls by: it moves on a tenth of itself at a time.
CHUNKS_PER_WINDOW = 10


def worker_name() -> str:
    """Host and process: which worker a report came from (a pod's host name is the pod)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class DriftTracker:
    def __init__(
        self,
        window_rows: int,
        *,
        worker: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if window_rows < 1:
            raise ValueError("window_rows must be at least 1 (drift off: no tracker)")
        self.window_rows = window_rows
        self.chunk_rows = max(1, window_rows // CHUNKS_PER_WINDOW)
        self.worker = worker or worker_name()
        self._clock = clock
        self._version: str | None = None
        self._monitor: DriftMonitor | None = None

    def _bind(self, model: LoadedModel) -> DriftMonitor | None:
        """The monitor for ``model``'s version: a new, empty one if the version changed."""
        if model.version == self._version:
            return self._monitor
        self._version, self._monitor = model.version, None
        metrics.DRIFT.clear()  # the old model's drift says nothing about this one
        ref = model.manifest.get("drift_reference")
        if ref is None:
            log.info(
                "model %s has no drift reference in its manifest (trained before drift "
                "monitoring): no drift metrics while it serves",
                model.version,
            )
            return None
        try:
            self._monitor = DriftMonitor(ref, self.window_rows, self.chunk_rows)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning(
                "model %s: its drift reference is unusable (%s: %s): no drift metrics "
                "while it serves",
                model.version,
                type(exc).__name__,
                exc,
            )
        return self._monitor

    def observe(self, model: LoadedModel, x: np.ndarray, skip: Sequence[int] = ()) -> None:
        """Add the rows ``model`` scored for a committed batch, but those in ``skip``
        (ascending: the batch's re-scores of quiet users, not arriving events)."""
        monitor = self._monitor if model.version == self._version else self._bind(model)
        if monitor is None or not len(x):
            return
        try:
            if not skip:
                monitor.observe(x)
            elif len(skip) > 16:
                monitor.observe(np.delete(x, skip, axis=0))
            else:  # a few: the slices between them, without copying the batch
                start = 0
                for row in (*skip, len(x)):
                    if row > start:
                        monitor.observe(x[start:row])
                    start = row + 1
        except Exception as exc:  # a metric never fails a committed batch
            log.warning(
                "drift monitoring of model %s stopped: %s: %s",
                model.version,
                type(exc).__name__,
                exc,
            )
            self._monitor = None
            metrics.DRIFT.clear()

    def publish(self, model: LoadedModel) -> dict[str, Any] | None:
        """Set the gauges from the window; the report to store, or None (nothing measured)."""
        monitor = self._bind(model)
        if monitor is None:
            return None
        snap = monitor.snapshot()
        if not snap.rows:
            return None
        metrics.DRIFT.set(snap.psi, snap.out_of_range_ratio)
        at = datetime.fromtimestamp(self._clock(), UTC).isoformat().replace("+00:00", "Z")
        return {
            "worker": self.worker,
            "version": model.version,
            "rows": snap.rows,
            "window_rows": monitor.window_rows,
            "psi": {k: round(v, 6) for k, v in snap.psi.items()},
            "out_of_range_ratio": round(snap.out_of_range_ratio, 6),
            "out_of_range_rows": snap.out_of_range_rows,
            # Bin counts, so several workers' windows can be merged exactly.
            "counts": snap.counts,
            "at": at,
        }


def report_max_age_s(housekeeping_interval_s: float) -> int:
    """How long a worker's report stays live: a dozen housekeeping rounds, a minute at least."""
    return max(60, int(housekeeping_interval_s * 12))


def merge_reports(
    reference: Mapping[str, Any],
    reports: Iterable[Mapping[str, Any]],
    version: str,
    *,
    now: float,
    max_age_s: float,
) -> dict[str, Any] | None:
    """The live drift of ``version`` over every worker's fresh report, or None if there is none.

    Each worker sees only its partitions' traffic; their windows' bin counts
    are summed and PSI computed over the union, not averaged per worker.
    """
    fresh = []
    for report in reports:
        try:
            age = now - datetime.fromisoformat(report["at"].replace("Z", "+00:00")).timestamp()
        except (KeyError, AttributeError, ValueError):
            continue
        if report.get("version") == version and age <= max_age_s and report.get("counts"):
            fresh.append(report)
    if not fresh:
        return None
    counts: dict[str, list[int]] = {}
    for report in fresh:
        for name, observed in report["counts"].items():
            total = counts.setdefault(name, [0] * len(observed))
            if len(total) == len(observed):
                counts[name] = [a + b for a, b in zip(total, observed, strict=True)]
    rows = sum(int(r["rows"]) for r in fresh)
    outside = sum(int(r.get("out_of_range_rows", 0)) for r in fresh)
    psi = sorted(psi_by_feature(reference, counts).items(), key=lambda kv: -kv[1])
    return {
        "workers": len(fresh),
        "rows": rows,
        "psi": {k: round(v, 4) for k, v in psi},
        "significant": [k for k, v in psi if v > SIGNIFICANT_PSI],
        "out_of_range_ratio": round(outside / rows, 4) if rows else 0.0,
        "at": max(r["at"] for r in fresh),
    }
