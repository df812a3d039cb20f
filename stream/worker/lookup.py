"""Read one user's segment and features from Redis (`segmenter user`, tests, the read API)."""

from __future__ import annotations

from typing import Any

from model.features import raw_features, round_features
from stream.core.events import iso
from stream.settings import Settings
from stream.worker.store import StateStore, UserRecord


def describe(user_id: str, rec: UserRecord, stream_time: int) -> dict[str, Any]:
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
        "model_version": rec.model_version,
        "version": rec.version,
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
        return describe(user_id, rec, await store.stream_time())
    finally:
        await store.close()
