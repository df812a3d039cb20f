"""Export input-topic records to a file for data teams: JSON Lines or Parquet.

The format follows the file's suffix:

* ``.jsonl``: one ``{"topic", "key", "value"}`` object a line, ``value`` as a JSON
  object. It is the format of ``segmenter generate`` and ``segmenter produce``,
  so an export can be produced back or trained on directly.
* ``.parquet``: columns ``topic``, ``key`` (nullable), ``value`` (the record's
  JSON text, as received) and ``timestamp_ms`` (the event's own time, int64), in
  row groups of :data:`ROW_GROUP_ROWS` so memory stays bounded however long the
  export.

Records are kept by their *own* ``timestamp`` (broker time is not event time,
see ``stream/replay.py``). A record whose value is not a JSON object with a
usable timestamp is counted as invalid and left out: the file is for training.

The file appears under its name only once it is complete; a failed export
leaves nothing behind that could be mistaken for a whole one.

Redelivered records (one event_id twice) are exported as they are in the
topic; training drops the repeats (``model.dataset.drop_duplicate_events``).

For training, export without ``since``: features at a cutoff fold all of a
user's earlier events, so a file cut at ``since`` gives users who were active
before it the features of newcomers (``segmenter retrain`` replays from the
start of each partition for the same reason).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from stream.events import _to_epoch_ms
from stream.produce import read_jsonl

ROW_GROUP_ROWS = 50_000
PROGRESS_EVERY = 10_000
_INT64_MAX = 2**63 - 1
_FORMATS = (".jsonl", ".parquet")


@dataclass(frozen=True, slots=True)
class ExportResult:
    written: int
    skipped_out_of_range: int
    invalid: int

    @property
    def seen(self) -> int:
        return self.written + self.skipped_out_of_range + self.invalid


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in _FORMATS:
        raise ValueError(f"{path}: unknown export format {suffix!r}; use .jsonl or .parquet")
    return suffix


def _event_time(value: bytes | None) -> tuple[Any, int] | None:
    """The parsed value and its timestamp in ms, or None when unusable for training."""
    if value is None:
        return None
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or "timestamp" not in obj:
        return None
    try:
        ts = _to_epoch_ms(obj["timestamp"])
    except ValueError:
        return None
    if not -_INT64_MAX <= ts <= _INT64_MAX:
        return None
    return obj, ts


class _JsonlSink:
    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh

    def add(self, topic: str, key: str | None, obj: Any, raw: bytes, ts: int) -> None:
        self._fh.write(orjson.dumps({"topic": topic, "key": key, "value": obj}))
        self._fh.write(b"\n")

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class _ParquetSink:
    def __init__(self, fh: IO[bytes]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        self._schema = pa.schema(
            [
                pa.field("topic", pa.string(), nullable=False),
                pa.field("key", pa.string(), nullable=True),
                pa.field("value", pa.string(), nullable=False),
                pa.field("timestamp_ms", pa.int64(), nullable=False),
            ]
        )
        self._writer = pq.ParquetWriter(fh, self._schema)
        self._cols: tuple[list[str], list[str | None], list[str], list[int]] = ([], [], [], [])

    def add(self, topic: str, key: str | None, obj: Any, raw: bytes, ts: int) -> None:
        topics, keys, values, times = self._cols
        topics.append(topic)
        keys.append(key)
        # orjson has already checked the bytes are UTF-8, so this cannot fail.
        values.append(raw.decode("utf-8"))
        times.append(ts)
        if len(topics) >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._cols[0]:
            return
        table = self._pa.Table.from_arrays(
            [
                self._pa.array(col, type=f.type)
                for col, f in zip(self._cols, self._schema, strict=True)
            ],
            schema=self._schema,
        )
        self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        for col in self._cols:
            col.clear()

    def close(self) -> None:
        self._flush()
        self._writer.close()

    def abort(self) -> None:
        # Close the writer while its file is still open; left to the garbage
        # collector it would write a footer to a closed file and warn.
        with contextlib.suppress(Exception):
            self._writer.close()


@dataclass(slots=True)
class _Counts:
    written: int = 0
    out_of_range: int = 0
    invalid: int = 0


def _scan(
    records: Iterable[tuple[str, bytes | None, bytes | None]],
    counts: _Counts,
    since_ms: int | None,
    until_ms: int | None,
    on_progress: Callable[[int], None] | None,
) -> Iterator[tuple[str, str | None, Any, bytes, int]]:
    """The records to write, as ``(topic, key, parsed value, raw value, event time)``."""
    pending = 0
    for topic, key, value in records:
        pending += 1
        if on_progress and pending >= PROGRESS_EVERY:
            on_progress(pending)
            pending = 0
        parsed = _event_time(value)
        if parsed is None or value is None:
            counts.invalid += 1
            continue
        obj, ts = parsed
        if (since_ms is not None and ts < since_ms) or (until_ms is not None and ts > until_ms):
            counts.out_of_range += 1
            continue
        # Keys are user ids (text); "replace" keeps a corrupt key visible rather
        # than failing the whole export on it.
        text_key = None if key is None else key.decode("utf-8", "replace")
        counts.written += 1
        yield topic, text_key, obj, value, ts
    if on_progress and pending:
        on_progress(pending)


def export_records(
    records: Iterable[tuple[str, bytes | None, bytes | None]],
    out: Path,
    *,
    since_ms: int | None,
    until_ms: int | None,
    on_progress: Callable[[int], None] | None = None,
) -> ExportResult:
    """Write the records whose event time is in ``[since_ms, until_ms]`` to ``out``.

    ``on_progress`` receives counts of records *read* (written, out of range or
    invalid alike), in steps, adding up to :attr:`ExportResult.seen`.
    """
    fmt = _format_of(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
    counts = _Counts()
    try:
        with tmp.open("wb") as fh:
            sink = _JsonlSink(fh) if fmt == ".jsonl" else _ParquetSink(fh)
            try:
                for row in _scan(records, counts, since_ms, until_ms, on_progress):
                    sink.add(*row)
            except BaseException:
                sink.abort()
                raise
            sink.close()
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return ExportResult(
        written=counts.written, skipped_out_of_range=counts.out_of_range, invalid=counts.invalid
    )


def read_export(path: Path) -> Iterator[tuple[str, bytes | None, bytes]]:
    """``(topic, key, value)`` records of an export, in file order."""
    if _format_of(path) == ".jsonl":
        yield from read_jsonl(path)
        return
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as pf:
        for batch in pf.iter_batches(columns=["topic", "key", "value"]):
            cols = batch.to_pydict()
            for topic, key, value in zip(cols["topic"], cols["key"], cols["value"], strict=True):
                yield topic, None if key is None else key.encode(), value.encode()
