"""What the command line accepts, and how its errors reach people.

Every value is parsed while click parses the arguments, so a wrong date or
duration fails in milliseconds, before any data is generated or read. A user
error is one line on stderr and exit code 2 (click's convention for usage
errors); anything else is one line and exit code 1, with the traceback only
under ``--debug`` (or ``SEGMENTER_DEBUG=1``).
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from enum import StrEnum
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version

import typer

from stream.core.events import parse_instant
from stream.redaction import Redactor

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
# Kafka's own rule for topic names.
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")

# Typer vendors click from 0.2x on, so its exception classes are found through
# the one it exports rather than imported from either package by name.
ClickException: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)
UsageError: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError"
)

DATE_HELP = "YYYY-MM-DD (midnight UTC) or ISO-8601 with a zone, e.g. 2024-03-01T12:00:00Z"


class UserError(ClickException):  # type: ignore[valid-type,misc]
    """Something the user can fix (a file, a missing server): one line, exit code 2."""

    exit_code = 2


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class InputFormat(StrEnum):
    """Files `segmenter produce` and `segmenter train` read."""

    AUTO = "auto"  # by suffix: .jsonl, .csv, .parquet (or a directory of parquet)
    JSONL = "jsonl"  # plain events, or {topic, key, value} envelopes, one a line
    CSV = "csv"  # plain events, one a row, a column per field
    PARQUET = "parquet"  # from `segmenter export`, or plain events
    ONLINE_RETAIL = "online-retail"  # the UCI Online Retail CSV
    REES46 = "rees46"  # the REES46 behaviour CSV


_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}


def resolve_format(fmt: InputFormat, path: str, is_dir: bool) -> str:
    if fmt is not InputFormat.AUTO:
        return fmt.value
    if is_dir:
        return "parquet"  # a date-partitioned export
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in _SUFFIXES:
        raise typer.BadParameter(
            f"cannot tell the format of {path!r} from its suffix; say --format "
            f"({', '.join(f.value for f in InputFormat if f is not InputFormat.AUTO)})",
            param_hint="'--format'",
        )
    return _SUFFIXES[suffix]


def duration(text: str | int) -> int:
    """'90d' -> milliseconds. Units: ms, s, m, h, d, w."""
    if isinstance(text, int):  # a default already in ms
        return text
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise typer.BadParameter(f"{text!r} is not a duration like 90d, 24h, 30m or 2w")
    return int(float(match.group(1)) * _UNIT_MS[match.group(2)])


def instant(text: str | int) -> int:
    """A date or time typed by hand -> epoch ms (see :func:`stream.core.events.parse_instant`)."""
    if isinstance(text, int):
        return text
    try:
        return parse_instant(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def layer_sizes(text: str) -> tuple[int, ...]:
    """'64,32' -> (64, 32): positive integers, comma-separated."""
    parts = [p.strip() for p in text.split(",")]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise typer.BadParameter(f"{text!r}: give positive layer sizes like 32 or 64,32")
    return tuple(int(p) for p in parts)


def topic_names(values: list[str] | None) -> list[str]:
    """Repeated options, each of which may also be a comma list; names checked as Kafka does."""
    out: list[str] = []
    for value in values or []:
        for name in (v.strip() for v in value.split(",")):
            if not _TOPIC.match(name):
                raise typer.BadParameter(
                    f"{name!r} is not a topic name (letters, digits, '.', '_', '-')",
                    param_hint="'--topic'",
                )
            if name not in out:
                out.append(name)
    return out


def package_version() -> str:
    try:
        return dist_version("segmenter")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


class Debug:
    """``--debug`` (or SEGMENTER_DEBUG=1): tracebacks for errors."""

    enabled = os.environ.get("SEGMENTER_DEBUG", "").lower() in ("1", "true", "yes")


def _say(text: str) -> None:
    # URL credentials never reach the terminal, even inside an exception's text.
    sys.stderr.write(Redactor()(" ".join(text.split())) + "\n")


def run(app: typer.Typer, args: list[str] | None = None) -> int:
    """Run the CLI and turn every exception into one line and an exit code."""
    try:
        result = app(args=args, prog_name="segmenter", standalone_mode=False)
    except UsageError as exc:
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "segmenter"
        message = exc.format_message()  # type: ignore[attr-defined]
        if message:  # empty when the help was shown for a bare `segmenter`
            _say(f"{where}: {message} (see `{where} --help`)")
        return 2
    except ClickException as exc:
        _say(f"segmenter: {exc.format_message()}")  # type: ignore[attr-defined]
        return int(exc.exit_code)  # type: ignore[attr-defined]
    except typer.Abort:
        _say("segmenter: aborted")
        return 130
    except KeyboardInterrupt:
        return 130
    except SystemExit:
        raise
    except Exception as exc:
        if Debug.enabled:
            traceback.print_exc()
        else:
            _say(
                f"segmenter: {type(exc).__name__}: {exc} "
                "(run with --debug, or SEGMENTER_DEBUG=1, for the traceback)"
            )
        return 1
    return result if isinstance(result, int) else 0
