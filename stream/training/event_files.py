"""Event files people have, read as topic records; and the typed Parquet an export writes.

Reading (``segmenter produce``, ``segmenter train``):

* JSON Lines: each line is either a plain event (``{"event_type": ..., "user_id": ...}``)
  or a ``{"topic", "key", "value"}`` envelope from ``segmenter generate``/``export``.
* CSV: a plain event a row, a column per field (``items`` as JSON text).
* Parquet: a file or a date-partitioned directory from ``segmenter export``
  (typed columns), an older export (a ``value`` column of JSON text), or any
  table of plain events.

A plain event goes to the orders topic when its ``event_type`` is an order
type (:data:`stream.core.events.ORDER_TYPES`) and to the clickstream otherwise, keyed
by its ``user_id``. Whether it is *valid* is the worker's call (it dead-letters
what is not), so nothing here judges events beyond what routing needs; a row
that cannot be routed is counted and skipped.

Writing: :class:`ParquetDatasetSink` flattens each record's top-level fields
into typed columns, beside ``topic``, ``partition``, ``offset``, ``key`` and the
record's event time, partitioned by its UTC date (hive style, ``date=YYYY-MM-DD``).
Fields of unexpected type, and nested ones, go to an ``extra`` column as JSON, so
nothing is lost and a re-read gives the record back.
"""

from __future__ import annotations

import csv
import itertools
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from stream.core.events import CLICK_TYPES, ORDER_TYPES

Record = tuple[str, bytes | None, bytes]

# Columns of the typed export: every top-level field of the input events and of
# segment-change messages that has one type. Anything else goes to ``extra``.
_STRING = (
    "event_id",
    "event_type",
    "user_id",
    "session_id",
    "product_id",
    "category",
    "order_id",
    "currency",
    "segment",
    "previous_segment",
    "model_version",
    "event_time",
    "emitted_at",
    "trigger",
)
_FLOAT = ("total", "price")
_INT = ("timestamp", "version")
_POSITION = ("topic", "partition", "offset", "key", "event_time_ms")
_SKIP = (*_POSITION, "extra", "date")
_CSV_NUMBERS = {"total": float, "price": float}


class Router:
    """Plain events to ``(topic, key, value)`` by event_type; counts what it cannot route."""

    def __init__(self, clickstream_topic: str, orders_topic: str) -> None:
        self.clickstream, self.orders = clickstream_topic, orders_topic
        self.skipped: Counter[str] = Counter()

    def route(self, event: dict[str, Any]) -> Record | None:
        kind = event.get("event_type")
        user = event.get("user_id")
        if not isinstance(kind, str) or not kind:
            self.skipped["no_event_type"] += 1
            return None
        if not isinstance(user, str) or not user:
            self.skipped["no_user_id"] += 1
            return None
        topic = self.orders if kind in ORDER_TYPES else self.clickstream
        return topic, user.encode(), orjson.dumps(event, default=_plain)

    def envelope(self, topic: str, key: bytes | None, value: bytes) -> Record | None:
        """An export's record, to this deployment's input topic for its event_type.

        By the value, not the exported topic's name (deployments name topics
        as they like); a record that is not an input event (a segment change,
        say) is counted and skipped.
        """
        try:
            kind = orjson.loads(value).get("event_type")
        except (orjson.JSONDecodeError, AttributeError):
            kind = None
        if kind in ORDER_TYPES:
            return self.orders, key, value
        if kind in CLICK_TYPES:
            return self.clickstream, key, value
        self.skipped["not_an_input_event"] += 1
        return None


def read_jsonl(path: Path, router: Router) -> Iterator[Record]:
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"line {lineno} is not JSON: {exc}") from None
            if not isinstance(obj, dict):
                raise ValueError(f"line {lineno} is not a JSON object")
            if "topic" in obj and "value" in obj:
                key, value = obj.get("key"), obj["value"]
                record = router.envelope(
                    str(obj["topic"]),
                    None if key is None else str(key).encode(),
                    value.encode() if isinstance(value, str) else orjson.dumps(value),
                )
                if record is not None:
                    yield record
            elif (record := router.route(obj)) is not None:
                yield record


def _csv_value(field: str, text: str) -> Any:
    if field == "timestamp" and text.lstrip("-").isdigit():
        return int(text)
    if field == "items":
        return orjson.loads(text)
    if field in _CSV_NUMBERS:
        try:
            return _CSV_NUMBERS[field](text)
        except ValueError:
            return text  # the worker dead-letters it, with the reason
    return text


