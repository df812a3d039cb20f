"""What every command shares: the console, logging, settings and progress bars."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from stream.cli_args import InputFormat, UserError, resolve_format
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
    from stream.importers import read_input

    if file.is_dir() and fmt not in (InputFormat.AUTO, InputFormat.PARQUET):
        raise UserError(f"{file} is a directory; only a parquet export can be one")
    try:
        return read_input(
            file,
            resolve_format(fmt, str(file), file.is_dir()),
            clickstream_topic=settings.topic_clickstream,
            orders_topic=settings.topic_orders,
        )
    except (ValueError, OSError) as exc:
        raise UserError(f"{file}: {exc}") from None
