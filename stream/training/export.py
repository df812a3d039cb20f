"""Export topic records to files for data teams: JSON Lines or typed Parquet.

The format follows the output's suffix:

* ``.jsonl``: one ``{"topic", "key", "value"}`` object a line, ``value`` as a JSON
  object. It is the format of ``segmenter generate`` and ``segmenter produce``,
  so an export can be produced back or trained on directly.
* ``.parquet``: a *directory* of Parquet files partitioned by the record's UTC
  date (``date=YYYY-MM-DD/``), with typed columns: the record's top-level fields
  flattened, plus ``topic``, ``partition``, ``offset``, ``key`` and
  ``event_time_ms`` (see :mod:`stream.training.event_files`). Spark, DuckDB, pandas and
  pyarrow read it as one table.

Records stream from the broker to the file in batches of :data:`ROW_GROUP_ROWS`,
so memory stays bounded however long the export. They are kept by their *own*
time (``timestamp`` for input events, ``event_time`` for segment changes;
broker time is not event time, see ``stream/training/replay.py``). A record whose value
is not a JSON object with a usable time is counted as invalid and left out.

The output appears under its name only once it is complete; a failed export
leaves nothing behind that could be mistaken for a whole one.

Redelivered records (one event_id twice) are exported as they are in the
topic; training drops the repeats (``stream.core.dedup``, the worker's own rule).

For training, export without ``since``: features at a cutoff fold all of a
user's earlier events, so a file cut at ``since`` gives users who were active
before it the features of newcomers (``segmenter retrain`` replays from the
start of each partition for the same reason).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from stream.core.events import _to_epoch_ms
from stream.training.event_files import ParquetDatasetSink, Record

ROW_GROUP_ROWS = 50_000
PROGRESS_EVERY = 10_000
_INT64_MAX = 2**63 - 1
# Years 1 to 9999: what a date partition (and Python's datetime) can name.
_TIME_RANGE = (-62_135_596_800_000, 253_402_300_799_999)
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
    if not isinstance(obj, dict):
        return None
    when = obj.get("timestamp", obj.get("event_time"))
    if when is None:
        return None
    try:
        ts = _to_epoch_ms(when)
    except ValueError:
        return None
    if not _TIME_RANGE[0] <= ts <= _TIME_RANGE[1]:
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


@dataclass(slots=True)
class _Counts:
    written: int = 0
    out_of_range: int = 0
    invalid: int = 0


def _scan(
    records: Iterable[tuple[Any, ...]],
    counts: _Counts,
    since_ms: int | None,
    until_ms: int | None,
    on_progress: Callable[[int], None] | None,
) -> Iterator[tuple[Any, ...]]:
    """The records to write, as ``(topic, key, parsed value, raw value, event time,
    partition, offset)``; the position is None for records read without one."""
    pending = 0
    for topic, key, value, *position in records:
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
        partition, offset = position if position else (None, None)
        yield topic, text_key, obj, value, ts, partition, offset
    if on_progress and pending:
        on_progress(pending)


def check_target(out: Path) -> str:
    """The export format of ``out``; raises ValueError (one line) when it cannot be written."""
    fmt = _format_of(out)
    if fmt == ".parquet" and out.exists():
        raise ValueError(f"{out} already exists; remove it or choose another --out")
    if out.is_dir():
        raise ValueError(f"{out} is a directory")
    return fmt


def export_records(
    records: Iterable[tuple[Any, ...]],
    out: Path,
    *,
    since_ms: int | None,
    until_ms: int | None,
    on_progress: Callable[[int], None] | None = None,
) -> ExportResult:
    """Write the records whose event time is in ``[since_ms, until_ms]`` to ``out``.

    ``records`` are ``(topic, key, value)``, optionally followed by partition and
    offset. ``on_progress`` receives counts of records *read* (written, out of
    range or invalid alike), in steps, adding up to :attr:`ExportResult.seen`.
    """
    fmt = check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
    counts = _Counts()
    rows = _scan(records, counts, since_ms, until_ms, on_progress)
    try:
        if fmt == ".jsonl":
            with tmp.open("wb") as fh:
                sink = _JsonlSink(fh)
                for row in rows:
                    sink.add(*row[:5])
        else:
            ParquetDatasetSink(tmp, ROW_GROUP_ROWS).write(rows)
            tmp.mkdir(exist_ok=True)  # an export of nothing is still a (empty) dataset
        os.replace(tmp, out)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return ExportResult(
        written=counts.written, skipped_out_of_range=counts.out_of_range, invalid=counts.invalid
    )


def read_export(path: Path) -> Iterator[tuple[str, bytes | None, bytes]]:
    """``(topic, key, value)`` records of an export, in file order (by date for Parquet)."""
    from stream.training.event_files import Router, read_jsonl, read_parquet

    # Topics as exported: the identity routing keeps each record's own topic.
    class _AsIs(Router):
        def envelope(self, topic: str, key: bytes | None, value: bytes) -> Record | None:
            return topic, key, value

    reader = read_jsonl if _format_of(path) == ".jsonl" else read_parquet
    yield from reader(path, _AsIs("clickstream", "orders"))
