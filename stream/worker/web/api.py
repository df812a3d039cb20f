"""Read API for recommendation services: a user's segment, segment sizes and members.

Mounted on every worker's HTTP app (see :func:`stream.worker.web.http.make_app`). State
lives in Redis, so any worker answers for any user, whichever partitions it
owns. The contract is ``stream/openapi.yaml``, served at ``/openapi.yaml`` and
``/openapi.json``; tests run schemathesis against it.

Errors are JSON ``{"error": ...}``: 400 for a malformed request, 404 for an
unknown user or segment, 503 when Redis cannot be reached. Bad input never
produces a 500.

Guards (:func:`api_middlewares`, wired by :func:`stream.worker.web.http.make_app`): with
``SEGMENTER_API_TOKEN`` set, every route but :data:`PUBLIC_PATHS` needs
``Authorization: Bearer <token>`` (else 401); each client address gets a token
bucket of ``SEGMENTER_API_BURST`` requests refilled at ``SEGMENTER_API_RATE_PER_S``
(else 429 with Retry-After). The client address is the socket peer, or, when
that is one of ``SEGMENTER_TRUSTED_PROXIES``, the nearest untrusted hop of
``X-Forwarded-For`` (:func:`client_address`). Probes and /metrics are neither limited nor closed:
kubelet and Prometheus carry no token, and a busy client must not fail a probe.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson
import yaml
from aiohttp import web
from aiohttp.typedefs import Handler as Next  # what a middleware hands the request on to
from aiohttp.typedefs import Middleware
from redis.exceptions import RedisError

from model.segments import DEFAULT_SEGMENTS
from stream.core.events import MAX_ID_LEN, iso
from stream.settings import Settings
from stream.settings_rules import Network, trusted_networks
from stream.worker.forget import stored_id
from stream.worker.state.store import AUDIENCE_PREFIX, StateStore
from stream.worker.traits import ModelVersions
from stream.worker.web.lookup import describe

log = logging.getLogger("segmenter.api")

OPENAPI_PATH = Path(__file__).parents[2] / "openapi.yaml"  # package data of stream/

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: Segment names as the document promises them: what Kafka accepts in the
#: ``segments.<segment>`` topic names, minus a leading dot, so that no name is
#: "." or "..", which HTTP clients collapse as path segments.
SEGMENT_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
AUDIENCE_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")
#: C0, DEL and C1: never part of an id anyone means, and unsafe in logs.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: Unpadded base64url; a length of 4n+1 can never be decoded.
_CURSOR_RE = re.compile(r"(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2,3})?")
#: A user id is at most MAX_ID_LEN characters of up to 4 UTF-8 bytes each.
MAX_CURSOR_BYTES = 4 * MAX_ID_LEN
MAX_CURSOR_LEN = (MAX_CURSOR_BYTES * 4 + 2) // 3

Classes = Sequence[str] | Callable[[], Sequence[str]]
Handler = Callable[[web.Request], Awaitable[web.Response]]

#: Answered without a token: probes and Prometheus carry none, and the contract
#: is no secret.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.yaml", "/openapi.json"})
#: Never rate-limited: a client flooding the API must not fail the pod's probes.
UNLIMITED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
#: Client addresses whose buckets are kept at most. Past it the least recently
#: seen client is forgotten (it starts again with a full bucket): a flood of
#: addresses costs memory up to here, never more.
MAX_CLIENTS = 10_000


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


def path_user_id(request: web.Request) -> str:
    """The user id in ``/users/{user_id}``, percent-decoded from the raw path as UTF-8.

    Not aiohttp's ``match_info``: it leaves an escape that is not UTF-8 as is, so
    ``/users/%FF`` and ``/users/%25FF`` would both ask for the id "%FF". Ids are
    compared as bytes in Redis, so a path that is not UTF-8 is refused, never
    patched up.
    """
    raw = request.rel_url.raw_path
    if not raw.startswith("/users/"):  # not reached through our route: nothing to decode
        return request.match_info.get("user_id", "")
    try:
        return unquote_to_bytes(raw[len("/users/") :]).decode("utf-8")
    except UnicodeError:
        raise BadRequest("user_id is not UTF-8: percent-encode the id's UTF-8 bytes") from None


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
    audiences: Callable[[], Sequence[str]] = tuple,
    models: ModelVersions | None = None,
) -> None:
    """Add the read API's routes to ``app``.

    ``classes`` is the served model's segments, or a callable returning them:
    the worker passes one so that a promoted model with other classes is
    reflected without a restart. ``settings`` carries the pseudonymisation
    key: with one, ``/users/{user_id}`` takes the raw id, as ``segmenter user`` does.
    ``models`` finds the model that scored a user, to recompute their traits
    (the worker's shares its served model); by default, the registry in
    ``settings.model_dir``. Without either, traits are null.
    """
    if models is None and settings is not None:
        models = ModelVersions(settings.model_dir)

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
        user_id = path_user_id(request)
        check_user_id(user_id)
        key = user_id if settings is None else stored_id(settings, user_id)
        # One pipelined round trip for the record and stream time.
        # Not from the worker's cache: a read must not take a batch's record out.
        records, stream_time, _ = await store.load([key], cached=False)
        rec = records[key]
        if not rec.exists:
            return _error(404, "unknown user", user_id=user_id)
        traits = models.traits(rec) if models is not None else None
        return _json(describe(user_id, rec, stream_time, traits))

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

    async def page_of(index: str, request: web.Request) -> dict[str, Any]:
        """One page of a member index (a segment's, or an audience's)."""
        limit = parse_limit(request)
        after = parse_cursor(request)
        # One extra member tells whether another page exists, so the last page
        # says next_cursor: null instead of leaving the client an empty page to fetch.
        page = await store.members(index, after=after, limit=limit + 1)
        more = len(page) > limit
        page = page[:limit]
        return {"users": page, "next_cursor": encode_cursor(page[-1]) if more else None}

    @_guarded
    async def get_members(request: web.Request) -> web.Response:
        segment = request.match_info["segment"]
        not_found = check_segment(segment)
        if not_found is not None:
            return not_found
        return _json({"segment": segment, **await page_of(segment, request)})

    @_guarded
    async def get_audience_members(request: web.Request) -> web.Response:
        name = request.match_info["audience"]
        if not AUDIENCE_RE.fullmatch(name):
            raise BadRequest("audience must match [a-z][a-z0-9_]{0,62}")
        if name not in audiences():
            return _error(404, "unknown audience", audience=name)
        return _json({"audience": name, **await page_of(AUDIENCE_PREFIX + name, request)})

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
    app.router.add_get(r"/audiences/{audience:[\s\S]+}/users", get_audience_members)
    app.router.add_get("/openapi.yaml", openapi_yaml)
    app.router.add_get("/openapi.json", openapi_json)


# --- guards: bearer token and per-client rate limit


def bearer_auth(token: bytes) -> Middleware:
    """401 for any route outside :data:`PUBLIC_PATHS` without ``Bearer <token>``."""

    def unauthorized(message: str, challenge: str) -> web.Response:
        resp = _error(401, message)
        resp.headers["WWW-Authenticate"] = challenge
        return resp

    @web.middleware
    async def auth(request: web.Request, handler: Next) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        scheme, _, presented = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return unauthorized("bearer token required", 'Bearer realm="segmenter"')
        # Bytes as they came (aiohttp decodes headers with surrogateescape), compared
        # in constant time: the answer's timing tells nothing about the token.
        if not hmac.compare_digest(presented.strip().encode("utf-8", "surrogateescape"), token):
            return unauthorized(
                "invalid bearer token", 'Bearer realm="segmenter", error="invalid_token"'
            )
        return await handler(request)

    return auth


class RateLimiter:
    """Token buckets per client: ``burst`` requests at once, refilled at ``rate`` per second.

    The table is bounded: a bucket idle long enough to be full again is dropped
    (the same as no bucket), and past ``max_clients`` the least recently seen
    client is forgotten.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1 or max_clients < 1:
            raise ValueError("a rate limiter needs rate > 0, burst >= 1 and max_clients >= 1")
        self.rate = rate
        self.burst = float(burst)
        self.max_clients = max_clients
        self._clock = clock
        #: client -> (tokens left, when they were counted); least recently seen first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _level(self, bucket: tuple[float, float], now: float) -> float:
        tokens, at = bucket
        return min(self.burst, tokens + (now - at) * self.rate)

    def take(self, client: str) -> float:
        """Spend one of ``client``'s tokens: 0.0 if it had one, else seconds until it has."""
        now = self._clock()
        # Least recently seen first: stop at the first one still refilling.
        while self._buckets:
            oldest, idle = next(iter(self._buckets.items()))
            if self._level(idle, now) < self.burst:
                break
            del self._buckets[oldest]
        # Popped and put back: the dict's order is the order clients were last seen.
        mine = self._buckets.pop(client) if client in self._buckets else None
        tokens = self.burst if mine is None else self._level(mine, now)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
        self._buckets[client] = (tokens - 1 if wait == 0.0 else tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait


def client_address(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]
) -> str:
    """The client a request is from: the socket peer, unless that is a trusted
    proxy; then the nearest ``X-Forwarded-For`` hop that is not one.

    Read right to left, because each proxy appends what it saw: the hops left
    of the first untrusted one are whatever the client chose to send.
    """
    if not trusted or not _trusted(peer, trusted):
        return peer or "unknown"
    hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
    client = peer or "unknown"
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return hop if _address(hop) is not None else client
        client = hop
    return client


def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text or "")
    except ValueError:
        return None


