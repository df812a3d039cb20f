"""The model a worker serves, swapped whole when a new one is promoted."""

from __future__ import annotations

import logging
from typing import Any

from model.registry import LoadedModel, current_version, load_version
from stream import metrics

log = logging.getLogger("segmenter.worker")


class ModelHolder:
    """The model being served; swapped as a whole, read once per batch.

    A batch reads the model once at scoring time, so a switch lands between
    batches: every change a batch publishes carries the version that scored it.
    """

    def __init__(self, model: LoadedModel) -> None:
        self.current = model
        metrics.MODEL_INFO.labels(model.version).set(1)

    def __call__(self) -> LoadedModel:
        return self.current

    def swap(self, model: LoadedModel) -> None:
        old = self.current.version
        self.current = model
        metrics.MODEL_INFO.remove(old)
        metrics.MODEL_INFO.labels(model.version).set(1)

    def reload_if_promoted(self, model_dir: Any) -> bool:
        """Switch to the registry's ``current`` model if it changed; keep serving on failure."""
        wanted = current_version(model_dir)
        if wanted is None or wanted == self.current.version:
            return False
        try:
            model = load_version(model_dir / wanted)
            if model.classes != self.current.classes:
                # Stored segments, counts and subscribers' topics are named by
                # class: a different set needs a migration, not a hot swap.
                raise ValueError(
                    f"its classes {list(model.classes)} differ from the served "
                    f"{list(self.current.classes)}; restart the workers to adopt them"
                )
        except Exception as exc:  # any unusable model: keep serving the old one
            metrics.MODEL_RELOADS.labels("rejected").inc()
            log.error("model %s refused, still serving %s: %s", wanted, self.current.version, exc)
            return False
        old = self.current.version
        self.swap(model)
        metrics.MODEL_RELOADS.labels("success").inc()
        log.info("model switched from %s to %s", old, model.version)
        return True
