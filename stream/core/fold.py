"""The fold: one event into one user's state. Pure, shared by the worker and training.

Design choices that the rest of the system relies on:

* **Event time only.** Nothing here reads a clock. Windows are exponentially
  decayed counters keyed on event time, so adding a late event with its decayed
  weight gives the same value (up to float rounding) whatever the arrival order.
* **Bounded state.** Distinct categories are a fixed-size bitmap (linear
  counting) and sessions are counted against a short ring of the user's most
  recent session ids, so a user's Redis footprint does not grow with their
  history. Session counts are exact as long as a late event does not belong
  to a session older than the last :data:`RECENT_SESSIONS` of that user.
* **Deterministic.** Hashes are CRC32, not Python's salted ``hash()``, so the
  live worker and an offline replay build byte-identical state from the same
  events in the same order.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

from stream.core.events import DAY_MS, ClickEvent, ClickFact, Folded, OrderEvent, OrderFact

#: Decayed counters and their half-lives in days. "x_30d" approximates "x in
#: the last 30 days": an event 30 days old counts one half.
HALF_LIVES: dict[str, float] = {
    "orders_30d": 30.0,
    "orders_90d": 90.0,
    "spend_30d": 30.0,
    "spend_90d": 90.0,
    "views_30d": 30.0,
    "carts_30d": 30.0,
    "sessions_30d": 30.0,
}

# The counters grouped by half-life: one exp2 per group, not per counter.
_BY_HALF_LIFE: tuple[tuple[float, tuple[str, ...]], ...] = tuple(
    (hl, tuple(name for name, h in HALF_LIVES.items() if h == hl))
    for hl in dict.fromkeys(HALF_LIVES.values())
)

RECENT_SESSIONS = 4
CATEGORY_BITS = 64


def decay(value: float, elapsed_ms: int, half_life_days: float) -> float:
    """``value`` after ``elapsed_ms`` of exponential decay (no growth for negative spans)."""
    if elapsed_ms <= 0:
        return value
    return value * math.exp2(-elapsed_ms / (half_life_days * DAY_MS))


def decayed_by(counters: dict[str, float], elapsed_ms: int) -> dict[str, float]:
    """Every counter of :data:`HALF_LIVES` after ``elapsed_ms`` (> 0) of decay.

    Exactly :func:`decay` per counter, with one ``exp2`` per distinct half-life
    instead of one per counter: this runs for every event and every scoring.
    """
    out = dict(counters)
    _decay_in_place(out, elapsed_ms)
    return out


def _decay_in_place(counters: dict[str, float], elapsed_ms: int) -> None:
    # The fold's form of decayed_by: the state's own dict, no copy per event.
    # Plain loops: on Python 3.11 a comprehension is a function call of its own.
    for hl, names in _BY_HALF_LIFE:
        factor = math.exp2(-elapsed_ms / (hl * DAY_MS))
        for name in names:
            counters[name] *= factor


def linear_count(bitmap: int, bits: int) -> float:
    """Distinct-count estimate from a bitmap (Whang et al., linear counting)."""
    zeros = bits - bitmap.bit_count()
    if zeros == 0:
        # Saturated: report the estimate at one free bit, the largest it can say.
        zeros = 1
    return -bits * math.log(zeros / bits)


#: round(linear_count(bitmap)) by the bitmap's bit count: the estimate reads
#: nothing else, and the features ask for it on every scoring.
_DISTINCT = tuple(
    round(linear_count((1 << n) - 1, CATEGORY_BITS)) for n in range(CATEGORY_BITS + 1)
)


def _bit(text: str, bits: int) -> int:
    return 1 << (zlib.crc32(text.encode("utf-8")) % bits)


@dataclass(slots=True)
class UserState:
    """Everything the features need, as of the user's own latest event (``last_seen``)."""

    first_seen: int = 0
    last_seen: int = 0
    last_order_at: int | None = None
    #: Time of the first order: buy-till-you-die models measure a customer's
    #: age from it, and the mean gap between orders needs it.
    first_order_at: int | None = None
    order_count: int = 0
    cancel_count: int = 0
    refund_count: int = 0
    total_spend: float = 0.0
    returned_spend: float = 0.0
    product_views: int = 0
    cart_adds: int = 0
    events: int = 0
    session_count: int = 0
    #: CRC32s of the most recent session ids, newest last (RECENT_SESSIONS long)
    recent_sessions: list[int] = field(default_factory=list)
    categories: int = 0  # bitmap, CATEGORY_BITS wide
    #: decayed counters, valued at ``last_seen``
    decayed: dict[str, float] = field(default_factory=lambda: dict.fromkeys(HALF_LIVES, 0.0))

    @property
    def distinct_categories(self) -> int:
        return _DISTINCT[self.categories.bit_count()]

    def copy(self) -> UserState:
        clone = UserState.__new__(UserState)
        for f in fields(self):
            setattr(clone, f.name, getattr(self, f.name))
        clone.decayed = dict(self.decayed)
        clone.recent_sessions = list(self.recent_sessions)
        return clone