def _trusted(text: str | None, trusted: Sequence[Network]) -> bool:
    addr = _address(text)
    return addr is not None and any(addr in net for net in trusted)


def rate_limit(limiter: RateLimiter, trusted: Sequence[Network] = ()) -> Middleware:
    """429 with Retry-After once a client address has spent its bucket."""

    @web.middleware
    async def limit(request: web.Request, handler: Next) -> web.StreamResponse:
        if request.path in UNLIMITED_PATHS:
            return await handler(request)
        client = client_address(
            request.remote, request.headers.getall("X-Forwarded-For", []), trusted
        )
        wait = limiter.take(client)
        if wait > 0:
            return _json(
                {"error": "too many requests"}, 429, {"Retry-After": str(max(1, math.ceil(wait)))}
            )
        return await handler(request)

    return limit


def api_middlewares(settings: Settings) -> list[Middleware]:
    """The read API's guards in the order they run: the rate limit first, so that
    guessing tokens is rate-limited too."""
    out: list[Middleware] = []
    if settings.api_rate_per_s > 0 and settings.api_burst > 0:
        trusted = trusted_networks(settings.trusted_proxies)
        out.append(rate_limit(RateLimiter(settings.api_rate_per_s, settings.api_burst), trusted))
    if settings.api_token is not None:
        out.append(bearer_auth(settings.api_token.get_secret_value().encode()))
    return out
