from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.training import export
from stream.training.export import ExportResult, export_records, read_export
from tests.factories import DAY, T0, click, order

Raw = tuple[str, bytes | None, bytes | None]


def _raw(topic: str, value: dict[str, Any]) -> Raw:
    return topic, value["user_id"].encode(), orjson.dumps(value)


def _history() -> list[Raw]:
    """Ten days of events for two users, one a day each, plus a few broken records."""
    records: list[Raw] = []
    for day in range(10):
        records.append(_raw("clickstream", click(user="u1", ts=T0 + day * DAY)))
        records.append(_raw("orders", order(user="u2", ts=T0 + day * DAY + 1000)))
    records[5:5] = [
        ("clickstream", b"u1", b"{not json"),
        ("orders", b"u2", None),
        ("orders", b"u2", b'{"user_id": "u2"}'),  # no timestamp
        ("orders", b"u2", b'{"timestamp": "2024-01-03T00:00:00"}'),  # naive: unusable
        ("orders", b"u2", b"[1, 2]"),  # JSON, but not an event
    ]
    return records


def _timestamp(value: bytes) -> int:
    ts = orjson.loads(value)["timestamp"]
    assert isinstance(ts, int)
    return ts


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_export_round_trip_keeps_the_range_in_order(
    tmp_path: Path, suffix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "PROGRESS_EVERY", 4)
    records = _history()
    since, until = T0 + 2 * DAY, T0 + 5 * DAY + 1000  # both ends inclusive
    progress: list[int] = []
    out = tmp_path / f"export{suffix}"

    result = export_records(
        iter(records), out, since_ms=since, until_ms=until, on_progress=progress.append
    )

    valid = [r for r in records if r[2] is not None and r[2].startswith(b'{"event_id"')]
    expected = [r for r in valid if since <= _timestamp(r[2] or b"") <= until]
    assert result == ExportResult(
        written=len(expected), skipped_out_of_range=len(valid) - len(expected), invalid=5
    )
    assert len(expected) == 8  # days 2..5, both users
    assert sum(progress) == result.seen == len(records)
    assert len(progress) > 1  # reported as it goes, not only at the end
    back = list(read_export(out))
    assert [(t, k, orjson.loads(v)) for t, k, v in back] == [
        (t, k, orjson.loads(v or b"")) for t, k, v in expected
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_jsonl_export_is_the_generate_and_produce_format(tmp_path: Path) -> None:
    value = click(user="u1", ts=T0)
    out = tmp_path / "e.jsonl"
    export_records([_raw("clickstream", value)], out, since_ms=None, until_ms=None)

    (line,) = out.read_bytes().splitlines()
    assert orjson.loads(line) == {"topic": "clickstream", "key": "u1", "value": value}


def test_parquet_export_is_typed_columns_partitioned_by_date(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.dataset as ds

    iso = b'{"event_id": "e1", "user_id": "u1", "timestamp": "2024-01-01T01:00:00+01:00"}'
    placed = order(user="u2", ts=T0 + DAY + 5, total=12.5)
    change = {
        "user_id": "u2",
        "segment": "regular",
        "previous_segment": None,
        "probabilities": {"regular": 0.7, "at_risk": 0.3},
        "event_time": "2024-01-03T00:00:00Z",
        "version": 2,
    }
    records = [
        ("clickstream", None, iso, 0, 7),
        ("orders", b"u2", orjson.dumps(placed), 3, 41),
        ("customer-segments", b"u2", orjson.dumps(change), 1, 0),
    ]
    out = tmp_path / "e.parquet"
    result = export_records(records, out, since_ms=None, until_ms=None)

    assert result.written == 3
    assert sorted(p.name for p in out.iterdir()) == [
        "date=2024-01-01",
        "date=2024-01-02",
        "date=2024-01-03",
    ]
    table = ds.dataset(out, format="parquet", partitioning="hive").to_table()
    types = {f.name: f.type for f in table.schema}
    assert types["partition"] == pa.int32() and types["offset"] == pa.int64()
    assert types["total"] == pa.float64() and types["timestamp"] == pa.int64()
    assert types["event_time_ms"] == pa.int64() and types["segment"] == pa.string()
    rows = {r["topic"]: r for r in table.to_pylist()}
    assert rows["orders"]["total"] == 12.5 and rows["orders"]["order_id"] == placed["order_id"]
    assert (rows["orders"]["partition"], rows["orders"]["offset"]) == (3, 41)
    assert rows["clickstream"]["event_time_ms"] == T0  # 01:00+01:00 is midnight UTC
    assert rows["customer-segments"]["version"] == 2
    # Nested fields, and values of another type than their column's, are kept as JSON.
    assert orjson.loads(rows["customer-segments"]["extra"]) == {
        "previous_segment": None,
        "probabilities": change["probabilities"],
    }
    back = {t: (k, orjson.loads(v)) for t, k, v in read_export(out)}
    assert back == {
        "clickstream": (None, orjson.loads(iso)),
        "orders": (b"u2", placed),
        "customer-segments": (b"u2", change),
    }


def test_parquet_export_of_the_first_format_still_reads(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Exports before typed columns: one file, the value as received.
    text = '{"event_id": "e1", "user_id": "u1", "timestamp": 1704067200000}'
    out = tmp_path / "old.parquet"
    pq.write_table(
        pa.table({"topic": ["clickstream"], "key": ["u1"], "value": [text], "timestamp_ms": [T0]}),
        out,
    )
    assert list(read_export(out)) == [("clickstream", b"u1", text.encode())]


def test_parquet_export_writes_bounded_row_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.parquet as pq

    monkeypatch.setattr(export, "ROW_GROUP_ROWS", 4)
    records = [_raw("clickstream", click(user="u1", ts=T0 + i)) for i in range(10)]
    out = tmp_path / "e.parquet"
    export_records(records, out, since_ms=None, until_ms=None)

    (part,) = out.glob("date=*/*.parquet")
    meta = pq.ParquetFile(part).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [4, 4, 2]
    assert [orjson.loads(v) for _, _, v in read_export(out)] == [
        orjson.loads(v) for _, _, v in records
    ]


def test_an_existing_parquet_export_is_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "e.parquet"
    export_records([_raw("clickstream", click())], out, since_ms=None, until_ms=None)
    with pytest.raises(ValueError, match="already exists"):
        export_records([_raw("clickstream", click())], out, since_ms=None, until_ms=None)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_empty_export_is_a_readable_file(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"e{suffix}"
    result = export_records([], out, since_ms=None, until_ms=None)

    assert result == ExportResult(0, 0, 0)
    assert list(read_export(out)) == []


def test_unknown_suffix_is_refused_before_reading(tmp_path: Path) -> None:
    def never() -> Iterator[Raw]:
        raise AssertionError("records were read")
        yield  # pragma: no cover

    with pytest.raises(ValueError, match="csv"):
        export_records(never(), tmp_path / "e.csv", since_ms=None, until_ms=None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_failed_export_leaves_no_file(tmp_path: Path, suffix: str) -> None:
    def broken() -> Iterator[Raw]:
        yield _raw("clickstream", click(user="u1", ts=T0))
        raise RuntimeError("replay lost the broker")

    out = tmp_path / f"e{suffix}"
    with pytest.raises(RuntimeError):
        export_records(broken(), out, since_ms=None, until_ms=None)
    assert list(tmp_path.iterdir()) == []
