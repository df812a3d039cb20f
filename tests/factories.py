"""Event builders for tests: valid events by default, override what a test is about."""

from __future__ import annotations

import itertools
from typing import Any

import orjson

from stream.core.events import ClickEvent, OrderEvent

DAY = 86_400_000
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
_ids = itertools.count()


def click(
    user: str = "u1", ts: int = T0, kind: str = "product_view", **extra: Any
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "event_id": f"c-{next(_ids)}",
        "event_type": kind,
        "user_id": user,
        "session_id": extra.pop("session_id", f"s-{user}-{ts // 3_600_000}"),
        "timestamp": ts,
    }
    if kind in ("product_view", "add_to_cart", "remove_from_cart"):
        value.update(product_id="p1", category="shoes", price=49.5)
    value.update(extra)
    return value


def order(
    user: str = "u1", ts: int = T0, total: float = 100.0, kind: str = "order_placed", **extra: Any
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "event_id": f"o-{next(_ids)}",
        "event_type": kind,
        "user_id": user,
        "order_id": extra.pop("order_id", f"ord-{next(_ids)}"),
        "timestamp": ts,
        "total": total,
        "currency": "EUR",
        "items": [{"product_id": "p1", "category": "shoes", "quantity": 1, "unit_price": total}],
    }
    value.update(extra)
    return value


def as_event(value: dict[str, Any]) -> ClickEvent | OrderEvent:
    if value["event_type"].startswith("order_"):
        return OrderEvent.model_validate(value)
    return ClickEvent.model_validate(value)


def raw(value: dict[str, Any]) -> tuple[bytes, bytes]:
    return value["user_id"].encode(), orjson.dumps(value)
