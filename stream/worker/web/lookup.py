"""Read one user's segment and features from Redis (`segmenter user`, tests, the read API)."""

from __future__ import annotations

from typing import Any

from model.features import raw_features, round_features
from stream.core.events import iso
from stream.settings import Settings
from stream.worker.state.store import StateStore, UserRecord
from stream.worker.traits import ModelVersions, unknown


def describe(
    user_id: str, rec: UserRecord, stream_time: int, traits: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``traits``: those of the user's last scoring (:meth:`ModelVersions.traits`);
    None = unknown, every trait null."""
    s = rec.state
    features: dict[str, Any] = {
        "order_count": s.order_count,
        "total_spend": round(s.total_spend, 2),
        "returned_spend": round(s.returned_spend, 2),
        "first_seen_at": iso(s.first_seen),
        "last_seen_at": iso(s.last_seen),
        "last_order_at": iso(s.last_order_at),
        "session_count": s.session_count,
        "product_views": s.product_views,
        "cart_adds": s.cart_adds,
        "cancel_count": s.cancel_count,
        "refund_count": s.refund_count,
        "events": s.events,
    }
    # The model's inputs as of stream time, before log1p: what it actually saw.
    features.update(
        {f"model.{k}": v for k, v in round_features(raw_features(s, stream_time)).items()}
    )
    return {
        "user_id": user_id,
        "segment": rec.segment,
        "probabilities": rec.probabilities,
        "traits": traits if traits is not None else unknown(),
        "model_version": rec.model_version,
        "version": rec.version,
        # When the probabilities and traits were computed (the user's last scoring).
        "scored_at": iso(rec.scored_at) if rec.scored_at else None,
        "stream_time": iso(stream_time),
        "audiences": list(rec.audiences),
        "features": features,
    }


async def lookup_user(settings: Settings, user_id: str) -> dict[str, Any] | None:
    store = StateStore.from_settings(settings)
    from stream.worker.forget import stored_id

    try:
        rec = await store.get(stored_id(settings, user_id))
        if rec is None:
            return None
        # Recomputed with the model version that scored the user, as the read API does.
        traits = ModelVersions(settings.model_dir).traits(rec)
        return describe(user_id, rec, await store.stream_time(), traits)
    finally:
        await store.close()
