"""The fast decoder accepts exactly what the contract's decoder accepts, with the same content."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.core import wire
from stream.core.events import ClickFact, DecodeLimits, Fact, OrderFact, Rejected, decode, fact
from stream.core.wire import decode_fact
from stream.training.generate import GeneratorConfig, generate_events
from tests.factories import T0, click, order
from tests.stream.test_events import json_values

NOW = T0 + 10 * 86_400_000
Kind = Literal["clickstream", "orders"]


def reference(kind: Kind, key: bytes | None, value: bytes | None, **kw: Any) -> Fact | Rejected:
    event = decode(kind, key, value, now_ms=NOW, **kw)
    return event if isinstance(event, Rejected) else fact(event)


def assert_same(kind: Kind, key: bytes | None, value: bytes | None, **kw: Any) -> Fact | Rejected:
    fast = decode_fact(kind, key, value, now_ms=NOW, **kw)
    assert fast == reference(kind, key, value, **kw), value
    return fast


# Values near each bound of the contract, of each JSON type.
edges = st.one_of(
    st.sampled_from(["", " ", "x" * 256, "x" * 257, "é" * 256, "é" * 257, "EUR", "EURO1234x"]),
    st.sampled_from([0, -1, 1, 1_000_000, 1_000_001, 10_000_000, 10_000_001, T0, NOW * 2]),
    st.sampled_from([0.0, -0.0, -1e-9, 1e7, 1e7 + 1e-3, 1e300, 1.5, T0 + 0.5]),
    st.sampled_from(["2024-01-01T00:00:00Z", "2024-01-01T00:00:00", "2024-01-01", "1704067200000"]),
    st.booleans(),
    st.none(),
)
replacement = st.one_of(json_values, edges)
FIELDS = [
    "event_id",
    "event_type",
    "user_id",
    "session_id",
    "timestamp",
    "total",
    "items",
    "price",
    "category",
    "product_id",
    "currency",
    "order_id",
]
ITEM_FIELDS = ["product_id", "category", "quantity", "unit_price"]


@settings(max_examples=400)
@given(base=st.sampled_from(["click", "order"]), field=st.sampled_from(FIELDS), new=replacement)
def test_a_field_of_any_value_decodes_as_the_contract_says(base: str, field: str, new: Any) -> None:
    value = click(user="u1") if base == "click" else order(user="u1")
    value[field] = new
    try:
        payload = orjson.dumps(value)
    except TypeError:
        return  # an int too large for JSON: nothing to send
    for kind in ("clickstream", "orders"):
        assert_same(kind, b"u1", payload)  # type: ignore[arg-type]


@settings(max_examples=200)
@given(field=st.sampled_from(ITEM_FIELDS), new=replacement, drop=st.booleans())
def test_an_item_of_any_shape_decodes_as_the_contract_says(
    field: str, new: Any, drop: bool
) -> None:
    value = order(user="u1")
    item = dict(value["items"][0])
    if drop:
        item.pop(field, None)
    else:
        item[field] = new
    value["items"] = [item, value["items"][0]]
    try:
        payload = orjson.dumps(value)
    except TypeError:
        return
    assert_same("orders", b"u1", payload)


@settings(max_examples=300)
@given(st.binary(max_size=300), st.one_of(st.none(), st.binary(max_size=20)))
def test_random_bytes_decode_as_the_contract_says(value: bytes, key: bytes | None) -> None:
    for kind in ("clickstream", "orders"):
        assert_same(kind, key, value)  # type: ignore[arg-type]


ids = st.text(min_size=1, max_size=40)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    user=ids,
    event_id=ids,
    session=ids,
    category=st.one_of(st.none(), st.text(max_size=20)),
    ts=st.integers(min_value=T0 - 10**12, max_value=NOW + 2 * 86_400_000),
    total=st.floats(min_value=0, max_value=1e7),
    quantity=st.integers(min_value=0, max_value=5),
    kind=st.sampled_from(["click", "order_placed", "order_refunded"]),
    key_matches=st.booleans(),
)
def test_well_formed_events_give_the_same_fact(
    user: str,
    event_id: str,
    session: str,
    category: str | None,
    ts: int,
    total: float,
    quantity: int,
    kind: str,
    key_matches: bool,
) -> None:
    if kind == "click":
        value: dict[str, Any] = click(user=user, ts=ts) | {
            "event_id": event_id,
            "session_id": session,
            "category": category,
        }
    else:
        value = order(user=user, ts=ts, total=total) | {"event_id": event_id, "event_type": kind}
        value["items"] = [
            {"product_id": "p", "category": category, "quantity": quantity, "unit_price": total}
        ]
    try:
        key = user.encode() if key_matches else b"other"
    except UnicodeEncodeError:
        key = b"u"
    payload = orjson.dumps(value)
    topic: Kind = "clickstream" if kind == "click" else "orders"
    assert_same(topic, key, payload)
    assert_same(topic, key, payload, limits=DecodeLimits(max_bytes=len(payload) - 1))


BOUNDS: list[tuple[str, str, list[Any]]] = [
    # (base, field, values at each bound and one step past it)
    ("click", "event_id", ["", "x", "x" * 256, "x" * 257, "é" * 256, "é" * 257]),
    ("click", "session_id", ["", "x" * 256, "x" * 257]),
    ("click", "product_id", ["", "x" * 256, "x" * 257, None]),
    ("click", "category", ["", "x" * 256, "x" * 257, None]),
    ("click", "price", [0, -0.0, -1e-9, 1e7, 1e7 + 0.01, None, "1"]),
    ("order", "order_id", ["", "x" * 256, "x" * 257]),
    ("order", "total", [0, -1e-9, 1e7, 1e7 + 0.01, 10_000_000, 10_000_001]),
    ("order", "currency", ["", "EURO1234", "EURO1234x", None]),
    ("order", "items", [[], None, [{"product_id": "p", "quantity": 1, "unit_price": 1}] * 1000]),
    ("order", "items", [[{"product_id": "p", "quantity": 1, "unit_price": 1}] * 1001]),
    ("order", "timestamp", [946_684_800_000, 946_684_799_999, NOW + 86_400_000]),
    ("order", "timestamp", [NOW + 86_400_001, "2024-01-01T00:00:00+02:00", T0 + 0.9]),
]
ITEM_BOUNDS: list[tuple[str, list[Any]]] = [
    ("quantity", [0, -1, 1_000_000, 1_000_001, 1.0, True]),
    ("unit_price", [0, -1e-9, 1e7, 1e7 + 0.01]),
    ("product_id", ["", "x" * 256, "x" * 257]),
    ("category", ["", "x" * 256, "x" * 257, None]),
]


@pytest.mark.parametrize(("base", "field", "values"), BOUNDS)
def test_each_bound_of_the_contract_holds_in_both(base: str, field: str, values: list[Any]) -> None:
    for new in values:
        value = (click(user="u1") if base == "click" else order(user="u1")) | {field: new}
        assert_same("clickstream" if base == "click" else "orders", b"u1", orjson.dumps(value))


@pytest.mark.parametrize(("field", "values"), ITEM_BOUNDS)
def test_each_bound_of_an_item_holds_in_both(field: str, values: list[Any]) -> None:
    for new in values:
        value = order(user="u1")
        value["items"] = [value["items"][0] | {field: new}]
        assert_same("orders", b"u1", orjson.dumps(value))


@pytest.mark.parametrize(
    "text",
    [
        # Duplicate keys: the last one wins, in both.
        b'{"event_id":"a","event_id":"b","user_id":"u1","timestamp":%d,'
        b'"event_type":"search","session_id":"s"}' % T0,
        b'{"event_id":"a","user_id":"u1","timestamp":%d,"timestamp":1,'
        b'"event_type":"search","session_id":"s"}' % T0,
        b' \n{"event_id":"a","user_id":"u1","timestamp":%d,'
        b'"event_type":"search","session_id":"s"}\n ' % T0,
        b'{"event_id":"a","user_id":"u1","timestamp":%d,"event_type":"search",'
        b'"session_id":"s","price":NaN}' % T0,
        b'{"event_id":"a","user_id":"u1","timestamp":%d,"event_type":"search",'
        b'"session_id":"s","price":Infinity}' % T0,
        b'{"event_id":"a","user_id":"u1\\ud800","timestamp":%d,"event_type":"search",'
        b'"session_id":"s"}' % T0,
        b'{"event_id":"a","user_id":"u1","timestamp":%d,"event_type":"search",'
        b'"session_id":"s"} trailing' % T0,
        b'{"event_id":"a","user_id":"u1","timestamp":%d.0,"event_type":"search",'
        b'"session_id":"s"}' % T0,
        b'{"event_id":"a","user_id":"u1","timestamp":1e400,"event_type":"search","session_id":"s"}',
        b"[1, 2]",
        b'"just a string"',
    ],
)
def test_json_text_edge_cases_decode_as_the_contract_says(text: bytes) -> None:
    assert_same("clickstream", b"u1", text)


def test_generated_events_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not one record of a generated history falls back to the reference decoder:
    otherwise the property above holds and nothing is faster."""
    fell_back: list[bytes | None] = []
    slow = wire._reference

    def counting(kind: Kind, key: bytes | None, value: bytes | None, *a: Any) -> Any:
        fell_back.append(value)
        return slow(kind, key, value, *a)

    monkeypatch.setattr(wire, "_reference", counting)
    events = generate_events(GeneratorConfig(users=200, days=30, start_ms=T0))
    now = max(e.timestamp_ms for e in events)
    facts = [
        decode_fact(
            "clickstream" if e.topic == "clickstream" else "orders",
            e.key.encode(),
            orjson.dumps(e.value),
            now_ms=now,
        )
        for e in events
    ]
    assert fell_back == []
    assert all(isinstance(f, ClickFact | OrderFact) for f in facts)
    assert any(isinstance(f, OrderFact) and f.items for f in facts)


def test_a_mirror_that_drifts_from_the_contract_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison above finds a mirror that lost one constraint (money's floor)."""

    class Lax(msgspec.Struct, frozen=True):
        event_id: str
        user_id: str
        timestamp: int
        event_type: str
        order_id: str
        total: Annotated[float, msgspec.Meta(le=1e7)]
        items: list[wire._Item] | None = None

    monkeypatch.setattr(wire, "_ORDERS", msgspec.json.Decoder(Lax))
    with pytest.raises(AssertionError):
        assert_same("orders", b"u1", orjson.dumps(order(user="u1") | {"total": -5.0}))
