"""Offset marks that know their topic: a topic deleted and recreated under its
old name starts fresh instead of being taken for redeliveries.

Kafka numbers a recreated topic's records from 0 again. A user's mark for
``clickstream:3`` at 5,000 would make the new topic's first 5,001 records look
like redeliveries of records already applied: counted as ``duplicate``, never
folded. So each input topic's identity, its topic id from the broker's
metadata (Apache Kafka since 2.8 and Tansu give one), is recorded under the
Redis prefix with a generation number. Marks of generation 0 keep their old
name (``topic:partition``, so existing state reads as before); those of a
later generation are kept as ``topic#<n>:partition``, so a recreated topic's
records find no mark and are applied. The partitions' applied offsets (lag,
``{clock}:offsets``) keep the plain name: the old topic's are deleted in the
same script that records the new identity.

When it is checked: at the first batch, and whenever a batch holds a record
that its user's mark would skip (a redelivery after a crash, or a recreated
topic): one metadata request, at most once per ``min_interval_s``. A broker
that gives no topic id, or does not answer, leaves the marks as they are (and
says so in the log).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stream.settings import Settings
    from stream.worker.state.store import StateStore

log = logging.getLogger(__name__)

#: KEYS: the topic ids hash, the partitions' applied offsets hash (one slot:
#: both under ``{clock}``). ARGV: topic, the id the broker gives now. Returns
#: {generation, 1 if this call began it}.
RECORD_TOPIC_LUA = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' 0')
  return {0, 0}
end
local id, gen = string.match(cur, '^(%S+) (%d+)$')
gen = tonumber(gen)
if id == ARGV[2] then return {gen, 0} end
gen = gen + 1
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. gen)
for _, f in ipairs(redis.call('HKEYS', KEYS[2])) do
  if string.match(f, '^(.*):%d+$') == ARGV[1] then redis.call('HDEL', KEYS[2], f) end
end
return {gen, 1}
"""

_NO_ID = "AAAAAAAAAAAAAAAAAAAAAA"  # the all-zero Uuid: the broker has none


def broker_topic_ids(
    settings: Settings, timeout_s: float = 10.0
) -> Callable[[list[str]], dict[str, str | None]]:
    """A blocking ``topics -> topic id`` reader over the broker's metadata."""
    from confluent_kafka import TopicCollection
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(settings.kafka_client_config())

    def read(topics: list[str]) -> dict[str, str | None]:
        futures = admin.describe_topics(TopicCollection(topics), request_timeout=timeout_s)
        out: dict[str, str | None] = {}
        for topic, future in futures.items():
            tid: Any = future.result(timeout=timeout_s).topic_id
            text = str(tid) if tid is not None else ""
            out[topic] = None if not text or text == _NO_ID else text
        return out

    return read


class TopicMarks:
    """The name each input topic's offset marks are kept under, per generation."""

    def __init__(
        self,
        store: StateStore,
        topics: Sequence[str],
        fetch_ids: Callable[[list[str]], dict[str, str | None]],
        min_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self.topics = tuple(topics)
        self._fetch = fetch_ids
        self._min_interval = min_interval_s
        self._clock = clock
        self._last = float("-inf")
        self._loaded = False
        self.names: dict[str, str] = {t: t for t in self.topics}

    def mark(self, topic: str, partition: int) -> str:
        """The key of a user's offset mark for this partition (``UserRecord.offsets``)."""
        return f"{self.names.get(topic, topic)}:{partition}"

    async def check(self, suspects: Iterable[str] = ()) -> bool:
        """Re-read the identity of ``suspects`` (every topic, the first time);
        True if some topic's marks are now kept under another name."""
        topics = sorted(set(suspects) if self._loaded else set(self.topics))
        now = self._clock()
        if not topics or now - self._last < self._min_interval:
            return False
        self._last = now
        try:
            ids = await asyncio.to_thread(self._fetch, topics)
        except Exception as exc:  # the broker's metadata, not the batch's fault
            log.warning(
                "topic ids not read (%s: %s): offset marks kept as they are",
                type(exc).__name__,
                exc,
            )
            return False
        self._loaded = True
        changed = False
        for topic, tid in ids.items():
            if tid is None:
                log.warning("the broker gives no topic id for %s: a recreation is not seen", topic)
                continue
            gen, began = await self._store.record_topic_id(topic, tid)
            name = topic if gen == 0 else f"{topic}#{gen}"
            if name == self.names.get(topic):
                continue
            self.names[topic] = name
            changed = True
            if began:
                log.warning(
                    "topic %s was recreated (topic id now %s): its offset marks start fresh, "
                    "kept as %s",
                    topic,
                    tid,
                    name,
                )
            else:
                log.info("offset marks of topic %s (topic id %s) are kept as %s", topic, tid, name)
        return changed
