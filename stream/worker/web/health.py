"""Liveness and readiness, as the worker sees itself. Pure state plus a verdict.

Readiness bodies are redacted: each check gives a fixed word and, at most,
an exception *class*, never an exception's text, which may carry a URL with
credentials, a host name or a user's id (the probes answer without a token).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Without a committed batch for this long while records wait, the worker is
#: not ready, whatever else it reports: a backstop for a hang no retry loop sees.
MAX_IDLE_S = 300.0

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


def redacted(error: str | None) -> str | None:
    """Only the leading exception class (or fixed word) of ``error``: ``"X: text"`` -> ``"X"``."""
    if error is None:
        return None
    head = _NAME.match(error.strip())
    return head.group(0) if head else "error"


@dataclass
class Health:
    started_at: float = field(default_factory=time.time)
    assigned: frozenset[str] = frozenset()
    kafka_ok: bool = False
    kafka_error: str | None = None
    redis_ok: bool = False
    redis_error: str | None = None
    model_version: str | None = None
    last_batch_at: float | None = None
    #: The current stall, "<reason>: <exception class>" (stream.worker.faults.stalls).
    stall: str | None = None
    #: The agent's exception class, once it has died (the process then exits).
    agent_error: str | None = None
    #: Whether assigned partitions have records not yet applied (from the lag).
    records_waiting: bool = False
    max_idle_s: float = MAX_IDLE_S
    clock: Callable[[], float] = field(default=time.time, repr=False)

    def processing(self) -> tuple[bool, str | None]:
        """Whether batches are going through; if not, why (a fixed reason)."""
        if self.agent_error is not None:
            return False, f"agent_crashed: {redacted(self.agent_error)}"
        if self.stall is not None:
            reason, _, cls = self.stall.partition(": ")
            return False, f"stalled: {reason}" + (f": {redacted(cls)}" if cls else "")
        since = self.last_batch_at if self.last_batch_at is not None else self.started_at
        if self.records_waiting and self.clock() - since > self.max_idle_s:
            return False, f"no_commit: none for over {self.max_idle_s:.0f}s while records wait"
        return True, None

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        processing_ok, why = self.processing()
        checks: dict[str, dict[str, Any]] = {
            "kafka": {"ok": self.kafka_ok, "error": redacted(self.kafka_error)},
            "redis": {"ok": self.redis_ok, "error": redacted(self.redis_error)},
            "partitions": {"ok": bool(self.assigned), "assigned": len(self.assigned)},
            "model": {"ok": self.model_version is not None, "version": self.model_version},
            "processing": {"ok": processing_ok, "reason": why},
        }
        ready = all(c["ok"] for c in checks.values())
        return ready, {"ready": ready, "checks": checks}

    def liveness(self) -> dict[str, Any]:
        return {
            "alive": self.agent_error is None,
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "last_batch_at": self.last_batch_at,
        }
