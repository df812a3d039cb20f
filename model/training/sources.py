"""Turn raw records (from files, generators or topic replays) into validated events.

Training decodes through the same :func:`stream.core.events.decode` as the worker,
so an event the worker would dead-letter is not silently trained on either.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from stream.core.events import DecodeLimits, Fact, Rejected
from stream.core.wire import decode_fact


@dataclass
class Decoded:
    # Compact facts, not the validated models: training holds them all at once.
    events: list[Fact] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)


def decode_records(
    records: Iterable[tuple[str, bytes | None, bytes | None]],
    *,
    clickstream_topic: str = "clickstream",
    orders_topic: str = "orders",
    until_ms: int | None = None,
    limits: DecodeLimits | None = None,
) -> Decoded:
    kinds: dict[str, Literal["clickstream", "orders"]] = {
        clickstream_topic: "clickstream",
        orders_topic: "orders",
    }
    now = int(time.time() * 1000)
    out = Decoded()
    for topic, key, value in records:
        kind = kinds.get(topic)
        if kind is None:
            out.rejected["unknown_topic"] += 1
            continue
        result = decode_fact(kind, key, value, now_ms=now, limits=limits or DecodeLimits())
        if isinstance(result, Rejected):
            out.rejected[result.reason.value] += 1
        elif until_ms is None or result.timestamp <= until_ms:
            out.events.append(result)
    return out
