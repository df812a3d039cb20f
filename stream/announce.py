"""Model promotions on the ``segmenter-models`` topic: announce, and listen.

Workers find the serving model through the registry's ``current`` pointer
(checked every housekeeping interval); an announcement makes them check at
once. The topic is compacted under the key ``current``, so it also serves
subscribers and auditors as a log of promotions.

Delivery: announcements are best effort for workers (the pointer is the
source of truth); `announce` waits for the broker's ack and raises on failure.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import orjson
from confluent_kafka import OFFSET_END, Consumer, TopicPartition

from model.registry import promote, read_manifest, rollback
from stream.settings import Settings
from stream.sinks import new_producer

log = logging.getLogger(__name__)


def announce(settings: Settings, entry: dict[str, Any], timeout_s: float = 10.0) -> None:
    manifest = read_manifest(Path(settings.model_dir) / entry["version"])
    message = {
        **entry,
        "schema_hash": manifest.get("schema_hash"),
        "classes": manifest.get("classes"),
        "macro_f1": manifest.get("metrics", {}).get("macro_f1"),
        "high_value_f1": manifest.get("metrics", {}).get("high_value_f1"),
    }
    producer = new_producer({**settings.kafka_client_config(), "acks": "all"})
    errors: list[Any] = []
    producer.produce(
        settings.topic_models,
        key=b"current",
        value=orjson.dumps(message),
        on_delivery=lambda err, _msg: errors.append(err) if err else None,
    )
    if producer.flush(timeout_s) or errors:
        raise RuntimeError(f"announcement of {entry['version']} not delivered: {errors}")


def promote_and_announce(settings: Settings, version: str, reason: str) -> dict[str, Any]:
    entry = promote(Path(settings.model_dir), version, reason)
    announce(settings, entry)
    log.info("promoted %s (%s) and announced it on %s", version, reason, settings.topic_models)
    return entry


def rollback_and_announce(settings: Settings) -> dict[str, Any]:
    entry = rollback(Path(settings.model_dir))
    announce(settings, entry)
    return entry


class AnnouncementListener:
    """Reads new announcements (from the end; no group, no commits) and calls back."""

    def __init__(
        self, settings: Settings, on_announcement: Callable[[dict[str, Any]], None]
    ) -> None:
        self._settings = settings
        self._callback = on_announcement
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-announcements", daemon=True)

    def start(self) -> AnnouncementListener:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        consumer = Consumer(
            {
                **self._settings.kafka_client_config(),
                "group.id": f"segmenter-announcements-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
            }
        )
        try:
            meta = consumer.list_topics(self._settings.topic_models, timeout=10)
            parts = meta.topics[self._settings.topic_models].partitions
            consumer.assign(
                [TopicPartition(self._settings.topic_models, p, OFFSET_END) for p in parts]
            )
            while not self._stop.is_set():
                msg = consumer.poll(0.5)
                if msg is None or msg.error() is not None or msg.value() is None:
                    continue
                try:
                    # cast, not an ignore: confluent-kafka's stubs type value()
                    # differently across releases (the bench extra pins < 2.13).
                    self._callback(orjson.loads(cast("bytes", msg.value())))
                except Exception:  # a bad announcement must not stop the listener
                    log.exception("bad model announcement ignored")
        except Exception:
            log.exception("model announcement listener stopped; relying on the registry pointer")
        finally:
            consumer.close()
