"""Event contracts for the input topics, and the decoder that guards them.

Pure: no faust, no redis, no Kafka client. The worker, the importers and the
training job all decode through :func:`decode`, so one set of rules decides
what is an event and what is dead-lettered.

``decode`` never raises on input. It returns either a validated event or a
:class:`Rejected` carrying a machine-readable reason code and a human detail;
the caller dead-letters the latter with the original bytes untouched.
"""

from __future__ import annotations

import functools
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal, Protocol, get_args, overload

import msgspec
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

#: The event types of each topic; both decoders validate against these.
ClickType = Literal[
    "page_view",
    "product_view",
    "search",
    "add_to_cart",
    "remove_from_cart",
    "checkout_start",
]
OrderType = Literal["order_placed", "order_cancelled", "order_refunded"]
CLICK_TYPES: tuple[str, ...] = get_args(ClickType)
ORDER_TYPES: tuple[str, ...] = get_args(OrderType)

#: Time units, in the milliseconds every event time is kept in.
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

#: The default floor (SEGMENTER_MIN_EVENT_TIME): an epoch given in seconds
#: instead of milliseconds lands before it. Archives older than this can lower it.
MIN_TIMESTAMP_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
#: Money above this is a unit error or an attack on the features, not a sale.
MAX_MONEY = 10_000_000.0
MAX_ID_LEN = 256


class Reason(StrEnum):
    """Why an event was dead-lettered. Stable codes: alerts and dashboards key on them."""

    TOO_LARGE = "too_large"
    INVALID_JSON = "invalid_json"
    SCHEMA = "schema"
    KEY_MISMATCH = "key_mismatch"
    TIMESTAMP_RANGE = "timestamp_range"
    UNKNOWN_TOPIC = "unknown_topic"
    TOO_LATE = "too_late"
    #: Decoded, but processing it failed the same way every time it was tried
    #: (SEGMENTER_MAX_BATCH_FAILURES): set aside so that the partition goes on.
    PROCESSING_FAILED = "processing_failed"


def _to_epoch_ms(value: object) -> int:
    """Accept epoch milliseconds or ISO-8601 *with a zone*; anything else is a schema error.

    A naive ISO timestamp is refused rather than guessed: assuming UTC for a
    producer in another zone would silently shift every recency feature.
    """
    if isinstance(value, bool):
        raise ValueError("timestamp must be epoch milliseconds or ISO-8601, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("timestamp must be finite")
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"timestamp {value[:40]!r} is not ISO-8601") from exc
        if parsed.tzinfo is None:
            raise ValueError("ISO-8601 timestamp must carry a zone (e.g. Z or +02:00)")
        return int(parsed.timestamp() * 1000)
    raise ValueError("timestamp must be epoch milliseconds or an ISO-8601 string")


_BARE_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_instant(text: str) -> int:
    """A time people type, in epoch ms: ``YYYY-MM-DD`` is midnight UTC that day;
    anything longer is ISO-8601 and must carry its zone (``Z`` or ``+02:00``).

    Raises ValueError with a message that says what to type instead.
    """
    text = text.strip()
    if _BARE_DATE.match(text):
        try:
            day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            raise ValueError(f"{text!r} is not a calendar date") from None
        return int(day.timestamp() * 1000)
    try:
        return _to_epoch_ms(text)
    except ValueError as exc:
        raise ValueError(
            f"{text!r}: {exc}; give a date (YYYY-MM-DD, midnight UTC) or ISO-8601 with a zone "
            "(2024-03-01T12:00:00Z)"
        ) from None


EpochMs = Annotated[int, BeforeValidator(_to_epoch_ms)]
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LEN)]
Money = Annotated[float, Field(ge=0, le=MAX_MONEY, allow_inf_nan=False, strict=True)]


class _Event(BaseModel):
    # extra="ignore": producers may add fields without breaking us (the
    # contract says unknown fields are accepted). frozen: events are facts.
    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=False)

    event_id: Id
    user_id: Id
    timestamp: EpochMs


class ClickEvent(_Event):
    event_type: ClickType
    session_id: Id
    product_id: Id | None = None
    category: Annotated[str, Field(max_length=MAX_ID_LEN)] | None = None
    price: Money | None = None