def _add_decayed(state: UserState, name: str, weight: float, ts: int) -> None:
    # Counters are valued at state.last_seen; an older event enters with the
    # weight it would have by now, which makes the sum order-independent.
    state.decayed[name] += decay(weight, state.last_seen - ts, HALF_LIVES[name])


def _advance(state: UserState, ts: int) -> None:
    if state.events == 0:
        state.first_seen = state.last_seen = ts
        return
    if ts > state.last_seen:
        _decay_in_place(state.decayed, ts - state.last_seen)
        state.last_seen = ts
    state.first_seen = min(state.first_seen, ts)


def apply(state: UserState, event: Folded) -> None:
    """Fold ``event`` into ``state`` in place. The batch path uses this on states it owns."""
    ts = event.timestamp
    _advance(state, ts)
    state.events += 1
    if isinstance(event, ClickEvent | ClickFact):
        _apply_click(state, event, ts)
    else:
        _apply_order(state, event, ts)


def _apply_click(state: UserState, event: ClickEvent | ClickFact, ts: int) -> None:
    sid = zlib.crc32(event.session_id.encode("utf-8"))
    if sid not in state.recent_sessions:
        state.session_count += 1
        state.recent_sessions.append(sid)
        del state.recent_sessions[:-RECENT_SESSIONS]
        _add_decayed(state, "sessions_30d", 1.0, ts)
    if event.category:
        state.categories |= _bit(event.category, CATEGORY_BITS)
    if event.event_type == "product_view":
        state.product_views += 1
        _add_decayed(state, "views_30d", 1.0, ts)
    elif event.event_type == "add_to_cart":
        state.cart_adds += 1
        _add_decayed(state, "carts_30d", 1.0, ts)


def _apply_order(state: UserState, event: OrderEvent | OrderFact, ts: int) -> None:
    if event.event_type == "order_placed":
        state.order_count += 1
        state.total_spend += event.total
        state.last_order_at = ts if state.last_order_at is None else max(state.last_order_at, ts)
        state.first_order_at = ts if state.first_order_at is None else min(state.first_order_at, ts)
        _add_decayed(state, "orders_30d", 1.0, ts)
        _add_decayed(state, "orders_90d", 1.0, ts)
        _add_decayed(state, "spend_30d", event.total, ts)
        _add_decayed(state, "spend_90d", event.total, ts)
        for item in event.items or ():
            if item.category:
                state.categories |= _bit(item.category, CATEGORY_BITS)
    else:
        # Returns are kept apart from gross spend: the ratio is itself a signal,
        # and netting them would let a refund arriving late rewrite history.
        if event.event_type == "order_cancelled":
            state.cancel_count += 1
        else:
            state.refund_count += 1
        state.returned_spend += event.total


def fold(state: UserState | None, event: Folded) -> UserState:
    """Pure form of :func:`apply`: returns a new state, leaves ``state`` alone."""
    new = UserState() if state is None else state.copy()
    apply(new, event)
    return new


def fold_all(events: Sequence[Folded], state: UserState | None = None) -> UserState:
    """Fold a sequence of one user's events, in the given order."""
    new = UserState() if state is None else state.copy()
    for event in events:
        apply(new, event)
    return new
