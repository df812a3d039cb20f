"""Read API for recommendation services: a user's segment, segment sizes and members.

Mounted on every worker's HTTP app (see :func:`stream.http.make_app`). State
lives in Redis, so any worker answers for any user, whichever partitions it
owns. The contract is ``stream/openapi.yaml``, served at ``/openapi.yaml`` and
``/openapi.json``; tests run schemathesis against it.

Errors are JSON ``{"error": ...}``: 400 for a malformed request, 404 for an
unknown user or segment, 503 when Redis cannot be reached. Bad input never
produces a 500.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiohttp import web
from redis.exceptions import RedisError

from model.segments import DEFAULT_SEGMENTS
from stream.events import MAX_ID_LEN, iso
from stream.forget import stored_id
from stream.lookup import describe
from stream.settings import Settings
from stream.store import StateStore

log = logging.getLogger("segmenter.api")

OPENAPI_PATH = Path(__file__).with_name("openapi.yaml")

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: Segment names as the document promises them: what Kafka accepts in the
#: ``segments.<segment>`` topic names, minus a leading dot, so that no name is
#: "." or "..", which HTTP clients collapse as path segments.
SEGMENT_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
#: C0, DEL and C1: never part of an id anyone means, and unsafe in logs.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: Unpadded base64url; a length of 4n+1 can never be decoded.
_CURSOR_RE = re.compile(r"(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2,3})?")
#: A user id is at most MAX_ID_LEN characters of up to 4 UTF-8 bytes each.
MAX_CURSOR_BYTES = 4 * MAX_ID_LEN
MAX_CURSOR_LEN = (MAX_CURSOR_BYTES * 4 + 2) // 3

Classes = Sequence[str] | Callable[[], Sequence[str]]
Handler = Callable[[web.Request], Awaitable[web.Response]]


class BadRequest(Exception):
    """A request the client must fix: answered 400 with this message."""


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return _json({"error": message, **extra}, status)


def encode_cursor(user_id: str) -> str:
    return base64.urlsafe_b64encode(user_id.encode()).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> str:
    """The user id a cursor points after; :class:`BadRequest` if it was not one of ours."""
    if not cursor or len(cursor) > MAX_CURSOR_LEN or not _CURSOR_RE.fullmatch(cursor):
        raise BadRequest("malformed cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise BadRequest("malformed cursor") from None


def check_user_id(user_id: str) -> None:
    if not user_id:
        raise BadRequest("user_id must not be empty")
    if len(user_id) > MAX_ID_LEN:
        raise BadRequest(f"user_id is longer than {MAX_ID_LEN} characters")
    if _CONTROL_RE.search(user_id):
        raise BadRequest("user_id contains control characters")


def parse_limit(request: web.Request) -> int:
    values = request.query.getall("limit", [])
    if not values:
        return DEFAULT_LIMIT
    # Digits only: int() would also take " 5", "+5", "5_0" and non-ASCII digits.
    if len(values) > 1 or not re.fullmatch(r"[0-9]{1,7}", values[0]):
        raise BadRequest(f"limit must be one integer from 1 to {MAX_LIMIT}")
    limit = int(values[0])
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be one integer from 1 to {MAX_LIMIT}")
    return limit


def parse_cursor(request: web.Request) -> str:
    values = request.query.getall("cursor", [])
    if not values:
        return ""
    if len(values) > 1:
        raise BadRequest("malformed cursor")
    return decode_cursor(values[0])


def _guarded(handler: Handler) -> Handler:
    """400 for :class:`BadRequest`, 503 when Redis fails: never a 500 for a client to parse."""

    async def run(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except BadRequest as exc:
            return _error(400, str(exc))
        except (RedisError, OSError, TimeoutError) as exc:
            # The worker's own retries and /readyz report Redis trouble; one line
            # per failed request is enough here.
            log.warning("read API: state store unavailable: %s: %s", type(exc).__name__, exc)
            return _json({"error": "state store unavailable"}, 503, {"Retry-After": "1"})

    return run


@cache
def openapi_document() -> tuple[bytes, bytes]:
    """The contract as (YAML, JSON) bytes, read once."""
    text = OPENAPI_PATH.read_bytes()
    return text, orjson.dumps(yaml.safe_load(text))


def mount_api(
    app: web.Application,
    store: StateStore,
    settings: Settings | None = None,
    classes: Classes = DEFAULT_SEGMENTS,
) -> None:
    """Add the read API's routes to ``app``.

    ``classes`` is the served model's segments, or a callable returning them:
    the worker passes one so that a promoted model with other classes is
    reflected without a restart. ``settings`` carries the pseudonymisation
    key: with one, ``/users/{user_id}`` takes the raw id, as ``segmenter user`` does.
    """

    def current_classes() -> tuple[str, ...]:
        return tuple(classes() if callable(classes) else classes)

    def check_segment(segment: str) -> web.Response | None:
        if segment in current_classes():
            return None
        if not SEGMENT_RE.fullmatch(segment):
            raise BadRequest("segment must match [A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
        return _error(404, "unknown segment", segment=segment)

    @_guarded
    async def get_user(request: web.Request) -> web.Response:
        user_id = request.match_info.get("user_id", "")
        check_user_id(user_id)
        key = user_id if settings is None else stored_id(settings, user_id)
        # One pipelined round trip for the record and stream time.
        records, stream_time, _ = await store.load([key])
        rec = records[key]
        if not rec.exists:
            return _error(404, "unknown user", user_id=user_id)
        return _json(describe(user_id, rec, stream_time))

    @_guarded
    async def get_segments(_: web.Request) -> web.Response:
        counts = await store.segment_counts()
        stream_time = await store.stream_time()
        # The served model's classes only, in its order, so every name listed here
        # can be paged; users still in an old model's segment move on their next score.
        return _json(
            {
                "segments": {s: counts.get(s, 0) for s in current_classes()},
                "stream_time": iso(stream_time) if stream_time else None,
            }
        )

    @_guarded
    async def get_members(request: web.Request) -> web.Response:
        segment = request.match_info["segment"]
        not_found = check_segment(segment)
        if not_found is not None:
            return not_found
        limit = parse_limit(request)
        after = parse_cursor(request)
        # One extra member tells whether another page exists, so the last page
        # says next_cursor: null instead of leaving the client an empty page to fetch.
        page = await store.members(segment, after=after, limit=limit + 1)
        more = len(page) > limit
        page = page[:limit]
        return _json(
            {
                "segment": segment,
                "users": page,
                "next_cursor": encode_cursor(page[-1]) if more else None,
            }
        )

    async def openapi_yaml(_: web.Request) -> web.Response:
        return web.Response(body=openapi_document()[0], content_type="application/yaml")

    async def openapi_json(_: web.Request) -> web.Response:
        return web.Response(body=openapi_document()[1], content_type="application/json")

    # Match anything, newlines included: an id may hold '{', '}', an encoded '/'
    # or a control character, which aiohttp's default [^{}/]+ (or '.') would turn
    # into a plain-text 404 instead of our JSON answer.
    app.router.add_get("/users/", get_user)
    app.router.add_get(r"/users/{user_id:[\s\S]+}", get_user)
    app.router.add_get("/segments", get_segments)
    app.router.add_get(r"/segments/{segment:[\s\S]+}/users", get_members)
    app.router.add_get("/openapi.yaml", openapi_yaml)
    app.router.add_get("/openapi.json", openapi_json)
