"""A batch's segment decisions (stream.worker.decisions): the rule every
published change follows, for event batches and sweeps alike."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.registry import LoadedModel, load_current
from model.scorer import TRAITS, Scores
from model.segments import Hysteresis, decide
from stream.worker.batch import Step, Timeline
from stream.worker.decisions import decide_batch
from stream.worker.pipeline_config import PipelineConfig
from stream.worker.state.record_codec import UserRecord
from stream.worker.traits import published

#: Decision weights as a manifest gives them: none, one class pushed, two moved.
WEIGHTS = [None, {"high_value": 2.5}, {"high_value": 0.5, "at_risk": 1.7}, {"regular": 1.2}]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_current(tmp_path_factory.mktemp("registry"))  # the bootstrap model


def _rows(n_classes: int) -> st.SearchStrategy[list[float]]:
    weights = st.lists(st.integers(0, 100), min_size=n_classes, max_size=n_classes)
    return weights.filter(any).map(lambda w: [v / sum(w) for v in w])


def _trait_rows(n: int) -> st.SearchStrategy[list[list[float]]]:
    value = st.one_of(st.just(math.nan), st.floats(0, 1e4, allow_nan=False))
    return st.lists(
        st.lists(value, min_size=len(TRAITS), max_size=len(TRAITS)), min_size=n, max_size=n
    )


def _with_weights(model: LoadedModel, weights: dict[str, float] | None) -> LoadedModel:
    manifest = {k: v for k, v in model.manifest.items() if k != "decision"}
    if weights is not None:
        manifest["decision"] = {"weights": weights}
    return dataclasses.replace(model, manifest=manifest)


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    erase_at_end=st.booleans(),
    with_topics=st.booleans(),
    weights=st.sampled_from(WEIGHTS),
)
def test_one_users_changes_are_numbered_chained_and_follow_the_rule(
    model: LoadedModel,
    data: st.DataObject,
    erase_at_end: bool,
    with_topics: bool,
    weights: dict[str, float] | None,
) -> None:
    model = _with_weights(model, weights)
    assert model.decision_weights == weights
    classes = model.classes
    rows = data.draw(st.lists(_rows(len(classes)), min_size=1, max_size=25))
    traits = np.asarray(data.draw(_trait_rows(len(rows))), dtype=np.float64)
    start = data.draw(st.sampled_from([None, *classes]))
    rec = UserRecord(segment=start, version=3 if start else 0)
    steps = [Step(1000 + i, "events", i) for i in range(len(rows))]
    if erase_at_end:
        steps.append(Step(10_000, "retention", -1))
    rule = Hysteresis()
    cfg = PipelineConfig(
        hysteresis=rule, segment_topic_template="segments.{segment}" if with_topics else None
    )
    tl = Timeline(record=rec, old_segment=start, old_partition=0, old_due=0, steps=steps)

    scores = Scores(np.asarray(rows), traits)
    out = decide_batch({"u": tl}, scores, model, cfg, "2026-12-06T00:00:00Z")

    # The rule, replayed on the rounded values subscribers see, with the
    # model's decision weights; the published probabilities stay unweighted.
    segment, version, expected, changed_rows = start, (3 if start else 0), [], []
    for i, row in enumerate(rows):
        p = dict(zip(classes, [round(v, 4) for v in row], strict=True))
        new = decide(segment, p, rule, weights)
        if new != segment:
            version += 1
            expected.append((segment, new, version, p))
            changed_rows.append(i)
            segment = new
        assert out.segment_at[i] == segment
    changes = [m for _, m in out.messages if m is not None]
    assert [(m["previous_segment"], m["segment"], m["version"]) for m in changes] == [
        (prev, new, v) for prev, new, v, _ in expected
    ]
    assert [m["probabilities"] for m in changes] == [p for *_, p in expected]
    # Each change carries the traits of the scoring that made it.
    assert [m["traits"] for m in changes] == [
        published(traits[i], steps[i].at) for i in changed_rows
    ]
    assert [m["version"] for m in changes] == list(range(version - len(changes) + 1, version + 1))
    assert [row for row, _, _ in out.explain] == [
        i
        for i, _ in enumerate(rows)
        if out.segment_at[i] != (out.segment_at[i - 1] if i else start)
    ]
    if erase_at_end:
        assert out.messages[-1] == ("u", None) and out.expired == 1
        assert (rec.segment, rec.version, rec.probabilities) == (None, 0, None)
        # A user in a segment leaves it visibly on the per-segment topics.
        exits = [m for t, _, m in out.side if m and m["trigger"] == "retention"]
        assert len(exits) == (1 if with_topics and segment is not None else 0)
    else:
        assert out.expired == 0 and (rec.segment, rec.version) == (segment, version)
        last = dict(zip(classes, [round(v, 4) for v in rows[-1]], strict=True))
        assert rec.probabilities == last
        assert rec.model_version == model.version


def test_decision_weights_move_the_line_not_the_published_probabilities(
    model: LoadedModel,
) -> None:
    classes = model.classes
    row = dict.fromkeys(classes, 0.0) | {"high_value": 0.3, "regular": 0.7}
    probs = np.asarray([[row[c] for c in classes]])
    traits = np.full((1, len(TRAITS)), np.nan)

    def first(weights: dict[str, float] | None) -> dict[str, object]:
        rec = UserRecord()
        tl = Timeline(rec, None, 0, 0, steps=[Step(1000, "events", 0)])
        out = decide_batch(
            {"u": tl}, Scores(probs, traits), _with_weights(model, weights), PipelineConfig(), "t"
        )
        (_, msg), *_ = out.messages
        assert msg is not None
        return msg

    assert first(None)["segment"] == "regular"
    weighted = first({"high_value": 3.0})  # 0.9 against 0.7: the line moved
    assert weighted["segment"] == "high_value"
    assert weighted["probabilities"] == first(None)["probabilities"] == row
