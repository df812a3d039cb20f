"""Right to erasure: `segmenter forget USER_ID`.

Deletes the user's state (and their place in the segment counts and the
re-evaluation schedule) in one Lua script, then publishes a tombstone (null value) for
the user on the compacted ``customer-segments`` topic, so compaction removes
their last segment message too. Idempotent: forgetting twice is harmless.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from stream.privacy import pseudonym
from stream.settings import Settings
from stream.sinks import ConfluentSink
from stream.store import StateStore


@dataclass(frozen=True)
class Forgotten:
    user_key: str
    had_state: bool
    tombstone_offset: int


def stored_id(settings: Settings, user_id: str) -> str:
    """The id the service stores for ``user_id`` (its pseudonym when pseudonymising)."""
    if settings.pseudonymize_key is None:
        return user_id
    return pseudonym(settings.pseudonymize_key.get_secret_value().encode(), user_id)


async def forget(settings: Settings, user_id: str) -> Forgotten:
    uid = stored_id(settings, user_id)
    store = StateStore.from_settings(settings)
    sink = ConfluentSink(settings.kafka_client_config())
    try:
        had_state = await store.forget(uid)
        # Tombstone after the delete: if we die in between, running forget
        # again finishes the job (the delete is idempotent).
        _, offset = await sink.send(settings.topic_segments, uid.encode(), None, [])
        return Forgotten(uid, had_state, offset)
    finally:
        await asyncio.to_thread(sink.close)
        await store.close()
