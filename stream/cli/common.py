"""What every command shares: the console, logging, settings and progress bars."""

from __future__ import annotations

import csv
import itertools
import logging
import socket
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from stream.cli.args import InputFormat, UserError, resolve_format
from stream.redaction import Redactor
from stream.redaction import install as install_redaction
from stream.settings import Settings, load_settings

console = Console(stderr=True)
log = logging.getLogger("segmenter")


def setup_logging(level: str = "INFO", settings: Settings | None = None) -> None:
    """Rich output for people at a terminal; one plain line per record for log collectors.

    Every record goes through the redaction filter: ``settings``' secrets and any
    URL credentials are masked (URL credentials only, without settings).
    """
    if console.is_terminal:
        handler: logging.Handler = RichHandler(
            console=console, show_path=False, rich_tracebacks=True
        )
        fmt = "%(name)s: %(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, handlers=[handler], force=True)
    install_redaction(settings.redactor() if settings is not None else Redactor())


def settings_or_exit(**overrides: object) -> Settings:
    return load_settings(**overrides)


def progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def read_input_file(file: Path, fmt: InputFormat, settings: Settings) -> tuple[Any, Any]:
    """The file's records and the counts of rows skipped, or a one-line UserError.

    The first record is read here, before any server is contacted: a file in
    the wrong format fails at once. A bad record further on stops the read
    with its number; what came before it has been handed on.
    """
    from stream.training.importers import read_input

    if file.is_dir() and fmt not in (InputFormat.AUTO, InputFormat.PARQUET):
        raise UserError(f"{file} is a directory; only a parquet export can be one")
    resolved = resolve_format(fmt, str(file), file.is_dir())
    if resolved == "csv":
        resolved = _sniff_csv(file)
    try:
        records, skipped = read_input(
            file,
            resolved,
            clickstream_topic=settings.topic_clickstream,
            orders_topic=settings.topic_orders,
        )
        checked = _checked(records, file)
        first = next(checked, None)
    except (ValueError, OSError) as exc:
        raise UserError(f"{file}: {exc}") from None
    return (itertools.chain([first], checked) if first is not None else iter(())), skipped


#: Header columns that give a known export away (its own --format applies).
_CSV_KINDS = {"user_session": "rees46", "InvoiceNo": "online-retail", "Invoice": "online-retail"}


def _sniff_csv(file: Path) -> str:
    try:
        with file.open(newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{file}: {exc}") from None
    for column, kind in _CSV_KINDS.items():
        if column in header:
            console.print(f"[yellow]{file.name}: a {kind} file by its header (--format {kind})")
            return kind
    return "csv"


def _checked(records: Iterable[Any], file: Path) -> Iterator[Any]:
    n = 0
    try:
        for record in records:
            yield record
            n += 1
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, csv.Error, OSError) as exc:
        raise UserError(
            f"{file}: record {n + 1}: {type(exc).__name__}: {exc} "
            f"(the {n:,} records before it were read)"
        ) from None


def require_broker(settings: Settings, timeout_s: float = 5.0) -> None:
    """A one-line error, not librdkafka's retries, when no broker answers, or when
    it refuses the settings' credentials or TLS (stream.broker_access)."""
    from stream.broker_access import check_broker_access

    for address in settings.bootstrap_servers.split(","):
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=timeout_s).close()
        except (OSError, ValueError):
            continue
        check_broker_access(settings)
        return
    raise UserError(
        f"cannot reach the Kafka broker at {settings.bootstrap_servers} "
        "(SEGMENTER_KAFKA_URL); is it running?"
    )
