"""The worker's HTTP endpoints (aiohttp, on the worker's loop).

Always /metrics, /healthz and /readyz; with a state store, also the read API
for recommendation services (:mod:`stream.api`, contract in ``openapi.yaml``),
behind its guards (bearer token, per-client rate limit).

Every request gets one access log line (logger ``segmenter.access``): method,
route template, status, duration and client address. The template, not the
path, and never the query: paths and cursors carry user ids.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Sequence

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from model.segments import DEFAULT_SEGMENTS
from stream.api import Classes, Middleware, Next, api_middlewares, mount_api
from stream.health import Health
from stream.settings import Settings
from stream.store import StateStore

log = logging.getLogger("segmenter.http")
access_log = logging.getLogger("segmenter.access")

#: Polled every few seconds by kubelet and Prometheus: their lines go at DEBUG,
#: so that INFO shows the API's traffic rather than the probes'.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
#: nginx's code for "the client went away before the answer".
CLIENT_CLOSED = 499


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def route_template(request: web.Request) -> str:
    """``/users/{user_id}`` for a request to ``/users/ann``: what may be logged of a path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "(no route)"


@web.middleware
async def log_access(request: web.Request, handler: Next) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500  # an exception no middleware turned into an answer: aiohttp sends 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = CLIENT_CLOSED
        raise
    finally:
        access_log.log(
            logging.DEBUG if request.path in QUIET_PATHS else logging.INFO,
            "method=%s route=%s status=%d duration_ms=%.1f client=%s",
            request.method,
            route_template(request),
            status,
            (time.perf_counter() - started) * 1000,
            request.remote or "-",
        )


def make_app(
    health: Health | None,
    store: StateStore | None = None,
    settings: Settings | None = None,
    classes: Classes = DEFAULT_SEGMENTS,
    audiences: Callable[[], Sequence[str]] = tuple,
) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest(REGISTRY))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def healthz(_: web.Request) -> web.Response:
        assert health is not None
        return _json(health.liveness())

    async def readyz(_: web.Request) -> web.Response:
        assert health is not None
        ready, body = health.readiness()
        return _json(body, 200 if ready else 503)

    # Outermost first: the access log also sees the 401s and 429s the guards answer.
    middlewares: list[Middleware] = [log_access]
    if store is not None and settings is not None:
        middlewares += api_middlewares(settings)
    app = web.Application(middlewares=middlewares)
    app.router.add_get("/metrics", metrics)
    if health is not None:  # the worker's probes; a job without one serves metrics only
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
    if store is not None:
        mount_api(app, store, settings, classes, audiences)
    return app


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host`` (an empty host is every interface)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve to anything
        return False


async def serve(
    health: Health | None,
    host: str,
    port: int,
    store: StateStore | None = None,
    settings: Settings | None = None,
    classes: Classes = DEFAULT_SEGMENTS,
    audiences: Callable[[], Sequence[str]] = tuple,
) -> web.AppRunner:
    open_api = store is not None and (settings is None or settings.api_token is None)
    if open_api and not is_loopback(host):
        log.warning(
            "the read API on %s:%d answers anyone who can reach it: set "
            "SEGMENTER_API_TOKEN (or SEGMENTER_API_TOKEN_FILE) to require a bearer token",
            host,
            port,
        )
    # aiohttp's own access log is off: it logs the raw path, which holds user ids.
    runner = web.AppRunner(make_app(health, store, settings, classes, audiences), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def serve_in_thread(host: str, port: int) -> threading.Thread | None:
    """/metrics for a blocking process (the retrain job): the same server as the
    worker's, on an event loop of its own in a daemon thread. Port 0 = off."""
    if not port:
        return None
    started = threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(serve(None, host, port))
        except BaseException as exc:  # e.g. the port is taken: said in the caller
            failed.append(exc)
            return
        finally:
            started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="segmenter-metrics", daemon=True)
    thread.start()
    started.wait(10)
    if failed:
        raise failed[0]
    return thread
