"""The deduplication rule: which re-sent events a user's state must not count again.

Pure, and the only implementation: the worker applies it per user before the
fold (``stream/worker/pipeline.py``) and training applies it per user before building
features and labels (``model/training/dataset.py``), so both count the same events.

The rule, per user:

* **Orders, cancellations and refunds** are the same event when they have the
  same ``(event_type, order_id)``. They are remembered for as long as the user
  is kept (``SEGMENTER_RETENTION_DAYS``, the ``order_memory_ms`` here), counted
  back from the day of the user's newest order: a producer that re-sends an
  order a month later, after thousands of newer events, still does not count it
  twice, and a user with years of orders carries only the last retention's
  worth. An order id is kept once, as a 37-bit digest with one flag bit per
  event type and the day of its newest event: seven bytes per order whatever
  happened to it.
* **Clicks** are the same event when they have the same ``event_id``, within a
  window of the user's own event time (default 24 h, what Segment's API
  promises for its message ids), measured back from the hour of their newest
  click (so the decision does not depend on how the clickstream and orders
  topics interleave). A click is remembered by the hour of its
  timestamp and a 32-bit digest of its id; a re-send carries the original's
  timestamp, so it is looked up in that hour only. At most
  :data:`CLICK_MEMORY_PER_HOUR` clicks are remembered per user and clock hour:
  a person does not view that many distinct products in an hour, a bot can
  send 100,000, and its memory would otherwise be carried through every batch
  that touches it. Past the cap that hour's further clicks are counted
  without dedup (not remembered, so a re-send of one is counted again); the
  first ones stay remembered. ``SeenEvents.past_cap`` counts them for the
  worker's ``segmenter_click_memory_full_total``.

What the memory does not cover: a click re-sent with a timestamp more than the
window (to the hour) before the user's newest click is counted again, and so
is an order re-sent with a timestamp more than the order memory (to the day)
before the user's newest order. The worker never gets that far with the
latter: ``SEGMENTER_RETENTION_DAYS`` is also its lateness bound, and such an
order is older than that bound before its partition's stream time, so it is
dead-lettered as ``too_late``. (A redelivery of the *same record* after a
crash is still caught, whatever its age, by the per-partition offset marks the
worker keeps beside this.) Digests can collide:
two distinct orders of one user share a digest with probability about
``n / 2**37`` per new order for a user with ``n`` orders, and the later one
would be dropped; for clicks it is ``m / 2**32`` with ``m`` clicks in the same
hour. Both are far below any other source of error in the features.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from stream.core.events import DAY_MS, HOUR_MS

DEFAULT_CLICK_WINDOW_MS = 24 * HOUR_MS
#: The default of SEGMENTER_RETENTION_DAYS: how long orders are remembered.
DEFAULT_ORDER_MEMORY_MS = 400 * DAY_MS
#: Clicks remembered per user and clock hour of event time (4 bytes each, so at
#: most 8 KB an hour, about 200 KB for the default 24-hour window). Also what
#: keeps an hour's count within the two bytes its encoding gives it.
CLICK_MEMORY_PER_HOUR = 2048

_ORDER_FLAG = {"order_placed": 1, "order_cancelled": 2, "order_refunded": 4}
_ORDER_DIGEST_BITS = 37  # + 3 flag bits = 5 bytes, + a 2-byte day = 7
_LOW = (1 << 40) - 1  # digest << 3 | flags, in an encoded order


class _Event(Protocol):
    """What the rule reads of an event (stream.core.events.ClickEvent / OrderEvent)."""

    @property
    def event_id(self) -> str: ...
    @property
    def event_type(self) -> str: ...
    @property
    def timestamp(self) -> int: ...


E = TypeVar("E", bound=_Event)


def _digest(text: str, bits: int) -> int:
    raw = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(raw, "little") >> (64 - bits)


def order_digest(order_id: str) -> int:
    """The 37-bit digest an order id is remembered by."""
    return _digest(order_id, _ORDER_DIGEST_BITS)


def click_digest(event_id: str) -> int:
    """The 32-bit digest a click's event id is remembered by.

    CRC-32, not BLAKE2: every click is digested on the worker's hot path, CRC-32
    is several times cheaper, and 32 bits are all that is kept either way.
    """
    return zlib.crc32(event_id.encode("utf-8"))


@dataclass(slots=True)
class SeenEvents:
    """One user's memory of the events already counted."""

    #: order-id digest -> day of its newest event << 3 | the event types seen
    #: for it (bit flags)
    orders: dict[int, int] = field(default_factory=dict)
    #: hour of the click's timestamp -> digests of the event ids (never empty)
    clicks: dict[int, set[int]] = field(default_factory=dict)
    #: max hour in ``clicks``, kept so that admitting a click is not a scan of
    #: them all; -1 = not known yet (worked out on first use).
    newest_hour: int = field(default=-1, compare=False)
    #: max day in ``orders``, likewise; -1 = not known yet.
    newest_day: int = field(default=-1, compare=False)
    #: Clicks counted without being remembered since this memory was made
    #: (their hour was full): not stored, read by the worker for a metric.
    past_cap: int = field(default=0, compare=False)

    def copy(self) -> SeenEvents:
        clicks = {h: set(d) for h, d in self.clicks.items()}
        return SeenEvents(dict(self.orders), clicks, self.newest_hour, self.newest_day)

    def encoded_size(self) -> int:
        """Bytes :func:`encode` takes (for the memory budget)."""
        orders = 4 + (4 + 7 * len(self.orders) if self.orders else 0)
        return orders + 2 + sum(6 + 4 * len(d) for d in self.clicks.values())


