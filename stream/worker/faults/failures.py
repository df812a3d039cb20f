"""How the processor meets failure: which are outages to wait out, which a
batch's own fault, and the retry loop around both.

Only a fault that recurs the same way is taken apart to find the record to
dead-letter (stream.worker.pipeline); outages are waited out, never blamed on a record.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from confluent_kafka import KafkaError, KafkaException
from redis.exceptions import RedisClusterException, RedisError

from stream import metrics
from stream.worker.faults.stalls import Stalls
from stream.worker.pipeline_config import PipelineConfig
from stream.worker.state.store import ConflictError, StoreMismatch
from stream.worker.web.health import Health

log = logging.getLogger("stream.worker.pipeline")  # the processor's log, as ever
_T = TypeVar("_T")


class Poisoned(Exception):
    """A batch failed the same way ``max_batch_failures`` times: not an outage."""

    def __init__(self, what: str, signature: str) -> None:
        super().__init__(f"{what} failed the same way repeatedly: {signature}")
        self.what, self.signature = what, signature


def io_failure(exc: BaseException) -> str | None:
    """The stall reason if ``exc`` is an I/O failure, else None (the batch's own fault).

    One rule: only pure code on one record (decode, fold, features, score,
    encode) may fail a record; every failure of I/O is waited out and never
    dead-letters anything. Redis means every redis-py error, the cluster's
    included (``RedisClusterException``, ``SlotNotCoveredError`` and
    ``RedisClusterUnreachableError`` are not ``RedisError``); Kafka means
    every error out of produce or delivery, retriable or not: an ACL denying
    an output topic, or the topic deleted, is no record's fault either.
    """
    if isinstance(exc, RedisError | RedisClusterException):
        return "redis"
    if refused(exc) is not None:
        return "broker_refused"
    if isinstance(exc, KafkaException):
        return "kafka"
    if isinstance(exc, ConnectionError | TimeoutError | OSError):
        return "redis"  # a bare socket error: librdkafka reports its own as KafkaException
    return None


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` is an outage to wait out rather than a fault of the batch."""
    return io_failure(exc) is not None


def refused(exc: BaseException) -> KafkaError | None:
    """The broker's refusal of this worker (not of a record), if ``exc`` is one."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0] if exc.args[0].code() in _REFUSED_KAFKA else None
    return None


#: The broker refuses the worker itself: an ACL, a revoked or changed user. No
#: record is at fault and none may be dead-lettered for it (an ACL denying the
#: output topic would otherwise send every good record to the DLQ); the batch
#: waits, counted in segmenter_broker_refusals_total, until access is granted.
_REFUSED_KAFKA = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._AUTHENTICATION,
    }
)


class Retrying:
    """The processor's retry loop (mixed into stream.worker.pipeline.BatchProcessor,
    which provides what is declared here)."""

    cfg: PipelineConfig
    _health: Health | None
    _fatal: BaseException | None
    _on_fatal: Callable[[BaseException], Awaitable[None]] | None
    _should_stop: Callable[[], bool]
    _stalls: Stalls

    async def _tombstone(self, users: Sequence[str]) -> None:
        raise NotImplementedError

    async def _retrying(
        self, run: Callable[[], Awaitable[_T]], what: str, poison: bool = False
    ) -> tuple[_T, int]:
        """Run ``run`` until it commits; return its result and the attempts it took.

        Nothing escapes but cancellation, and (with ``poison``) :class:`Poisoned`
        once a non-transient error has recurred ``max_batch_failures`` times in
        a row: an exception out of the agent would let Faust move past an
        unapplied batch, whose events dedup would then skip. A refused commit
        re-runs at once; anything else backs off, with jitter.
        """
        attempt = 0
        same, signature = 0, ""
        while True:
            attempt += 1
            try:
                out = await run()
                if self._health is not None:
                    self._health.redis_ok, self._health.redis_error = True, None
                self._stalls.cleared()
                return out, attempt
            except ConflictError as exc:
                metrics.COMMIT_CONFLICTS.inc()
                log.info("%s re-run after a concurrent write: %s", what, exc)
                if gone := exc.gone:
                    # Erased (`forget`) since we read them, after we published
                    # their changes: say again that they are gone, so
                    # subscribers drop those changes and accept the re-run's.
                    await self._retrying(lambda: self._tombstone(gone), "tombstone")
                if attempt > 1:  # a rebalance in progress: let the other writer finish
                    await self._backoff(attempt - 1, exc)
            except StoreMismatch as exc:
                # Fatal: stored state belongs to another set of classes. Stop
                # the worker with an error (the batch stays unacked) instead
                # of retrying forever.
                log.critical("%s; stopping the worker", exc)
                self._fatal = exc
                if self._on_fatal is None:
                    raise
                await self._on_fatal(exc)
                raise asyncio.CancelledError(str(exc)) from None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if (reason := io_failure(exc)) is not None:
                    self._io_failed(reason, what, exc)
                    await self._backoff(attempt, exc)
                    continue
                if poison:
                    now = f"{type(exc).__name__}: {str(exc)[:300]}"
                    same, signature = (same + 1, now) if now == signature else (1, now)
                    if same >= self.cfg.max_batch_failures:
                        metrics.POISONED_BATCHES.labels(what).inc()
                        raise Poisoned(what, signature) from exc
                log.exception("%s failed; retrying it", what)
                await self._backoff(attempt, exc)

    def _io_failed(self, reason: str, what: str, exc: Exception) -> None:
        """Count and show an I/O failure: the batch stalls, nothing is dead-lettered."""
        if reason == "redis":
            metrics.REDIS_ERRORS.labels(what).inc()
            if self._health is not None:
                self._health.redis_ok, self._health.redis_error = False, type(exc).__name__
        elif (err := refused(exc)) is not None:
            metrics.BROKER_REFUSALS.labels(what, err.name()).inc()
            if self._stalls.reason != "broker_refused":  # once; then the stall's own line
                log.error(
                    "%s refused by the broker (%s): waiting, nothing dead-lettered; "
                    "grant this worker's principal access (ACLs) and it goes on",
                    what,
                    err.str(),
                )
        self._stalls.failing(reason, what, exc)

    async def _backoff(self, attempt: int, exc: Exception) -> None:
        if self._should_stop() or self._fatal is not None:
            raise asyncio.CancelledError(f"stopping with the batch unapplied: {exc}")
        # Equal jitter: workers that failed together do not retry together.
        # The exponent capped: a stall retries for ever, and 2.0**1024 overflows.
        ceiling = min(self.cfg.retry_max_s, self.cfg.retry_initial_s * 2 ** min(attempt - 1, 64))
        delay = ceiling * random.uniform(0.5, 1.0)
        log.warning(
            "%s: %s; batch not applied, retry %d in %.1fs",
            type(exc).__name__,
            exc,
            attempt,
            delay,
        )
        await asyncio.sleep(delay)
