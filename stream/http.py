"""The worker's HTTP endpoints (aiohttp, on the worker's loop).

Always /metrics, /healthz and /readyz; with a state store, also the read API
for recommendation services (:mod:`stream.api`, contract in ``openapi.yaml``).
"""

from __future__ import annotations

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from model.segments import DEFAULT_SEGMENTS
from stream.api import Classes, mount_api
from stream.health import Health
from stream.settings import Settings
from stream.store import StateStore


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def make_app(
    health: Health,
    store: StateStore | None = None,
    settings: Settings | None = None,
    classes: Classes = DEFAULT_SEGMENTS,
) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest(REGISTRY))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def healthz(_: web.Request) -> web.Response:
        return _json(health.liveness())

    async def readyz(_: web.Request) -> web.Response:
        ready, body = health.readiness()
        return _json(body, 200 if ready else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if store is not None:
        mount_api(app, store, settings, classes)
    return app


async def serve(
    health: Health,
    host: str,
    port: int,
    store: StateStore | None = None,
    settings: Settings | None = None,
    classes: Classes = DEFAULT_SEGMENTS,
) -> web.AppRunner:
    runner = web.AppRunner(make_app(health, store, settings, classes), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