def _admit_order(seen: SeenEvents, flag: int, event: _Event, order_memory_ms: int) -> bool:
    day = event.timestamp // DAY_MS
    newest = seen.newest_day
    if newest < 0:
        newest = max((v >> 3 for v in seen.orders.values()), default=day)
    if order_memory_ms > 0 and day < (newest * DAY_MS - order_memory_ms) // DAY_MS:
        seen.newest_day = newest
        return True  # older than the memory: cannot tell, counted
    key = order_digest(event.order_id)  # type: ignore[attr-defined]
    held = seen.orders.get(key, 0)
    if held & flag:
        seen.newest_day = newest
        return False
    # The day of the order's newest event: a re-send of any of its events is
    # at most that old, so it is looked up while the order is remembered.
    seen.orders[key] = (max(day, held >> 3) << 3) | (held & 7) | flag
    if day > newest and order_memory_ms > 0:
        oldest = (day * DAY_MS - order_memory_ms) // DAY_MS
        seen.orders = {k: v for k, v in seen.orders.items() if v >> 3 >= oldest}
    seen.newest_day = max(newest, day)
    return True


def _admit_click(seen: SeenEvents, event: _Event, click_window_ms: int) -> bool:
    # The window runs back from the user's newest remembered click hour,
    # not from their newest event of any kind: clicks arrive in their own
    # partition's order, but how they interleave with the orders topic
    # differs between a live worker and a replay, and the rule must not.
    hour = event.timestamp // HOUR_MS
    newest = seen.newest_hour
    if newest < 0:
        newest = max(seen.clicks, default=hour)
    seen.newest_hour = newest
    if hour < (newest * HOUR_MS - click_window_ms) // HOUR_MS:
        return True  # older than the window: cannot tell, counted
    digest = click_digest(event.event_id)
    held = seen.clicks.get(hour)
    if held is not None:
        if digest in held:
            return False
        if len(held) >= CLICK_MEMORY_PER_HOUR:
            seen.past_cap += 1
            return True  # the hour's memory is full: counted, not remembered
        held.add(digest)
    else:
        seen.clicks[hour] = {digest}
    if hour > newest:
        oldest = (hour * HOUR_MS - click_window_ms) // HOUR_MS
        for gone in [h for h in seen.clicks if h < oldest]:
            del seen.clicks[gone]
        seen.newest_hour = hour
    return True


