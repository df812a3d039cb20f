"""What one worker process holds: the parts its agent, tasks and hooks share."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field

import faust

from stream.announce import AnnouncementListener
from stream.settings import Settings
from stream.worker.drift import DriftTracker
from stream.worker.model_holder import ModelHolder
from stream.worker.pipeline import BatchProcessor
from stream.worker.rules.audiences import AudienceFile, AudiencesError
from stream.worker.state.store import StateStore
from stream.worker.web.health import Health

log = logging.getLogger("segmenter.worker")


@dataclass(eq=False)
class WorkerParts:
    settings: Settings
    app: faust.App
    store: StateStore
    holder: ModelHolder
    health: Health
    processor: BatchProcessor
    audience_file: AudienceFile | None
    drift: DriftTracker | None
    #: Set on shutdown. Faust waits for unacked events before it sends
    #: on_before_shutdown, so a batch retrying against an unavailable Redis
    #: must see this (or the app stopping), or shutdown hangs.
    stopping: threading.Event
    #: One writer of users at a time, batch or sweep round: only the owner of
    #: a user's partition ever writes that user, and never twice at once, so
    #: no change is published by a writer whose commit is then refused.
    one_writer: asyncio.Lock = field(default_factory=asyncio.Lock)
    listeners: list[AnnouncementListener] = field(default_factory=list)

    def owned_partitions(self) -> list[int]:
        return sorted({int(tp.rsplit(":", 1)[1]) for tp in self.health.assigned})

    def reload_model(self) -> None:
        if self.holder.reload_if_promoted(self.settings.model_dir):
            self.health.model_version = self.holder.current.version

    def reload_audiences(self, force: bool = False) -> None:
        """Take a changed audiences file between batches; keep the old set if it is bad."""
        if self.audience_file is None:
            return
        processor = self.processor
        try:
            new = self.audience_file.reload(force)
        except AudiencesError as exc:
            log.error(
                "audiences not reloaded, still using the %d from before: %s",
                len(processor.audiences.audiences) if processor.audiences else 0,
                exc,
            )
            return
        if new is not None:
            processor.audiences = new
            log.info("audiences reloaded from %s: %s", new.source, ", ".join(new.names) or "none")
