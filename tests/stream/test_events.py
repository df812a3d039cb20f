from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.events import ClickEvent, DecodeLimits, OrderEvent, Reason, Rejected, decode
from tests.factories import T0, click, order, raw

NOW = T0 + 10 * 86_400_000


def test_valid_click_decodes_with_epoch_ms() -> None:
    key, value = raw(click(ts=T0))
    event = decode("clickstream", key, value, now_ms=NOW)
    assert isinstance(event, ClickEvent)
    assert event.timestamp == T0


def test_iso_timestamp_with_zone_is_converted_to_utc_ms() -> None:
    key, value = raw(click(ts=T0) | {"timestamp": "2024-01-01T02:00:00+02:00"})
    event = decode("clickstream", key, value, now_ms=NOW)
    assert isinstance(event, ClickEvent)
    assert event.timestamp == T0


def test_iso_timestamp_without_zone_is_rejected() -> None:
    key, value = raw(click() | {"timestamp": "2024-01-01T00:00:00"})
    result = decode("clickstream", key, value, now_ms=NOW)
    assert isinstance(result, Rejected) and result.reason is Reason.SCHEMA
    assert "zone" in result.detail


def test_unknown_fields_are_ignored() -> None:
    key, value = raw(order() | {"coupon": "X", "nested": {"a": [1, 2]}})
    assert isinstance(decode("orders", key, value, now_ms=NOW), OrderEvent)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda v: v | {"total": -1}, Reason.SCHEMA),
        (lambda v: v | {"total": "12.5"}, Reason.SCHEMA),
        (lambda v: v | {"event_type": "order_teleported"}, Reason.SCHEMA),
        (lambda v: {k: x for k, x in v.items() if k != "order_id"}, Reason.SCHEMA),
        (lambda v: v | {"timestamp": 1_000}, Reason.TIMESTAMP_RANGE),
        (lambda v: v | {"timestamp": NOW + 3 * 86_400_000}, Reason.TIMESTAMP_RANGE),
        (lambda v: v | {"user_id": ""}, Reason.SCHEMA),
        (lambda v: v | {"total": 1e300}, Reason.SCHEMA),
    ],
)
def test_bad_order_is_rejected_with_reason(mutate, reason) -> None:  # type: ignore[no-untyped-def]
    value = mutate(order(user="u1"))
    result = decode("orders", b"u1", orjson.dumps(value), now_ms=NOW)
    assert isinstance(result, Rejected)
    assert result.reason is reason, result


def test_nan_total_is_rejected() -> None:
    text = orjson.dumps(order(user="u1")).replace(b'"total":100.0', b'"total":NaN')
    result = decode("orders", b"u1", text, now_ms=NOW)
    assert isinstance(result, Rejected)
    assert result.reason in (Reason.INVALID_JSON, Reason.SCHEMA)


def test_truncated_json_is_invalid_json() -> None:
    _, value = raw(click())
    result = decode("clickstream", b"u1", value[:-5], now_ms=NOW)
    assert isinstance(result, Rejected) and result.reason is Reason.INVALID_JSON


def test_value_over_size_bound_is_rejected_before_parsing() -> None:
    value = orjson.dumps(click() | {"padding": "x" * 70_000})
    result = decode("clickstream", b"u1", value, now_ms=NOW)
    assert isinstance(result, Rejected) and result.reason is Reason.TOO_LARGE
    small = DecodeLimits(max_bytes=100)
    result = decode("clickstream", b"u1", orjson.dumps(click()), now_ms=NOW, limits=small)
    assert isinstance(result, Rejected) and result.reason is Reason.TOO_LARGE


@pytest.mark.parametrize("key", [None, b"", b"someone-else"])
def test_key_must_equal_user_id(key: bytes | None) -> None:
    result = decode("clickstream", key, orjson.dumps(click(user="u1")), now_ms=NOW)
    assert isinstance(result, Rejected) and result.reason is Reason.KEY_MISMATCH


def test_null_value_is_rejected() -> None:
    result = decode("orders", b"u1", None, now_ms=NOW)
    assert isinstance(result, Rejected)


@settings(max_examples=300)
@given(st.binary(max_size=300), st.one_of(st.none(), st.binary(max_size=20)))
def test_decode_never_raises_on_random_bytes(value: bytes, key: bytes | None) -> None:
    for kind in ("clickstream", "orders"):
        result = decode(kind, key, value, now_ms=NOW)  # type: ignore[arg-type]
        assert isinstance(result, Rejected | ClickEvent | OrderEvent)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300)
@given(
    base=st.sampled_from(["click", "order"]),
    field=st.sampled_from(
        ["event_id", "event_type", "user_id", "session_id", "timestamp", "total", "items", "price"]
    ),
    replacement=json_values,
)
def test_decode_never_raises_on_wrong_types(base: str, field: str, replacement: object) -> None:
    value = click(user="u1") if base == "click" else order(user="u1")
    value[field] = replacement
    try:
        payload = orjson.dumps(value)
    except TypeError:
        return  # an int too large for JSON encoding: nothing to send
    kind = "clickstream" if base == "click" else "orders"
    result = decode(kind, b"u1", payload, now_ms=NOW)  # type: ignore[arg-type]
    assert isinstance(result, Rejected | ClickEvent | OrderEvent)


@given(st.text(min_size=1, max_size=60).filter(lambda s: s.strip() == s))
def test_unicode_user_ids_round_trip_when_key_matches(user: str) -> None:
    value = click(user=user)
    result = decode("clickstream", user.encode(), orjson.dumps(value), now_ms=NOW)
    if isinstance(result, ClickEvent):
        assert result.user_id == user
    else:
        assert result.reason in (Reason.KEY_MISMATCH, Reason.SCHEMA)
