"""A batch's segment decisions: each user's steps, in order, through hysteresis.

No I/O. Given the batch's scores (probabilities and traits, one forward pass),
:func:`decide_batch` updates every touched user record (segment, version,
probabilities) and says what to publish. Segments are decided with the model's
decision weights (``model.segments.decide``); the messages carry the published
probabilities, never the weighted ones. Event
batches and the time-driven sweep both go through it
(:meth:`~stream.worker.pipeline.BatchProcessor._score_publish_commit`), so
both follow one rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model.registry import LoadedModel
from model.scorer import Scores
from model.segments import clear_leaders, decide
from stream.core.events import iso
from stream.worker.batch import Timeline
from stream.worker.changes import exited_event, segment_change
from stream.worker.pipeline_config import PipelineConfig
from stream.worker.traits import published

Message = dict[str, Any]


@dataclass
class Decisions:
    #: customer-segments, in order: (user id, change); ``None`` = a tombstone.
    messages: list[tuple[str, Message | None]] = field(default_factory=list)
    #: Other topics: (topic, user id, message).
    side: list[tuple[str, str, Message | None]] = field(default_factory=list)
    #: Changes to explain: (row, index of the new class, the change).
    explain: list[tuple[int, int, Message]] = field(default_factory=list)
    #: Each row's segment once decided: rule audiences read it.
    segment_at: list[str] = field(default_factory=list)
    #: Users erased by retention.
    expired: int = 0


def weights_array(model: LoadedModel) -> np.ndarray | None:
    """The model's decision weights per class, in its class order (1.0 if unnamed)."""
    weights = model.decision_weights
    if not weights:
        return None
    return np.asarray([weights.get(c, 1.0) for c in model.classes], dtype=np.float64)


def decide_batch(
    timelines: dict[str, Timeline],
    scores: Scores,
    model: LoadedModel,
    cfg: PipelineConfig,
    emitted_at: str,
) -> Decisions:
    """Walk every user's steps in order; ``scores`` has one row per scored step,
    its traits cleaned (:func:`stream.worker.traits.clean`)."""
    # As Python objects, converted once for the batch, not per row.
    probs: list[list[float]] = scores.probabilities.tolist()
    weights = model.decision_weights
    # The fast path below must agree with decide() on the weighted scores:
    # clear_leaders widens the lead it asks for by what weighting can amplify.
    leaders = clear_leaders(scores.probabilities, weights_array(model))
    classes = model.classes
    playbook = cfg.playbook

    def rounded(row: int) -> dict[str, float]:
        return dict(zip(classes, [round(v, 4) for v in probs[row]], strict=True))

    out = Decisions(segment_at=[""] * len(probs))
    for uid, tl in timelines.items():
        rec = tl.record
        unrounded = -1  # the row of a scoring rec.probabilities does not hold yet
        for step in tl.steps:
            if step.row >= 0:
                out.segment_at[step.row] = rec.segment or ""
            if step.trigger == "audience":
                # Audiences only: the segment stays as decided. The record's
                # probabilities still follow this scoring, so that what the read
                # API shows (probabilities, and traits recomputed at scored_at)
                # comes from one scoring.
                rec.model_version = model.version
                unrounded = step.row
                continue
            if step.row < 0:  # retention erasure
                unrounded = -1
                out.expired += 1
                if rec.segment is not None and cfg.segment_topic_template:
                    out.side.append(
                        exited_event(
                            cfg.segment_topic_template,
                            uid,
                            rec.segment,
                            None,
                            rec.version,  # that of the change that put them there
                            iso(step.at),
                            emitted_at,
                            model.version,
                            "retention",
                        )
                    )
                out.messages.append((uid, None))
                rec.segment, rec.version = None, 0
                rec.probabilities, rec.model_version = None, None
                continue
            rec.model_version = model.version
            leader = leaders[step.row]
            if leader >= 0 and classes[leader] == rec.segment:
                # Already in the segment that leads by more than rounding
                # can change: decide() would keep it. Only the user's last
                # scoring needs its rounded probabilities (below).
                unrounded = step.row
                continue
            # Decided on the published (rounded) values, which are what
            # subscribers see. A row's scores do not depend on the rest of
            # its batch (Scorer.predict), so a re-run decides the same way.
            p = rounded(step.row)
            new = decide(rec.segment, p, cfg.hysteresis, weights)
            rec.probabilities = p
            unrounded = -1
            if new == rec.segment:
                continue
            rec.version += 1
            previous = rec.segment
            msg = segment_change(
                uid,
                new,
                previous,
                p,
                model_version=model.version,
                event_time=iso(step.at),
                emitted_at=emitted_at,
                version=rec.version,
                trigger=step.trigger,
                action=playbook.action_for(previous, new) if playbook else None,
                traits=published(scores.traits[step.row], step.at),
            )
            out.messages.append((uid, msg))
            out.explain.append((step.row, classes.index(new), msg))
            rec.segment = new
            out.segment_at[step.row] = new
        if unrounded >= 0:
            rec.probabilities = rounded(unrounded)
    return out
