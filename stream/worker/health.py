"""Liveness and readiness, as the worker sees itself. Pure state plus a verdict."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


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

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, dict[str, Any]] = {
            "kafka": {"ok": self.kafka_ok, "error": self.kafka_error},
            "redis": {"ok": self.redis_ok, "error": self.redis_error},
            "partitions": {"ok": bool(self.assigned), "assigned": len(self.assigned)},
            "model": {"ok": self.model_version is not None, "version": self.model_version},
        }
        ready = all(c["ok"] for c in checks.values())
        return ready, {"ready": ready, "checks": checks}

    def liveness(self) -> dict[str, Any]:
        return {
            "alive": True,
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "last_batch_at": self.last_batch_at,
        }
