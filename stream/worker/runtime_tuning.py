"""The worker process's runtime levers: which event loop, and a calmer garbage
collector. Each was measured with ``segmenter bench`` (docs/performance.md)."""

from __future__ import annotations

import asyncio
import gc
import logging

import faust

log = logging.getLogger(__name__)


def use_event_loop(name: str) -> str:
    """Make ``name`` ("uvloop" or "asyncio") the event loop of loops created from now on.

    Call before anything creates a loop (the Faust worker creates its own, and
    its consumer thread another, after ``create_app``). Measured with
    ``segmenter bench``, three runs each: uvloop 16.1k-17.9k ev/s, asyncio
    17.6k-18.8k ev/s, so asyncio is the default; uvloop stays one setting
    away for machines where it wins. Returns the loop in use.
    """
    if name != "uvloop":
        return "asyncio"
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:  # a loop already runs this code: switching now would split the app over two
        log.warning("event loop already running; uvloop not installed")
        return "asyncio"
    try:
        import uvloop
    except ImportError:  # e.g. Windows: uvloop does not build there
        log.warning("uvloop is not installed; using asyncio's event loop")
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def tune_gc_on_start(app: faust.App, gen0_threshold: int) -> None:
    """Once the worker has started: freeze start-up objects, collect young ones less often.

    Measured (``segmenter bench``, py-spy): with Python's default threshold of
    700 allocations, each batch's records outlive a few young collections, get
    promoted, and trigger full collections that walk every object the worker
    holds (model, pydantic, Faust) many times a second. ``gc.freeze()`` takes
    the start-up objects out of collection for good. The threshold counts
    objects allocated less those freed, and a batch's objects are freed by
    reference counting when it ends: at 500,000 a batch of 10,000 records
    does not reach it, so nothing is walked while it runs (the processor alone
    on 160,000 records in batches of 10,000: 15 young collections and 0.9-1.2
    µs of GC per record at 50,000; none at 500,000, and 1.3 µs less CPU per
    record, four interleaved pairs). Reference cycles are still collected,
    once that many young objects outlive their batches.
    0 leaves the interpreter's defaults.
    """
    if gen0_threshold <= 0:
        return

    async def tune_gc() -> None:
        gc.collect()
        gc.freeze()
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(gen0_threshold, gen1, gen2)
        log.info(
            "gc: %d start-up objects frozen, young threshold %d (event loop: %s)",
            gc.get_freeze_count(),
            gen0_threshold,
            type(asyncio.get_running_loop()).__module__,
        )

    app.task(tune_gc)
