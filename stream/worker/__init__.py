"""`segmenter worker`: settings -> topics -> metrics endpoint -> Faust worker."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

import faust
from redis.exceptions import RedisError
from threadpoolctl import threadpool_limits

from stream.settings import Settings, SettingsError
from stream.topics import ensure_topics
from stream.worker.app import AGENT_DIED_EXIT, create_app
from stream.worker.state.store import StateStore, StoreMismatch

log = logging.getLogger("segmenter.worker")


def run_worker(settings: Settings, loglevel: str = "INFO") -> None:
    log.info("settings: %s", settings.safe_summary())
    if settings.blas_threads:
        # Measured (segmenter bench, cores used): with OpenBLAS's default of
        # one thread per core, its threads spun about 0.6 of a core between
        # the batch's small matrix products, on a 2-core machine.
        threadpool_limits(limits=settings.blas_threads, user_api="blas")
    # The app first: a bad model or playbook should fail before any connection.
    app = create_app(settings)
    asyncio.run(_check_stored_classes(settings, app.segmenter_model.current.classes))  # type: ignore[attr-defined]
    ensure_topics(settings)
    log.info(
        "serving model %s; consuming %s as group %r",
        app.segmenter_model.current.version,  # type: ignore[attr-defined]
        ", ".join(settings.input_topics),
        settings.group_id,
    )
    # mode's Worker installs SIGTERM/SIGINT handlers that stop the app in
    # order (agents, then consumer commit, then producer flush) and exit 0.
    try:
        faust.Worker(
            app, loglevel=loglevel, quiet=True, redirect_stdouts=False
        ).execute_from_commandline()
    finally:
        if app.segmenter_health.agent_error is not None:  # type: ignore[attr-defined]
            sys.exit(AGENT_DIED_EXIT)  # not 0: an orchestrator must restart it


async def _check_eviction(store: StateStore, settings: Settings) -> None:
    """Refuse a Redis that may evict keys: an evicted bucket is users' state lost
    without a trace (their counts restart from zero on their next event)."""
    policies = await store.eviction_policy()
    evicting = [p for p in policies if p != "noeviction"]
    if not policies:
        log.warning("Redis refused CONFIG GET maxmemory-policy; cannot check it is noeviction")
    elif evicting and settings.redis_allow_eviction:
        log.warning("Redis maxmemory-policy is %s: users' state may be evicted", evicting[0])
    elif evicting:
        raise StoreMismatch(
            f"Redis maxmemory-policy is {evicting[0]}, which silently drops users' state "
            "under memory pressure: set it to noeviction (or SEGMENTER_REDIS_ALLOW_EVICTION=true)"
        )


async def _check_stored_classes(settings: Settings, classes: Sequence[str]) -> None:
    """Refuse to start on state stored for other segment classes (see StateStore.bind_classes)."""
    store = StateStore.from_settings(settings)
    try:
        await store.bind_classes(classes)
        await _check_eviction(store, settings)
    except StoreMismatch as exc:
        raise SettingsError(str(exc)) from None
    except RedisError as exc:
        # Not fatal: the batch path binds them on its first commit, with retries.
        log.warning("could not check the stored classes yet (%s); will on the first batch", exc)
    finally:
        await store.close()
