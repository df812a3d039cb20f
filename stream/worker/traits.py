"""Predictive traits as they are published: in change messages, the read API and
``segmenter user`` (docs/contracts.md, ``traits`` in stream/schemas/).

The scorer gives, per scoring, :data:`model.scorer.TRAITS` as floats, NaN where
the model cannot say. Published, they become::

    {"p_purchase_90d": 0.8123, "predicted_spend_90d": 412.5,
     "p_active_90d": 0.9411, "expected_next_order_at": "2024-02-01T10:00:00Z"}

with ``null`` for what the model cannot say: JSON has no NaN, and a NaN written
as ``NaN`` is not JSON at all.

The read API and ``segmenter user`` do not store traits per user (the record is
budgeted in bytes): they recompute them from the stored state at the user's
``scored_at`` with the model version that scored them. A row's score does not
depend on the other rows it was scored with (``Scorer.predict``), and the state
in Redis is the state that was scored at ``scored_at`` (every applied event is
scored), so the recomputed traits are the ones the last scoring produced.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from model.features import raw_row, transform
from model.registry import LoadedModel, ModelError, load_version
from model.scorer import TRAITS
from stream.core.events import DAY_MS, iso
from stream.worker.state.record_codec import UserRecord

log = logging.getLogger(__name__)

#: The published names, in this order (``days_to_next_order`` is published as a date).
PUBLISHED: tuple[str, ...] = (
    "p_purchase_90d",
    "predicted_spend_90d",
    "p_active_90d",
    "expected_next_order_at",
)
# By name: a scorer that reorders or renames its traits fails here, at import.
_P_PURCHASE, _SPEND, _P_ACTIVE, _DAYS = (
    TRAITS.index(n)
    for n in ("p_purchase_90d", "predicted_spend_90d", "p_active_90d", "days_to_next_order")
)


#: Days to the next order past which the model is taken to say "none expected":
#: a century. Beyond it the date means nothing, and past year 9999 it cannot be
#: written at all (a batch would fail on it).
MAX_DAYS_TO_NEXT_ORDER = 36_500.0


def clean(traits: np.ndarray) -> np.ndarray:
    """The scorer's traits held to the contract, before anyone reads them.

    Non-finite values become NaN (the model cannot say), and so do days to the
    next order over :data:`MAX_DAYS_TO_NEXT_ORDER`; probabilities are clipped
    to [0, 1], spend and days below at 0 (an order expected before the scoring
    would already have been seen). Rule audiences and the messages read the
    same cleaned values, so a condition never sees a value no message shows.
    """
    out = np.array(traits, dtype=np.float64, copy=True)
    out[~np.isfinite(out)] = np.nan
    with np.errstate(invalid="ignore"):
        out[out[:, _DAYS] > MAX_DAYS_TO_NEXT_ORDER, _DAYS] = np.nan
    with np.errstate(invalid="ignore"):
        out[:, [_P_PURCHASE, _P_ACTIVE]] = np.clip(out[:, [_P_PURCHASE, _P_ACTIVE]], 0.0, 1.0)
        out[:, [_SPEND, _DAYS]] = np.maximum(out[:, [_SPEND, _DAYS]], 0.0)
    return out


def _num(value: float, digits: int) -> float | None:
    return round(value, digits) if math.isfinite(value) else None


def published(row: Any, at_ms: int) -> dict[str, Any]:
    """One scoring's traits as published; ``row`` is a (cleaned) row of the traits
    matrix, ``at_ms`` the event time the user was scored at."""
    values = [float(v) for v in row]
    days = values[_DAYS]
    # Whole milliseconds, as every other time in the messages.
    next_order = iso(at_ms + round(days * DAY_MS)) if math.isfinite(days) else None
    return {
        "p_purchase_90d": _num(values[_P_PURCHASE], 4),
        "predicted_spend_90d": _num(values[_SPEND], 2),
        "p_active_90d": _num(values[_P_ACTIVE], 4),
        "expected_next_order_at": next_order,
    }


def unknown() -> dict[str, Any]:
    """Traits when no model can say (the user's model version is gone)."""
    return dict.fromkeys(PUBLISHED)


def recompute(rec: UserRecord, model: LoadedModel) -> dict[str, Any]:
    """The traits of ``rec``'s last scoring (at ``rec.scored_at``), recomputed."""
    if not rec.scored_at or not rec.state.events:
        return unknown()
    x = transform(np.asarray([raw_row(rec.state, rec.scored_at)], dtype=np.float64))
    traits = clean(model.scorer.score(x).traits)
    return published(traits[0], rec.scored_at)


class ModelVersions:
    """The model that scored a user, by version: the served one when it is that
    one, else read from the registry once (a promotion since the user's last
    scoring must not change what the API says their last scoring was).

    A version that cannot be loaded (deleted, or of another feature schema)
    gives ``None``, and is not retried: the answer would not change.
    """

    def __init__(
        self, model_dir: Path, serving: Callable[[], LoadedModel] | None = None, keep: int = 4
    ) -> None:
        self.model_dir = model_dir
        self._serving = serving
        self._keep = keep
        self._loaded: dict[str, LoadedModel | None] = {}

    def __call__(self, version: str | None) -> LoadedModel | None:
        if version is None or "/" in version or version.startswith("."):
            return None  # read from Redis: never a path outside the registry
        if self._serving is not None:
            model = self._serving()
            if model.version == version:
                return model
        if version in self._loaded:
            return self._loaded[version]
        found: LoadedModel | None
        try:
            found = load_version(self.model_dir / version)
        except (ModelError, OSError, KeyError, ValueError) as exc:
            log.warning("traits: model %s cannot be loaded: %s", version, exc)
            found = None
        if len(self._loaded) >= self._keep:  # oldest out: a few versions at most live at once
            self._loaded.pop(next(iter(self._loaded)))
        self._loaded[version] = found
        return found

    def traits(self, rec: UserRecord) -> dict[str, Any]:
        model = self(rec.model_version)
        return unknown() if model is None else recompute(rec, model)
