"""The user record: what Redis holds per user, and its binary encoding.

A record is a fixed binary layout (about 300 bytes) rather than JSON or a hash
of fields: it is stored in shared hash buckets (stream.worker.state.store), where a
per-field hash would cost Redis a key's overhead per user. The codec number
lets a newer release read what an older one wrote.
"""

from __future__ import annotations

import functools
import operator
import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from stream.core import dedup
from stream.core.dedup import SeenEvents
from stream.core.events import DAY_MS
from stream.core.fold import HALF_LIVES, UserState

CODEC_VERSION = 7
#: Older codecs this code still reads. 2 and 3 kept rings of recent event-id
#: digests, which cannot be turned into order-id digests: their users start
#: with an empty deduplication memory (offset marks still hold). 4 had no
#: audiences (its users are in none until they are next scored) and other
#: click digests (its users' click memory starts empty). 5 had no first-order
#: time: its buyers take their first activity as it (exact on orders-only data).
#: 6 had no order days: its orders are dated the user's last order (kept for a
#: retention from then).
_READABLE_CODECS = (2, 3, 4, 6, CODEC_VERSION)
_DECAYED = tuple(HALF_LIVES)


@dataclass(slots=True)
class UserRecord:
    state: UserState = field(default_factory=UserState)
    segment: str | None = None
    probabilities: dict[str, float] | None = None
    #: Per-user change counter: +1 on every published segment change.
    version: int = 0
    model_version: str | None = None
    #: ``topic:partition`` -> last applied offset, for this user's events.
    offsets: dict[str, int] = field(default_factory=dict)
    #: The events already counted, against re-sends (``stream.core.dedup``).
    seen: SeenEvents = field(default_factory=SeenEvents)
    #: Event time as of which the user was last scored: scoring never goes back
    #: in time, even for a late event (their state is then valued at this time).
    scored_at: int = 0
    #: Event time of the next time-driven step (re-score or erasure); 0 = none.
    due: int = 0
    #: Partition number the user's events arrive on (-1 = not known yet).
    partition: int = -1
    #: Storage revision for optimistic concurrency; 0 = not stored yet.
    rev: int = 0
    #: When the user was last erased on request (epoch ms; 0 = never, within
    #: the erasure list's keep time). Their events from before it are dropped.
    #: Stored only for a user who came back after erasure (8 bytes then).
    erased_at: int = 0
    #: Rule audiences the user is in (stream.worker.rules.audiences), sorted.
    audiences: tuple[str, ...] = ()
    #: Per-user counter of audience events: +1 on every enter or exit.
    audience_version: int = 0

    @property
    def exists(self) -> bool:
        return self.rev > 0


# The fixed part of a record, written once for both directions: (struct
# code, field). Its order is the byte order: rev and codec | the state's
# fields | its decayed counters (HALF_LIVES order) | the record's fields |
# the number of recent sessions. Variable parts follow, each with a one-byte
# length. ``last_order_at`` None is stored as -1.
_STATE_FIELDS = (
    ("q", "first_seen"),
    ("q", "last_seen"),
    ("q", "last_order_at"),
    ("I", "order_count"),
    ("I", "cancel_count"),
    ("I", "refund_count"),
    ("d", "total_spend"),
    ("d", "returned_spend"),
    ("I", "product_views"),
    ("I", "cart_adds"),
    ("I", "events"),
    ("I", "session_count"),
    ("Q", "categories"),
)
_RECORD_FIELDS = (("I", "version"), ("q", "scored_at"), ("q", "due"), ("h", "partition"))
_FIXED = struct.Struct(
    "<IB"
    + "".join(code for code, _ in _STATE_FIELDS)
    + "d" * len(_DECAYED)
    + "".join(code for code, _ in _RECORD_FIELDS)
    + "B"
)
_STATE_NAMES = tuple(name for _, name in _STATE_FIELDS)
_RECORD_NAMES = tuple(name for _, name in _RECORD_FIELDS)
# attrgetter with several names returns them as one tuple, in C.
_state_values = operator.attrgetter(*_STATE_NAMES)
_record_values = operator.attrgetter(*_RECORD_NAMES)
_LAST_ORDER = _STATE_NAMES.index("last_order_at")


