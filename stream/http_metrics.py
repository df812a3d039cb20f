"""The HTTP every segmenter process serves: /metrics and one access-log line per request.

The worker builds its probes and read API on top of this (:mod:`stream.worker.web.http`);
a blocking job (the retrain job) serves it alone from a thread
(:func:`serve_in_thread`). Kept apart from the worker's HTTP so that training
never imports the worker.

Every request gets one access log line (logger ``segmenter.access``): method,
route template, status, duration and client address. The template, not the
path, and never the query: paths and cursors carry user ids.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

access_log = logging.getLogger("segmenter.access")

#: Polled every few seconds by kubelet and Prometheus: their lines go at DEBUG,
#: so that INFO shows the API's traffic rather than the probes'.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
#: nginx's code for "the client went away before the answer".
CLIENT_CLOSED = 499


def route_template(request: web.Request) -> str:
    """``/users/{user_id}`` for a request to ``/users/ann``: what may be logged of a path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "(no route)"


@web.middleware
async def log_access(request: web.Request, handler: Handler) -> web.StreamResponse:
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


async def metrics(_: web.Request) -> web.Response:
    resp = web.Response(body=generate_latest(REGISTRY))
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


def metrics_app(guards: Iterable[Middleware] = ()) -> web.Application:
    """An app with /metrics, its requests logged; ``guards`` run inside the log,
    so that it also sees the 401s and 429s they answer."""
    app = web.Application(middlewares=[log_access, *guards])
    app.router.add_get("/metrics", metrics)
    return app


async def start(app: web.Application, host: str, port: int) -> web.AppRunner:
    # aiohttp's own access log is off: it logs the raw path, which holds user ids.
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def serve_in_thread(host: str, port: int) -> threading.Thread | None:
    """/metrics for a blocking process (the retrain job), on an event loop of
    its own in a daemon thread. Port 0 = off."""
    if not port:
        return None
    started = threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(start(metrics_app(), host, port))
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
