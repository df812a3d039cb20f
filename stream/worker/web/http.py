"""The worker's HTTP endpoints (aiohttp, on the worker's loop).

Always /metrics (with the access log, from :mod:`stream.http_metrics`),
/healthz and /readyz; with a state store, also the read API for
recommendation services (:mod:`stream.worker.web.api`, contract in ``openapi.yaml``),
behind its guards (bearer token, per-client rate limit).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence

import orjson
from aiohttp import web

from model.segments import DEFAULT_SEGMENTS
from stream.http_metrics import metrics_app, start
from stream.settings import Settings
from stream.worker.state.store import StateStore
from stream.worker.traits import ModelVersions
from stream.worker.web.api import Classes, Middleware, api_middlewares, mount_api
from stream.worker.web.health import Health

log = logging.getLogger("segmenter.http")


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def make_app(
    health: Health | None,
    store: StateStore | None = None,
    settings: Settings | None = None,
    classes: Classes = DEFAULT_SEGMENTS,
    audiences: Callable[[], Sequence[str]] = tuple,
    models: ModelVersions | None = None,
) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        assert health is not None
        body = health.liveness()
        return _json(body, 200 if body["alive"] else 503)

    async def readyz(_: web.Request) -> web.Response:
        assert health is not None
        ready, body = health.readiness()
        return _json(body, 200 if ready else 503)

    guards: list[Middleware] = []
    if store is not None and settings is not None:
        guards = api_middlewares(settings)
    app = metrics_app(guards)
    if health is not None:  # the worker's probes; a job without one serves metrics only
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
    if store is not None:
        mount_api(app, store, settings, classes, audiences, models)
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
    models: ModelVersions | None = None,
) -> web.AppRunner:
    open_api = store is not None and (settings is None or settings.api_token is None)
    if open_api and not is_loopback(host):
        log.warning(
            "the read API on %s:%d answers anyone who can reach it: set "
            "SEGMENTER_API_TOKEN (or SEGMENTER_API_TOKEN_FILE) to require a bearer token",
            host,
            port,
        )
    return await start(make_app(health, store, settings, classes, audiences, models), host, port)