class OrderItem(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    product_id: Id
    category: Annotated[str, Field(max_length=MAX_ID_LEN)] | None = None
    quantity: Annotated[int, Field(ge=0, le=1_000_000, strict=True)]
    unit_price: Money


class OrderEvent(_Event):
    event_type: OrderType
    order_id: Id
    total: Money
    currency: Annotated[str, Field(max_length=8)] | None = None
    items: Annotated[list[OrderItem], Field(max_length=1000)] | None = None


Event = ClickEvent | OrderEvent


# Training holds every replayed event at once; a validated model costs about
# 1.2 KB each (its __dict__, the fields-set record, a string per id). These
# keep only what the fold, the labels and dedup read, with ids interned (a
# user's events share one string): a few hundred bytes. msgspec Structs, not
# frozen dataclasses: the worker builds one per record, and a frozen
# dataclass's __init__ (one object.__setattr__ per field) cost 1.6 us of it,
# a Struct 0.2 us. gc=False: they hold no references back, so they never need
# the cycle collector, and they are 16 bytes smaller for it.
class ItemFact(msgspec.Struct, frozen=True, gc=False):
    category: str | None


class ClickFact(msgspec.Struct, frozen=True, gc=False):
    event_id: str
    user_id: str
    timestamp: int
    event_type: str
    session_id: str
    category: str | None


class OrderFact(msgspec.Struct, frozen=True, gc=False):
    event_id: str
    user_id: str
    timestamp: int
    event_type: str
    order_id: str
    total: float
    items: tuple[ItemFact, ...] | None


Fact = ClickFact | OrderFact
#: What the fold, the labels and dedup accept: a decoded event, or its fact.
Folded = ClickEvent | OrderEvent | ClickFact | OrderFact

_intern = sys.intern
# Few distinct categories, many items: one shared fact per category.
_item = functools.lru_cache(maxsize=4096)(ItemFact)


class _ClickFields(Protocol):
    """What a click fact is built from: a validated ClickEvent, or the fast decoder's struct."""

    @property
    def event_id(self) -> str: ...
    @property
    def user_id(self) -> str: ...
    @property
    def event_type(self) -> str: ...
    @property
    def session_id(self) -> str: ...
    @property
    def category(self) -> str | None: ...


class _ItemFields(Protocol):
    @property
    def category(self) -> str | None: ...


class _OrderFields(Protocol):
    """What an order fact is built from: a validated OrderEvent, or the fast decoder's struct."""

    @property
    def event_id(self) -> str: ...
    @property
    def user_id(self) -> str: ...
    @property
    def event_type(self) -> str: ...
    @property
    def order_id(self) -> str: ...
    @property
    def total(self) -> float: ...
    @property
    def items(self) -> Sequence[_ItemFields] | None: ...


def click_fact(event: _ClickFields, timestamp: int) -> ClickFact:
    """The compact form of a validated click (both decoders build it here)."""
    category = event.category
    return ClickFact(
        event.event_id,
        _intern(event.user_id),
        timestamp,
        _intern(event.event_type),
        _intern(event.session_id),
        None if category is None else _intern(category),
    )


def order_fact(event: _OrderFields, timestamp: int) -> OrderFact:
    """The compact form of a validated order (both decoders build it here)."""
    items = None if event.items is None else tuple(_item(i.category) for i in event.items)
    return OrderFact(
        event.event_id,
        _intern(event.user_id),
        timestamp,
        _intern(event.event_type),
        event.order_id,
        event.total,
        items,
    )


def fact(event: Event) -> Fact:
    """The compact form of a validated event (see :class:`ClickFact`)."""
    if isinstance(event, ClickEvent):
        return click_fact(event, event.timestamp)
    return order_fact(event, event.timestamp)


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: Reason
    detail: str


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    max_bytes: int = 64 * 1024
    #: How far past the wall clock an event may claim to be. Beyond this it
    #: would drag stream time (and every user's recency) into the future.
    max_future_ms: int = 24 * 3600 * 1000
    #: Events before this are rejected (SEGMENTER_MIN_EVENT_TIME).
    min_timestamp_ms: int = MIN_TIMESTAMP_MS


def _schema_detail(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def decode(
    kind: Literal["clickstream", "orders"],
    key: bytes | None,
    value: bytes | None,
    *,
    now_ms: int,
    limits: DecodeLimits = DecodeLimits(),
) -> Event | Rejected:
    """Validate one raw record. Never raises on bad input."""
    if value is None:
        return Rejected(Reason.SCHEMA, "record has no value")
    if len(value) > limits.max_bytes:
        return Rejected(
            Reason.TOO_LARGE, f"value is {len(value)} bytes, over the {limits.max_bytes} limit"
        )
    model: type[ClickEvent] | type[OrderEvent] = ClickEvent if kind == "clickstream" else OrderEvent
    try:
        event = model.model_validate_json(value)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            return Rejected(Reason.INVALID_JSON, _schema_detail(exc))
        return Rejected(Reason.SCHEMA, _schema_detail(exc))
    except (ValueError, RecursionError) as exc:  # pragma: no cover - defensive
        return Rejected(Reason.INVALID_JSON, str(exc)[:200])
    return envelope_problem(key, event.user_id, event.timestamp, now_ms, limits) or event


def envelope_problem(
    key: bytes | None, user_id: str, timestamp: int, now_ms: int, limits: DecodeLimits
) -> Rejected | None:
    """What is wrong with a schema-valid event's key or time, if anything.

    One rule for both decoders (:func:`decode`, and the fast
    :func:`stream.core.wire.decode_fact`).
    """
    # Keys route users to partitions, and partition ownership is what keeps
    # one user's events in order on one worker: a mismatched key breaks that.
    # Compared as bytes: a lossy decode of the key (errors="replace") would let a
    # key that is not UTF-8 pass for an id holding U+FFFD. The detail quotes
    # neither the key nor the id: it is logged and sent as the x-dlq-detail
    # header, and ids are personal data (the DLQ record keeps the original key).
    if key is None:
        return Rejected(Reason.KEY_MISMATCH, "record has no key; it must be the user_id")
    try:
        expected = user_id.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (a JSON escape): no key can match it
        return Rejected(Reason.KEY_MISMATCH, "user_id is not valid Unicode; no key can match it")
    if key != expected:
        return Rejected(
            Reason.KEY_MISMATCH,
            f"record key ({len(key)} bytes) differs from the UTF-8 user_id ({len(expected)} bytes)",
        )
    if timestamp < limits.min_timestamp_ms:
        return Rejected(
            Reason.TIMESTAMP_RANGE,
            f"timestamp {timestamp} is before {iso(limits.min_timestamp_ms)} "
            "(SEGMENTER_MIN_EVENT_TIME)",
        )
    if timestamp > now_ms + limits.max_future_ms:
        return Rejected(
            Reason.TIMESTAMP_RANGE,
            f"timestamp {timestamp} is more than {limits.max_future_ms} ms in the future",
        )
    return None


@overload
def iso(ms: int) -> str: ...
@overload
def iso(ms: None) -> None: ...
def iso(ms: int | None) -> str | None:
    """Epoch ms to an ISO-8601 UTC string, for messages people read."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")