def _filler(names: Sequence[str]) -> Callable[[Any, Sequence[Any]], None]:
    """``fill(obj, values)`` setting ``names`` in order: generated from the table
    once (as dataclasses generate ``__init__``), so decoding costs what a
    hand-written tuple assignment costs."""
    targets = ", ".join(f"obj.{name}" for name in names)
    scope: dict[str, Any] = {}
    exec(f"def fill(obj, values):\n    ({targets},) = values\n", scope)
    fill: Callable[[Any, Sequence[Any]], None] = scope["fill"]
    return fill


_fill_state = _filler(_STATE_NAMES)
_fill_record = _filler(_RECORD_NAMES)
_STATE_AT = 2  # after rev and codec
_DECAYED_AT = _STATE_AT + len(_STATE_FIELDS)
_RECORD_AT = _DECAYED_AT + len(_DECAYED)
_U32 = struct.Struct("<I")
_OFFSET = struct.Struct("<Hq")
_ERASED = struct.Struct("<q")
_FIRST_ORDER = struct.Struct("<q")
_PROB_SCALE = 10_000  # probabilities are kept to 4 decimals, as published


#: Encoded short strings: segments, model versions, topics and audience names
#: repeat in every record, so each is encoded once (bounded, in case they do not).
_SHORTS: dict[str | None, bytes] = {}
#: "topic:partition" -> its encoded topic and partition, the head of an offset mark.
_MARK_HEADS: dict[str, bytes] = {}
_PART = struct.Struct("<H")
_MARK_OFFSET = struct.Struct("<q")
assert _OFFSET.format == "<Hq"  # a mark is its head then _MARK_OFFSET


def _short(text: str | None) -> bytes:
    out = _SHORTS.get(text)
    if out is None:
        raw = b"" if text is None else text.encode()
        if len(raw) > 255:
            raise ValueError(f"{raw[:40]!r}… is longer than 255 bytes")
        out = bytes([len(raw)]) + raw
        if len(_SHORTS) < 4096:
            _SHORTS[text] = out
    return out


def _mark_head(tp: str) -> bytes:
    head = _MARK_HEADS.get(tp)
    if head is None:
        topic, _, part = tp.rpartition(":")
        head = _short(topic) + _PART.pack(int(part))
        if len(_MARK_HEADS) < 4096:
            _MARK_HEADS[tp] = head
    return head


@functools.cache
def _array(code: str, n: int) -> struct.Struct:
    """The packer of ``n`` little-endian ``code`` values (cached per length)."""
    return struct.Struct(f"<{n}{code}")


def encode_record(rec: UserRecord, rev: int | None = None) -> bytes:
    """The binary record (about 300 bytes). ``rev`` defaults to the record's own."""
    s = rec.state
    state = _state_values(s)
    if s.last_order_at is None:
        state = (*state[:_LAST_ORDER], -1, *state[_LAST_ORDER + 1 :])
    parts = [
        _FIXED.pack(
            rec.rev if rev is None else rev,
            CODEC_VERSION,
            *state,
            *(s.decayed[k] for k in _DECAYED),
            *_record_values(rec),
            len(s.recent_sessions),
        ),
        _array("I", len(s.recent_sessions)).pack(*s.recent_sessions),
        _short(rec.segment),
        _short(rec.model_version),
    ]
    probs = list((rec.probabilities or {}).values())
    parts.append(bytes([len(probs)]))
    parts.append(_array("H", len(probs)).pack(*[round(p * _PROB_SCALE) for p in probs]))
    parts.append(bytes([len(rec.offsets)]))
    for tp, off in rec.offsets.items():
        parts += [_mark_head(tp), _MARK_OFFSET.pack(off)]
    parts.append(dedup.encode(rec.seen))
    parts.append(bytes([len(rec.audiences)]))
    parts += [_short(name) for name in rec.audiences]
    parts.append(_U32.pack(rec.audience_version))
    # After the variable parts, so the fixed part (which the commit script
    # reads the revision from) keeps its layout across codecs.
    parts.append(_FIRST_ORDER.pack(-1 if s.first_order_at is None else s.first_order_at))
    if rec.erased_at:
        parts.append(_ERASED.pack(rec.erased_at))
    return b"".join(parts)


#: Seeded from the OS at start-up; unpredictability is not the point (an
#: attacker cannot write to Redis anyway), only that restarts do not repeat.
#: secrets/SystemRandom cost a system call per new user (py-spy: 1.5%).
_REV_RANDOM = random.Random()


