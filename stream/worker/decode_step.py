"""Step 1 of a batch: raw records to events, or to the reason each is dead-lettered."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import msgspec

from stream.core.events import DecodeLimits, Fact, Reason, Rejected
from stream.core.wire import decode_fact
from stream.privacy import pseudonym
from stream.worker.records import RawRecord


def decode_batch(
    records: Sequence[RawRecord],
    kinds: Mapping[str, Literal["clickstream", "orders"]],
    poisoned: dict[tuple[str, int, int], Rejected],
    *,
    now_ms: int,
    limits: DecodeLimits,
    pseudonymize_key: bytes | None,
) -> tuple[list[tuple[RawRecord, Fact]], list[tuple[RawRecord, Rejected]]]:
    """(good, bad) in batch order. A record in ``poisoned`` (it failed on its own
    before) is taken out of it and dead-lettered with its reason."""
    good: list[tuple[RawRecord, Fact]] = []
    bad: list[tuple[RawRecord, Rejected]] = []
    for rec in records:
        # Almost always empty: no key built per record then.
        why = poisoned.pop((rec.topic, rec.partition, rec.offset), None) if poisoned else None
        if why is not None:
            bad.append((rec, why))
            continue
        kind = kinds.get(rec.topic)
        if kind is None:
            bad.append((rec, Rejected(Reason.UNKNOWN_TOPIC, f"no decoder for {rec.topic}")))
            continue
        result = decode_fact(kind, rec.key, rec.value, now_ms=now_ms, limits=limits)
        if isinstance(result, Rejected):
            bad.append((rec, result))
        else:
            if pseudonymize_key is not None:
                uid = pseudonym(pseudonymize_key, result.user_id)
                result = msgspec.structs.replace(result, user_id=uid)
            good.append((rec, result))
    return good, bad
