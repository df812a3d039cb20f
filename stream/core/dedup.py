"""The deduplication rule: which re-sent events a user's state must not count again.

Pure, and the only implementation: the worker applies it per user before the
fold (``stream/worker/pipeline.py``) and training applies it per user before building
features and labels (``model/training/dataset.py``), so both count the same events.

The rule, per user:

* **Orders, cancellations and refunds** are the same event when they have the
  same ``(event_type, order_id)``. They are remembered for as long as the user
  is kept (retention), so a producer that re-sends an order a month later, after
  thousands of newer events, still does not count it twice. An order id is kept
  once, as a 37-bit digest with one flag bit per event type: five bytes per
  order whatever happened to it.
* **Clicks** are the same event when they have the same ``event_id``, within a
  window of the user's own event time (default 24 h, what Segment's API
  promises for its message ids), measured back from the hour of their newest
  click (so the decision does not depend on how the clickstream and orders
  topics interleave). A click is remembered by the hour of its
  timestamp and a 32-bit digest of its id; a re-send carries the original's
  timestamp, so it is looked up in that hour only.

What the window does not cover: a click re-sent with a timestamp more than the
window (to the hour) before the user's newest click is counted again. (A redelivery of the
*same record* after a crash is still caught, whatever its age, by the
per-partition offset marks the worker keeps beside this.) Digests can collide:
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

from stream.core.events import HOUR_MS

DEFAULT_CLICK_WINDOW_MS = 24 * HOUR_MS

_ORDER_FLAG = {"order_placed": 1, "order_cancelled": 2, "order_refunded": 4}
_ORDER_DIGEST_BITS = 37  # + 3 flag bits = 5 bytes


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

    #: order-id digest -> the event types seen for it (bit flags)
    orders: dict[int, int] = field(default_factory=dict)
    #: (hour of the click's timestamp, digest of its event id)
    clicks: set[tuple[int, int]] = field(default_factory=set)
    #: max hour in ``clicks``, kept so that admitting a click is not a scan of
    #: them all; -1 = not known yet (worked out on first use).
    newest_hour: int = field(default=-1, compare=False)

    def copy(self) -> SeenEvents:
        return SeenEvents(dict(self.orders), set(self.clicks), self.newest_hour)

    def encoded_size(self) -> int:
        """Bytes :func:`encode` takes (for the memory budget)."""
        hours = {h for h, _ in self.clicks}
        return 6 + 5 * len(self.orders) + 6 * len(hours) + 4 * len(self.clicks)


def admit(seen: SeenEvents, event: _Event, latest_ms: int, click_window_ms: int) -> bool:
    """Whether ``event`` is new for its user; if so, remember it in ``seen``.

    ``latest_ms``, the largest event time counted for the user so far, is not
    read by the rule: the click window runs back from the newest click
    remembered (see the module's docstring), and clicks older than it are
    forgotten here. ``click_window_ms`` 0 remembers no clicks.
    """
    flag = _ORDER_FLAG.get(event.event_type)
    ts = event.timestamp
    if flag is not None:
        key = order_digest(event.order_id)  # type: ignore[attr-defined]
        held = seen.orders.get(key, 0)
        if held & flag:
            return False
        seen.orders[key] = held | flag
    elif click_window_ms > 0:
        # The window runs back from the user's newest remembered click hour,
        # not from their newest event of any kind: clicks arrive in their own
        # partition's order, but how they interleave with the orders topic
        # differs between a live worker and a replay, and the rule must not.
        hour = ts // HOUR_MS
        newest = seen.newest_hour
        if newest < 0:
            newest = max((h for h, _ in seen.clicks), default=hour)
        if hour < (newest * HOUR_MS - click_window_ms) // HOUR_MS:
            seen.newest_hour = newest
            return True  # older than the window: cannot tell, counted
        item = (hour, click_digest(event.event_id))
        if item in seen.clicks:
            seen.newest_hour = newest
            return False
        seen.clicks.add(item)
        if hour > newest or len(seen.clicks) == 1:
            oldest = (hour * HOUR_MS - click_window_ms) // HOUR_MS
            if min(h for h, _ in seen.clicks) < oldest:
                seen.clicks = {c for c in seen.clicks if c[0] >= oldest}
        seen.newest_hour = max(newest, hour)
    return True


def admitted(
    events: Iterable[E],
    user_of: Callable[[E], str],
    click_window_ms: int = DEFAULT_CLICK_WINDOW_MS,
) -> Iterator[E]:
    """The events the rule keeps, in the given (arrival) order, for many users at once.

    Training's form of :func:`admit`: one :class:`SeenEvents` and one latest
    time per user, exactly as the worker keeps them in the user's record.
    """
    state: dict[str, tuple[SeenEvents, int]] = {}
    for event in events:
        uid = user_of(event)
        seen, latest = state.get(uid) or (SeenEvents(), 0)
        if admit(seen, event, latest, click_window_ms):
            state[uid] = (seen, max(latest, event.timestamp))
            yield event
        else:
            state[uid] = (seen, latest)


def encode(seen: SeenEvents) -> bytes:
    """Compact bytes: orders as 5-byte (digest << 3 | flags), clicks grouped by hour."""
    # Every commit re-encodes each touched user's memory: one join over
    # prepacked parts, not a bytes object per digest and flag.
    n = len(seen.orders)
    packed = b"".join([((d << 3) | f).to_bytes(5, "little") for d, f in seen.orders.items()])
    by_hour: dict[int, list[int]] = {}
    for hour, digest in seen.clicks:
        by_hour.setdefault(hour, []).append(digest)
    parts = [_U32.pack(n), packed, _U16.pack(len(by_hour))]
    for hour in sorted(by_hour):
        digests = sorted(by_hour[hour])
        parts.append(_HOUR.pack(hour, len(digests)))
        parts.append(struct.pack(f"<{len(digests)}I", *digests))
    return b"".join(parts)


def decode(data: bytes | memoryview, pos: int = 0) -> tuple[SeenEvents, int]:
    """Read what :func:`encode` wrote at ``pos``; returns it and the position after it."""
    view = memoryview(data)
    (n,) = _U32.unpack_from(view, pos)
    pos += 4
    raw = view[pos : pos + 5 * n].tobytes()
    orders = {}
    for i in range(0, 5 * n, 5):
        value = int.from_bytes(raw[i : i + 5], "little")
        orders[value >> 3] = value & 7
    pos += 5 * n
    clicks: set[tuple[int, int]] = set()
    (hours,) = _U16.unpack_from(view, pos)
    pos += 2
    newest = -1
    for _ in range(hours):
        hour, count = _HOUR.unpack_from(view, pos)
        pos += 6
        clicks.update((hour, d) for d in struct.unpack_from(f"<{count}I", view, pos))
        pos += 4 * count
        newest = max(newest, hour)
    return SeenEvents(orders, clicks, newest), pos


_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
_HOUR = struct.Struct("<IH")