def next_rev(rev: int) -> int:
    """The revision a write stores. A new record starts at a random one, so a
    writer still holding the revision of an erased earlier record of the same
    id cannot pass the check by coincidence of counting from 1 again."""
    if rev == 0:
        return _REV_RANDOM.randrange(1, 2**32)
    return rev % (2**32 - 1) + 1


def as_stored(rec: UserRecord, rev: int) -> None:
    """Make ``rec`` what :func:`decode_record` gives for ``encode_record(rec, rev)``,
    in place (stream.worker.state.record_cache keeps records committed so).

    Only what the encoding does not keep as it is changes: the revision, the
    probabilities (kept to 4 decimals) and what the dedup memory counts
    without storing. A property test holds this to decoding."""
    rec.rev = rev
    probs = rec.probabilities
    rec.probabilities = (
        {c: round(p * _PROB_SCALE) / _PROB_SCALE for c, p in probs.items()} if probs else None
    )
    rec.seen.past_cap = 0


def decode_record(data: bytes, classes: Sequence[str] | None) -> UserRecord:
    """Read a record; ``classes`` names the stored probabilities (None: leave them out)."""
    fixed = _FIXED.unpack_from(data)
    if fixed[1] not in _READABLE_CODECS:
        raise ValueError(f"user record codec {fixed[1]!r}, this code reads {_READABLE_CODECS}")
    s = UserState()
    _fill_state(s, fixed[_STATE_AT:_DECAYED_AT])
    if s.last_order_at is not None and s.last_order_at < 0:
        s.last_order_at = None
    s.decayed = dict(zip(_DECAYED, fixed[_DECAYED_AT:_RECORD_AT], strict=True))
    n_sessions = fixed[-1]
    pos = _FIXED.size
    s.recent_sessions = [_U32.unpack_from(data, pos + 4 * i)[0] for i in range(n_sessions)]
    pos += 4 * n_sessions

    def short() -> str | None:
        nonlocal pos
        n = data[pos]
        pos += 1 + n
        return data[pos - n : pos].decode() if n else None

    segment, model_version = short(), short()
    n = data[pos]
    values = struct.unpack_from(f"<{n}H", data, pos + 1)
    pos += 1 + 2 * n
    probabilities = None
    if n and classes is not None and len(classes) == n:
        probabilities = {c: v / _PROB_SCALE for c, v in zip(classes, values, strict=True)}
    offsets = {}
    n = data[pos]
    pos += 1
    for _ in range(n):
        topic = short()
        part, off = _OFFSET.unpack_from(data, pos)
        pos += _OFFSET.size
        offsets[f"{topic}:{part}"] = off
    seen, erased_at = SeenEvents(), 0
    audiences: list[str] = []
    audience_version = 0
    if fixed[1] >= 4:
        undated = None
        if fixed[1] < 7:
            undated = (s.last_seen if s.last_order_at is None else s.last_order_at) // DAY_MS
        seen, pos = dedup.decode(data, pos, undated)
        if fixed[1] == 4:
            # Codec 4 kept BLAKE2 digests of click ids; 5 keeps CRC-32 ones. The
            # old ones would never match again: forget them (orders are as before).
            seen.clicks, seen.newest_hour = {}, -1
    if fixed[1] >= 5:
        n = data[pos]
        pos += 1
        audiences = [short() or "" for _ in range(n)]
        (audience_version,) = _U32.unpack_from(data, pos)
        pos += 4
    if fixed[1] >= 6:
        (first_order,) = _FIRST_ORDER.unpack_from(data, pos)
        pos += _FIRST_ORDER.size
        s.first_order_at = None if first_order < 0 else first_order
    elif s.last_order_at is not None:
        s.first_order_at = s.first_seen
    if fixed[1] >= 4 and len(data) >= pos + _ERASED.size:
        (erased_at,) = _ERASED.unpack_from(data, pos)
    rec = UserRecord(
        state=s,
        segment=segment,
        probabilities=probabilities,
        model_version=model_version,
        offsets=offsets,
        seen=seen,
        rev=fixed[0],
        erased_at=erased_at,
        audiences=tuple(audiences),
        audience_version=audience_version,
    )
    _fill_record(rec, fixed[_RECORD_AT:-1])
    return rec


__all__ = ["CODEC_VERSION", "UserRecord", "as_stored", "decode_record", "encode_record", "next_rev"]
