"""The re-evaluation sweep's poison rule, the batches' own: a user whose
time-driven step fails the same way every time is set aside, and the rest go on.

Set aside = unscheduled and dead-lettered (``reevaluation_failed``, keyed by
the user); the user's state stays, and their next event takes them up again.
Without it, one such user would hold the writer lock, and so every partition
the worker owns, for good. A second user failing as the last culprit did is
not poison but a fault of the code, model or data as a whole: the sweep
stalls (``no_culprit``), as a batch would.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

from stream.sinks import Outgoing
from stream.worker.batch import BatchResult
from stream.worker.faults.dead_letters import count_user_dead_letter, user_dead_letter
from stream.worker.faults.failures import Poisoned

if TYPE_CHECKING:
    from stream.worker.pipeline import BatchProcessor

log = logging.getLogger("stream.worker.pipeline")


async def sweep_apart(proc: BatchProcessor, part: int, limit: int, exc: Poisoned) -> BatchResult:
    """The sweep of ``part`` failed the same way repeatedly: sweep its due users one by one."""
    total = BatchResult(records=0)
    if exc.signature == proc._last_culprit:
        proc._stalls.failing("no_culprit", exc.what, exc)
        return total  # the next round tries again
    until = await proc.clocks.until(part)
    for uid, when in await proc.store.due_for_reevaluation(part, until, limit):
        one = functools.partial(proc._sweep, part, limit, frozenset({uid}))
        try:
            swept, _ = await proc._retrying(one, "reevaluate", poison=True)
        except Poisoned as failed:
            if failed.signature == proc._last_culprit:
                proc._stalls.failing("no_culprit", failed.what, failed)
                return total
            proc._last_culprit = failed.signature
            why = f"failed {proc.cfg.max_batch_failures} times: {failed.signature}"
            log.error("setting aside a user of partition %d: %s", part, why)
            letter = user_dead_letter(proc.cfg.dlq_topic, uid, part, when, why)

            async def set_aside(
                uid: str = uid, when: int = when, letter: Outgoing = letter
            ) -> None:
                await proc.checkpoint.dead_letter([letter])
                await proc.store.unschedule(uid, part, when)

            await proc._retrying(set_aside, "dead_letter")
            count_user_dead_letter()
            continue
        total.users += swept.users
        total.changes += swept.changes
    return total
