"""The ledger every fault test ends with: sent, applied, duplicates, lost."""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from dataclasses import dataclass, fields
from typing import Any

from model.training.dataset import drop_duplicate_events
from model.training.sources import decode_records
from stream.core.fold import UserState, fold_all
from stream.settings import Settings
from stream.worker.state.store import StateStore, UserRecord


@dataclass
class Ledger:
    sent: int
    applied: int
    duplicates: int
    lost: int
    users: int
    state_mismatches: list[str]
    unpublished: list[str]
    #: Users whose published versions are not exactly 1..n.
    version_gaps: list[str]
    #: (user, version) published more than once by the same model with different content.
    conflicting_republish: list[tuple[str, int]]
    #: (user, version) re-published after a crash by a newer model (allowed: the later wins).
    rescored: int = 0

    def table(self) -> str:
        return (
            "| events sent | events applied | duplicates | lost | users | state mismatches | "
            "final segment unpublished | version gaps | conflicting re-publishes |\n"
            "|---|---|---|---|---|---|---|---|---|\n"
            f"| {self.sent} | {self.applied} | {self.duplicates} | {self.lost} | {self.users} | "
            f"{len(self.state_mismatches)} | {len(self.unpublished)} | "
            f"{len(self.version_gaps)} | {len(self.conflicting_republish)} |"
        )


#: Exact: counts, money sums (one user's orders come from one partition, in
#: order) and times. The decayed counters are compared to 1e-9 relative: the
#: worker interleaves a user's clickstream and orders partitions as batches
#: happen to fall, and float rounding depends on that order, not on any loss.
_EXACT = tuple(f.name for f in fields(UserState) if f.name != "decayed")


def _differences(got: UserState, want: UserState) -> dict[str, tuple[Any, Any]]:
    """(stored, offline) per field that differs."""
    return {
        f.name: (getattr(got, f.name), getattr(want, f.name))
        for f in fields(UserState)
        if getattr(got, f.name) != getattr(want, f.name)
    }


def same_state(a: UserState, b: UserState) -> bool:
    if any(getattr(a, name) != getattr(b, name) for name in _EXACT):
        return False
    return all(
        math.isclose(a.decayed[k], b.decayed[k], rel_tol=1e-9, abs_tol=1e-12) for k in a.decayed
    )


async def _records(settings: Settings, users: list[str]) -> dict[str, UserRecord]:
    store = StateStore.from_settings(settings)
    try:
        out = {}
        for user in users:
            rec = await store.get(user)
            if rec is not None:
                out[user] = rec
        return out
    finally:
        await store.close()


def account(
    settings: Settings,
    sent: list[tuple[str, bytes | None, bytes]],
    published: list[dict[str, Any]],
) -> Ledger:
    """Compare Redis with the offline fold of everything sent, user by user, exactly.

    Re-sent events (a producer's retries) count once: the offline side drops
    them by the rule training uses (stream.core.dedup), in send order.
    """
    decoded = decode_records(
        sent, clickstream_topic=settings.topic_clickstream, orders_topic=settings.topic_orders
    )
    distinct = drop_duplicate_events(decoded.events)
    by_user: dict[str, list[Any]] = defaultdict(list)
    for event in distinct:  # send order = partition order for each user
        by_user[event.user_id].append(event)
    records = asyncio.run(_records(settings, sorted(by_user)))
    latest: dict[str, dict[str, Any]] = {}
    seen: dict[tuple[str, int], dict[str, Any]] = {}
    conflicts: list[tuple[str, int]] = []
    rescored = 0
    for msg in published:  # in publish order; for one version, the later message wins
        if msg["user_id"] not in latest or msg["version"] >= latest[msg["user_id"]]["version"]:
            latest[msg["user_id"]] = msg
        # A re-publish after a crash must be the same change: everything but
        # the wall-clock emitted_at, unless a newer model scored it the second time.
        key, body = (msg["user_id"], msg["version"]), _content(msg)
        first = seen.setdefault(key, body)
        if first != body:
            if first["model_version"] != body["model_version"]:
                rescored += 1
            else:
                conflicts.append(key)
    versions: dict[str, set[int]] = defaultdict(set)
    for user, version in seen:
        versions[user].add(version)
    gaps = sorted(u for u, vs in versions.items() if vs != set(range(1, max(vs) + 1)))
    applied = duplicates = lost = 0
    mismatches, unpublished = [], []
    for user, events in by_user.items():
        rec = records.get(user)
        n = rec.state.events if rec else 0
        applied += n
        duplicates += max(0, n - len(events))
        lost += max(0, len(events) - n)
        want = fold_all(events)
        if rec is None or not same_state(rec.state, want):
            mismatches.append(user)
            if rec is not None and len(mismatches) <= 3:  # shown with a failure: what differs
                print(f"state of {user}: {_differences(rec.state, want)}")
        if rec is not None and latest.get(user, {}).get("segment") != rec.segment:
            unpublished.append(user)
    return Ledger(
        sent=len(distinct),
        applied=applied,
        duplicates=duplicates,
        lost=lost,
        users=len(by_user),
        state_mismatches=mismatches,
        unpublished=unpublished,
        version_gaps=gaps,
        conflicting_republish=conflicts,
        rescored=rescored,
    )


def _content(msg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in msg.items() if k != "emitted_at"}