def admit(
    seen: SeenEvents,
    event: _Event,
    latest_ms: int,
    click_window_ms: int,
    order_memory_ms: int = DEFAULT_ORDER_MEMORY_MS,
) -> bool:
    """Whether ``event`` is new for its user; if so, remember it in ``seen``.

    ``latest_ms``, the largest event time counted for the user so far, is not
    read by the rule: the click window runs back from the newest click
    remembered and the order memory from the newest order (see the module's
    docstring); what is older is forgotten here. ``click_window_ms`` 0
    remembers no clicks; ``order_memory_ms`` 0 remembers orders for ever.
    """
    flag = _ORDER_FLAG.get(event.event_type)
    if flag is not None:
        return _admit_order(seen, flag, event, order_memory_ms)
    if click_window_ms > 0:
        return _admit_click(seen, event, click_window_ms)
    return True


def admitted(
    events: Iterable[E],
    user_of: Callable[[E], str],
    click_window_ms: int = DEFAULT_CLICK_WINDOW_MS,
    order_memory_ms: int = DEFAULT_ORDER_MEMORY_MS,
) -> Iterator[E]:
    """The events the rule keeps, in the given (arrival) order, for many users at once.

    Training's form of :func:`admit`: one :class:`SeenEvents` and one latest
    time per user, exactly as the worker keeps them in the user's record.
    """
    state: dict[str, tuple[SeenEvents, int]] = {}
    for event in events:
        uid = user_of(event)
        seen, latest = state.get(uid) or (SeenEvents(), 0)
        if admit(seen, event, latest, click_window_ms, order_memory_ms):
            state[uid] = (seen, max(latest, event.timestamp))
            yield event
        else:
            state[uid] = (seen, latest)


def encode(seen: SeenEvents) -> bytes:
    """Compact bytes: orders as 7-byte (day offset << 40 | digest << 3 | flags)
    after their first day, clicks grouped by hour."""
    # Every commit re-encodes each touched user's memory: one join over
    # prepacked parts, not a bytes object per digest and flag.
    n = len(seen.orders)
    parts = [_U32.pack(n)]
    if n:
        # Days are kept as 2-byte offsets from the oldest: 179 years of them.
        base = min(v >> 3 for v in seen.orders.values())
        parts.append(_I32.pack(base))
        parts.append(
            b"".join(
                [
                    (((v >> 3) - base) << 40 | (d << 3) | (v & 7)).to_bytes(7, "little")
                    for d, v in seen.orders.items()
                ]
            )
        )
    parts.append(_U16.pack(len(seen.clicks)))
    for hour in sorted(seen.clicks):
        digests = sorted(seen.clicks[hour])
        parts.append(_HOUR.pack(hour, len(digests)))
        parts.append(struct.pack(f"<{len(digests)}I", *digests))
    return b"".join(parts)


def decode(
    data: bytes | memoryview, pos: int = 0, undated_orders_day: int | None = None
) -> tuple[SeenEvents, int]:
    """Read what :func:`encode` wrote at ``pos``; returns it and the position after it.

    ``undated_orders_day``: read the older layout (user record codecs 4 and 6),
    whose orders carry no day, and date them all that day.
    """
    view = memoryview(data)
    (n,) = _U32.unpack_from(view, pos)
    pos += 4
    orders = {}
    if undated_orders_day is not None:
        raw = view[pos : pos + 5 * n].tobytes()
        day = undated_orders_day << 3
        for i in range(0, 5 * n, 5):
            value = int.from_bytes(raw[i : i + 5], "little")
            orders[value >> 3] = day | (value & 7)
        pos += 5 * n
    elif n:
        (base,) = _I32.unpack_from(view, pos)
        pos += 4
        raw = view[pos : pos + 7 * n].tobytes()
        for i in range(0, 7 * n, 7):
            value = int.from_bytes(raw[i : i + 7], "little")
            orders[(value & _LOW) >> 3] = ((base + (value >> 40)) << 3) | (value & 7)
        pos += 7 * n
    clicks: dict[int, set[int]] = {}
    (hours,) = _U16.unpack_from(view, pos)
    pos += 2
    newest = -1
    for _ in range(hours):
        hour, count = _HOUR.unpack_from(view, pos)
        pos += 6
        clicks[hour] = set(struct.unpack_from(f"<{count}I", view, pos))
        pos += 4 * count
        newest = max(newest, hour)
    return SeenEvents(orders, clicks, newest), pos


_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U16 = struct.Struct("<H")
_HOUR = struct.Struct("<IH")
