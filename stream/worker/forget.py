"""Right to erasure: `segmenter forget USER_ID`.

1. A keyed digest of the user's id goes on the erasure list (``StateStore.forget``,
   stream.erasure), so that from then on the worker drops their events
   from before the erasure: a replay of the input topics, a rewound consumer
   group, or a rebuild under a new Redis prefix cannot bring them back while
   the list keeps them (``SEGMENTER_FORGET_DENYLIST_DAYS``). Without an erasure
   key it refuses, before erasing anything.
2. Their state, their place in the segment counts and their re-evaluation
   schedule are deleted in one Lua script.
3. A tombstone (null value) for the user goes to every output topic that
   exists: ``customer-segments`` and each ``segments.<segment>`` topic, so
   compaction removes their messages there and consumers that materialise
   those topics drop them.

Idempotent: forgetting twice is harmless, and running it again after a crash
in between finishes the job.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from confluent_kafka.admin import AdminClient

from model.segments import DEFAULT_SEGMENTS
from stream.core.events import DAY_MS
from stream.privacy import pseudonym
from stream.settings import Settings
from stream.sinks import ConfluentSink
from stream.worker.changes import output_topics, tombstones
from stream.worker.state.store import StateStore


@dataclass(frozen=True)
class Forgotten:
    user_key: str
    had_state: bool
    #: topic -> offset of the tombstone written there
    tombstones: dict[str, int]


def stored_id(settings: Settings, user_id: str) -> str:
    """The id the service stores for ``user_id`` (its pseudonym when pseudonymising)."""
    if settings.pseudonymize_key is None:
        return user_id
    return pseudonym(settings.pseudonymize_key.get_secret_value().encode(), user_id)


def _existing_output_topics(settings: Settings, classes: tuple[str, ...]) -> list[str]:
    # Per-segment topics are tombstoned whenever they exist, even with
    # SEGMENTER_SEGMENT_TOPICS off now: an earlier configuration may have
    # published the user there.
    wanted = output_topics(settings.topic_segments, settings.segment_topic_template, classes)
    wanted.append(settings.topic_audiences)  # if rule audiences ever published the user
    existing = set(AdminClient(settings.kafka_client_config()).list_topics(timeout=15).topics)
    return [t for t in wanted if t in existing or t == settings.topic_segments]


async def forget(settings: Settings, user_id: str) -> Forgotten:
    uid = stored_id(settings, user_id)
    store = StateStore.from_settings(settings)
    sink = ConfluentSink(settings.kafka_client_config())
    try:
        had_state = await store.forget(
            uid,
            now_ms=int(time.time() * 1000),
            keep_ms=int(settings.forget_denylist_days * DAY_MS),
        )
        if store.classes is None:
            await store.get(uid)  # fetches the stored classes
        classes = store.classes or DEFAULT_SEGMENTS
        topics = await asyncio.to_thread(_existing_output_topics, settings, classes)
        # Tombstones after the delete: if we die in between, running forget
        # again finishes the job (the delete is idempotent).
        sent = {}
        for out in tombstones([uid], topics):
            _, sent[out.topic] = await sink.send(out.topic, out.key, None, [])
        return Forgotten(uid, had_state, sent)
    finally:
        await asyncio.to_thread(sink.close)
        await store.close()