def read_csv(path: Path, router: Router) -> Iterator[Record]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "event_type" not in reader.fieldnames:
            raise ValueError("a CSV of events needs a header row with event_type and user_id")
        for row in reader:
            event = {k: _csv_value(k, v) for k, v in row.items() if k and v not in (None, "")}
            if (record := router.route(event)) is not None:
                yield record


def read_parquet(path: Path, router: Router) -> Iterator[Record]:
    import pyarrow.dataset as ds

    dataset = ds.dataset(path, format="parquet", partitioning="hive")
    names = set(dataset.schema.names)
    for batch in dataset.to_batches(batch_size=10_000):
        rows = batch.to_pylist()
        if {"topic", "value"} <= names:  # an export of the first format: JSON text as received
            for row in rows:
                key = row.get("key")
                old = router.envelope(
                    row["topic"], None if key is None else key.encode(), row["value"].encode()
                )
                if old is not None:
                    yield old
            continue
        for row in rows:
            event = _unflatten(row)
            record: Record | None
            if "topic" in names:
                key = row.get("key")
                record = router.envelope(
                    row["topic"],
                    None if key is None else key.encode(),
                    orjson.dumps(event, default=_plain),
                )
            else:
                record = router.route(event)
            if record is not None:
                yield record


def _plain(value: Any) -> Any:
    """JSON for what Parquet tables hold and JSON lacks (orjson's ``default``)."""
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _unflatten(row: dict[str, Any]) -> dict[str, Any]:
    event = {k: v for k, v in row.items() if v is not None and k not in _SKIP}
    extra = row.get("extra")
    if extra:
        event.update(orjson.loads(extra))
    for name, value in event.items():
        if isinstance(value, datetime):
            # A Parquet timestamp without a zone is UTC by Parquet's convention.
            aware = value if value.tzinfo else value.replace(tzinfo=UTC)
            event[name] = int(aware.timestamp() * 1000)
    return event


class ParquetDatasetSink:
    """Typed columns, partitioned by the event's UTC date, written as they stream in."""

    def __init__(self, directory: Path, batch_rows: int) -> None:
        import pyarrow as pa

        self._pa = pa
        self._dir = directory
        self._batch_rows = batch_rows
        self.schema = pa.schema(
            [
                pa.field("topic", pa.string(), nullable=False),
                pa.field("partition", pa.int32()),
                pa.field("offset", pa.int64()),
                pa.field("key", pa.string()),
                pa.field("event_time_ms", pa.int64(), nullable=False),
                *(pa.field(n, pa.string()) for n in _STRING),
                *(pa.field(n, pa.float64()) for n in _FLOAT),
                *(pa.field(n, pa.int64()) for n in _INT),
                pa.field("extra", pa.string()),
                pa.field("date", pa.string(), nullable=False),
            ]
        )

    def batches(self, rows: Iterable[tuple[Any, ...]]) -> Iterator[Any]:
        """Record batches of ``(topic, key, obj, raw, ts, partition, offset)`` rows."""
        for chunk in _chunks(rows, self._batch_rows):
            flat = [_flatten(*row) for row in chunk]
            yield self._pa.RecordBatch.from_pylist(flat, schema=self.schema)

    def write(self, rows: Iterable[tuple[Any, ...]]) -> None:
        import pyarrow.dataset as ds

        ds.write_dataset(
            self.batches(rows),
            self._dir,
            schema=self.schema,
            format="parquet",
            partitioning=ds.partitioning(
                self._pa.schema([("date", self._pa.string())]), flavor="hive"
            ),
            existing_data_behavior="error",
            max_rows_per_group=self._batch_rows,
            min_rows_per_group=0,
            preserve_order=True,
            use_threads=False,
        )


def _chunks(rows: Iterable[Any], n: int) -> Iterator[list[Any]]:
    it = iter(rows)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def _fits(name: str, value: Any) -> bool:
    if name in _STRING:
        return isinstance(value, str)
    if name in _FLOAT:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63


def _flatten(
    topic: str,
    key: str | None,
    obj: dict[str, Any],
    raw: bytes,
    ts: int,
    partition: int | None = None,
    offset: int | None = None,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": key,
        "event_time_ms": ts,
        "date": datetime.fromtimestamp(ts / 1000, tz=UTC).strftime("%Y-%m-%d"),
    }
    extra: dict[str, Any] = {}
    for name, value in obj.items():
        if name in row or name in ("extra", "date") or not _fits(name, value):
            extra[name] = value
        elif name in _FLOAT:
            row[name] = float(value)
        else:
            row[name] = value
    row["extra"] = orjson.dumps(extra).decode() if extra else None
    return row
