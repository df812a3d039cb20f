"""Stalls: processing held up by an outage or a fault no record is to blame for.

A stall is never resolved by dead-lettering: the batch waits, retried with
backoff, until the cause goes away. It must be seen, so it shows in four
places at once: ``segmenter_stalled_seconds{reason}`` (how long the current
stall has lasted, growing at every scrape), ``/readyz`` (the reason, a fixed
word plus an exception class: never the exception's text, which may carry
URLs or secrets), one log line a minute naming the cause, and the
``SegmenterStalled`` alert on the metric.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from stream import metrics
from stream.worker.web.health import Health

log = logging.getLogger("stream.worker.pipeline")

#: The fixed reasons (the metric's label values, and /readyz's words).
REASONS = ("redis", "kafka", "broker_refused", "no_culprit")

#: One log line per this many seconds while a stall lasts.
LOG_EVERY_S = 60.0


class Stalls:
    """The current stall, if any. One per processor; the loop thread only."""

    def __init__(self, health: Health | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._health = health
        self._clock = clock
        self.reason: str | None = None
        self.error: str | None = None
        self.since: float | None = None
        self._logged_at = float("-inf")
        for reason in REASONS:
            # Read at scrape time: the gauge grows while the batch waits in a
            # backoff, not only when an attempt fails.
            metrics.STALLED_SECONDS.labels(reason).set_function(
                lambda r=reason: self.seconds(r)  # type: ignore[misc]
            )

    def seconds(self, reason: str | None = None) -> float:
        """How long the current stall (for ``reason``, if given) has lasted; 0 if none."""
        if self.since is None or (reason is not None and reason != self.reason):
            return 0.0
        return max(0.0, self._clock() - self.since)

    def failing(self, reason: str, what: str, exc: BaseException) -> None:
        """An attempt of ``what`` failed for ``reason``: the stall starts or goes on."""
        self.waiting(reason, what, type(exc).__name__)

    def waiting(self, reason: str, what: str, cause: str) -> None:
        """``what`` is held up for ``reason`` (``cause``: a class name or fixed word)."""
        now = self._clock()
        if self.since is None:
            self.since = now
        self.reason, self.error = reason, cause
        if self._health is not None:
            self._health.stall = f"{reason}: {self.error}"
        if now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            log.error(
                "processing stalled for %.0fs on %s (%s: %s); retrying with backoff, "
                "nothing dead-lettered",
                now - self.since,
                what,
                reason,
                self.error,
            )

    def cleared(self) -> None:
        """An attempt committed: the stall, if any, is over."""
        if self.since is None:
            return
        log.warning("processing resumed after a stall of %.0fs (%s)", self.seconds(), self.reason)
        self.reason = self.error = self.since = None
        self._logged_at = float("-inf")
        if self._health is not None:
            self._health.stall = None
