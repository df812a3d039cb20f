"""The shapes of what the worker publishes about a user: the segment change
(``customer-segments``), the per-segment entered/exited events, the audience
events, and the tombstones of erasure. JSON Schemas: ``stream/schemas/``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from model.scorer import Scores
from stream.core.events import iso
from stream.sinks import Outgoing
from stream.worker.batch import Timeline
from stream.worker.rules.audiences import Audiences, membership_walk


def output_topics(
    segments_topic: str, segment_topic_template: str | None, classes: Iterable[str]
) -> list[str]:
    """Every topic the worker publishes a user's data to (the DLQ aside)."""
    out = [segments_topic]
    if segment_topic_template:
        out += [segment_topic_template.format(segment=c) for c in classes]
    return out


def tombstones(users: Iterable[str], topics: Sequence[str]) -> list[Outgoing]:
    """A tombstone (null value) per user and topic: compaction then drops what
    the user's key held there, and consumers that materialise a topic drop them."""
    return [Outgoing(t, u.encode(), None) for u in users for t in topics]


def exited_event(
    template: str,
    user_id: str,
    segment: str,
    next_segment: str | None,
    version: int,
    event_time: str,
    emitted_at: str,
    model_version: str,
    trigger: str,
) -> tuple[str, str, dict[str, Any]]:
    return (
        template.format(segment=segment),
        user_id,
        {
            "type": "segment-exited",
            "user_id": user_id,
            "segment": segment,
            "next_segment": next_segment,
            "version": version,
            "event_time": event_time,
            "emitted_at": emitted_at,
            "model_version": model_version,
            "trigger": trigger,
        },
    )


def segment_events(
    template: str, user_id: str, change: dict[str, Any]
) -> list[tuple[str, str, dict[str, Any]]]:
    """The per-segment view of one change: exited on the old topic, entered on the new."""
    out = []
    if change["previous_segment"] is not None:
        out.append(
            exited_event(
                template,
                user_id,
                change["previous_segment"],
                change["segment"],
                change["version"],
                change["event_time"],
                change["emitted_at"],
                change["model_version"],
                change["trigger"],
            )
        )
    out.append(
        (
            template.format(segment=change["segment"]),
            user_id,
            {
                "type": "segment-entered",
                "user_id": user_id,
                "segment": change["segment"],
                "previous_segment": change["previous_segment"],
                "probability": change["probabilities"][change["segment"]],
                # The traits of the scoring that put them here: a subscriber of
                # one segment's topic needs no second lookup to act on value.
                "traits": change["traits"],
                "action": change["action"],
                "version": change["version"],
                "event_time": change["event_time"],
                "emitted_at": change["emitted_at"],
                "model_version": change["model_version"],
                "trigger": change["trigger"],
            },
        )
    )
    return out


def audience_events(
    audiences: Audiences,
    topic: str,
    timelines: dict[str, Timeline],
    raw: np.ndarray,
    segment_at: list[str],
    scores: Scores,
    emitted_at: str,
) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Entered/exited events for every scoring of the batch, in each user's order."""
    codes = audiences.codes(raw, segment_at, scores.probabilities, scores.traits)
    names, bits = audiences.names, audiences.bits
    out: list[tuple[str, str, dict[str, Any] | None]] = []
    for uid, tl in timelines.items():
        rec = tl.record
        steps = [(s.at, s.row if s.row >= 0 else None) for s in tl.steps]
        now, changes = membership_walk(rec.audiences, steps, names, codes, bits)
        for audience, action, at in changes:
            rec.audience_version += 1
            event = {
                "user_id": uid,
                "audience": audience,
                "action": action,
                "event_time": iso(at),
                "emitted_at": emitted_at,
                "version": rec.audience_version,
            }
            out.append((topic, uid, event))
        if any(s.row < 0 for s in tl.steps):  # erased by retention
            out.append((topic, uid, None))
            rec.audience_version = 0
        rec.audiences = now
    return out


def segment_change(
    user_id: str,
    segment: str,
    previous: str | None,
    probabilities: dict[str, float],
    *,
    model_version: str,
    event_time: str,
    emitted_at: str,
    version: int,
    trigger: str,
    action: dict[str, Any] | None,
    traits: dict[str, Any],
) -> dict[str, Any]:
    """A ``customer-segments`` message (stream/schemas/segment-change); the
    explanation is filled in after, for all of a batch's changes at once.
    ``traits``: :func:`stream.worker.traits.published` of the same scoring."""
    return {
        "user_id": user_id,
        "segment": segment,
        "previous_segment": previous,
        "probabilities": probabilities,
        "traits": traits,
        "model_version": model_version,
        "event_time": event_time,
        "emitted_at": emitted_at,
        "version": version,
        "trigger": trigger,
        "explanation": [],
        "action": action,
    }
