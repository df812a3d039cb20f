"""Keep secrets out of what the service prints: log records and settings errors.

Two things carry a secret into text: a configured secret value (a password,
the pseudonymisation key, the API token) and credentials inside a URL
(``scheme://user:pass@host``). :class:`Redactor` removes both from a string;
:class:`RedactingFilter` applies it to every record a log handler formats, and
:func:`install` puts one on each root handler. Also here: reading a secret
from a file (``SEGMENTER_<NAME>_FILE``) and finding the passwords in URLs.

The filter sits on handlers, not loggers: a logger's filters only see records
logged on that very logger, while every record of every library reaches the
root handlers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"
#: Printed instead of a line whose secrets could not be masked (a secret made of
#: the mask's own characters, say): better one line lost than one secret shown.
WITHHELD = "[log line withheld: it contained a secret]"

#: The userinfo of a URL: from "://" to the last "@" before the authority ends
#: (a "/", "?", "#" or whitespace). Greedy on purpose: an unescaped "@" in a
#: password ("u:p@ss@host") must not leave "ss" behind. Anchored on the literal
#: "://" so that the scan costs nothing on text without URLs.
URL_CREDENTIALS = re.compile(r"://[^/\s?#]*@")
#: A secret file larger than this is not a secret (a wrong path, /dev/zero): refused.
MAX_SECRET_FILE_BYTES = 64 * 1024


class Redactor:
    """Masks URL credentials and the given secret values in text.

    ``redactor(text)`` never returns text containing one of the secrets: what a
    single pass cannot clean (the mask joining with the text around it into a
    secret again) is passed again, and if that still fails the line is withheld.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so that a secret containing another is masked whole.
        values = sorted({s for s in secrets if s}, key=len, reverse=True)
        self.secrets: tuple[str, ...] = tuple(values)
        self._pattern = re.compile("|".join(map(re.escape, values))) if values else None

    def _leaks(self, text: str) -> bool:
        return any(s in text for s in self.secrets)

    def __call__(self, text: str) -> str:
        out = URL_CREDENTIALS.sub(f"://{MASK}@", text)
        if self._pattern is None:
            return out
        for _ in range(3):
            out = self._pattern.sub(MASK, out)
            if not self._leaks(out):
                return out
        return "" if self._leaks(WITHHELD) else WITHHELD


class RedactingFilter(logging.Filter):
    """Rewrites a record's message, traceback and stack so they carry no secret.

    Installed on handlers (see :func:`install`). It never drops a record: it
    only replaces text, in place, so every handler after it sees the clean one.
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it when formatting
            return True
        clean = self.redactor(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[0] is not None:
            text = self._formatter.formatException(record.exc_info)
            clean = self.redactor(text)
            if clean != text:
                # Handlers (Rich's too) render exc_info themselves; with it gone
                # they print the cleaned text from exc_text instead.
                record.exc_info, record.exc_text = None, clean
        elif record.exc_text:
            record.exc_text = self.redactor(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor(record.stack_info)
        return True


#: The filter records are cleaned with as they are created (see :func:`install`).
_current: RedactingFilter | None = None


def _clean_on_creation(
    factory: Callable[..., logging.LogRecord],
) -> Callable[..., logging.LogRecord]:
    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        if _current is not None:
            _current.filter(record)
        return record

    return make


def install(redactor: Redactor, root: logging.Logger | None = None) -> RedactingFilter:
    """Put one :class:`RedactingFilter` on every handler of the root logger.

    Idempotent, and meant to be called again whenever something replaces the
    root handlers (mode's worker does when it starts): an earlier filter of
    ours on a handler is replaced, not stacked. For the real root logger, records
    are also cleaned as they are created (a log record factory): handlers that
    replace ours before the filter is put back on them print no secret either.
    """
    global _current
    new = RedactingFilter(redactor)
    if root is None:
        root = logging.getLogger()
        if _current is None:  # wrap the factory once; later calls swap the filter
            logging.setLogRecordFactory(_clean_on_creation(logging.getLogRecordFactory()))
        _current = new
    for handler in root.handlers:
        for old in [f for f in handler.filters if isinstance(f, RedactingFilter)]:
            handler.removeFilter(old)
        handler.addFilter(new)
    return new


def redact_url(url: str) -> str:
    """``url`` without its userinfo: ``scheme://user:pass@host`` -> ``scheme://***@host``."""
    try:
        parts = urlsplit(url)
        if parts.password is None and parts.username is None:
            return url
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
    except ValueError:  # a port that is no number: mask by pattern instead
        return Redactor()(url)
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


def redact_urls(value: str) -> str:
    """Each of ';'-separated URLs (Kafka takes several) without credentials."""
    return ";".join(redact_url(part) for part in value.split(";"))


def url_passwords(value: object) -> list[str]:
    """The passwords in a URL setting (several ';'-separated URLs for Kafka), as
    written and percent-decoded: either form may reach a message."""
    out: list[str] = []
    if not isinstance(value, str):
        return out
    for part in value.split(";"):
        try:
            password = urlsplit(part if "://" in part else f"kafka://{part}").password
        except ValueError:
            continue
        if password:
            out += [password, unquote(password)]
    return out


def read_secret_file(path: Path) -> str:
    """A secret file's content without trailing newlines; ValueError naming what is wrong
    with the file (never its content)."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    if len(raw) > MAX_SECRET_FILE_BYTES:
        raise ValueError(f"is over {MAX_SECRET_FILE_BYTES // 1024} KiB: not a secret file")
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ValueError("is not UTF-8 text") from None
    if not text:
        # An empty secret would turn a protection off (the API token) or fail
        # later and obscurely (a password): refuse it here.
        raise ValueError("is empty")
    return text
