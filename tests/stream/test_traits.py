"""Predictive traits out (issue 30, item 5): in every change message and
segment-entered event, in ``GET /users/{id}``, in ``segmenter user``, and as CEL
variables; held to the JSON Schemas, with NaN as null and never as ``NaN``.

The bootstrap model is a plain classifier (spend and timing unknown), so the
in-process tests serve it with a made-up value head (:class:`ValueScorer`):
every trait then has something to say for buyers and nothing for the others.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import subprocess
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import jsonschema
import numpy as np
import orjson
import pytest

from model.features import raw_column, raw_row, transform
from model.registry import LoadedModel, load_current
from model.scorer import TRAITS, Scorer, Scores
from stream.core.events import DAY_MS, Event, _to_epoch_ms, decode, iso
from stream.core.fold import UserState, apply
from stream.settings import Settings
from stream.sinks import ConfluentSink
from stream.topics import ensure_audience_topic, ensure_segment_topics
from stream.worker.app import pipeline_config
from stream.worker.changes import segment_change, segment_events
from stream.worker.pipeline import BatchProcessor
from stream.worker.records import RawRecord
from stream.worker.rules.audiences import parse
from stream.worker.state.store import StateStore
from stream.worker.traits import ModelVersions, clean, published
from tests.conftest import REPO, TopicReader, settings_env
from tests.factories import DAY, T0, click, order
from tests.stream.test_api import Server, user_path

NAMES = ("p_purchase_90d", "predicted_spend_90d", "p_active_90d", "expected_next_order_at")


# --- the contract: strict JSON and the schemas, with the date-time format checked


def _reject(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def strict(raw: bytes) -> Any:
    """JSON as the RFC has it: ``NaN`` and ``Infinity`` (which Python's json writes
    and reads by default) are refused."""
    return json.loads(raw, parse_constant=_reject)


_FORMATS = jsonschema.FormatChecker(formats=())


@_FORMATS.checks("date-time", raises=ValueError)
def _utc_time(value: object) -> bool:
    # jsonschema checks date-time only with an optional package; this is the
    # contract's own rule: ISO-8601 in UTC with a Z.
    if not isinstance(value, str):
        return True
    return value.endswith("Z") and datetime.fromisoformat(value[:-1]).tzinfo is None


def validator(name: str) -> jsonschema.Draft202012Validator:
    text = resources.files("stream").joinpath(f"schemas/{name}.schema.json").read_text()
    return jsonschema.Draft202012Validator(json.loads(text), format_checker=_FORMATS)


CHANGE = validator("segment-change")
EVENT = validator("segment-event")


def check_message(raw: bytes, schema: jsonschema.Draft202012Validator) -> dict[str, Any]:
    msg: dict[str, Any] = strict(raw)
    schema.validate(msg)
    return msg


# --- unit: the published form


def test_published_rounds_like_the_probabilities_and_says_null_for_nan() -> None:
    at = T0 + 3 * DAY_MS
    out = published([0.123456, 412.3456, 0.98765, 2.5], at)
    assert out == {
        "p_purchase_90d": 0.1235,
        "predicted_spend_90d": 412.35,
        "p_active_90d": 0.9877,
        "expected_next_order_at": iso(at + DAY_MS * 5 // 2),
    }
    assert out["expected_next_order_at"] == "2024-01-06T12:00:00Z"
    assert published([math.nan] * 4, at) == dict.fromkeys(NAMES)
    assert b"NaN" not in orjson.dumps(published([math.nan] * 4, at))


def test_clean_holds_the_scorers_traits_to_the_contract() -> None:
    got = clean(
        np.asarray([[1.2, -5.0, np.inf, -1.0], [-0.1, np.nan, 0.5, 3.0], [0.5, 1e300, 0.5, 1e12]])
    )
    expected = [[1.0, 0.0, math.nan, 0.0], [0.0, math.nan, 0.5, 3.0], [0.5, 1e300, 0.5, math.nan]]
    np.testing.assert_array_equal(got, np.asarray(expected))
    # Every cleaned row can be published: no date past year 9999, no NaN.
    for row in got:
        assert b"NaN" not in orjson.dumps(published(row, T0))


def _good_change() -> dict[str, Any]:
    return segment_change(
        "u1",
        "regular",
        None,
        {"high_value": 0.1, "regular": 0.7, "potential": 0.1, "at_risk": 0.1},
        model_version="m1",
        event_time="2024-01-01T00:00:00Z",
        emitted_at="2026-12-07T00:00:00Z",
        version=1,
        trigger="events",
        action=None,
        traits=published([0.8, 120.0, 0.9, 10.0], T0),
    )


def _dump_python_json(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg).encode()  # writes NaN as NaN: what must never reach a topic


@pytest.mark.parametrize(
    ("name", "break_it"),
    [
        ("traits missing", lambda m: m.pop("traits")),
        ("one trait missing", lambda m: m["traits"].pop("p_active_90d")),
        ("a trait too many", lambda m: m["traits"].update(ltv=1.0)),
        ("probability over 1", lambda m: m["traits"].update(p_purchase_90d=1.5)),
        ("negative spend", lambda m: m["traits"].update(predicted_spend_90d=-1.0)),
        ("a date that is not one", lambda m: m["traits"].update(expected_next_order_at="soon")),
        (
            "a date without a zone",
            lambda m: m["traits"].update(expected_next_order_at="2024-01-01T00:00:00"),
        ),
        ("NaN as NaN", lambda m: m["traits"].update(predicted_spend_90d=math.nan)),
        ("infinite spend", lambda m: m["traits"].update(predicted_spend_90d=math.inf)),
    ],
)
def test_the_checks_refuse_a_broken_change(name: str, break_it: Callable[[Any], Any]) -> None:
    good = _good_change()
    check_message(_dump_python_json(good), CHANGE)  # the unbroken one passes
    broken = _good_change()
    break_it(broken)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        check_message(_dump_python_json(broken), CHANGE)


def test_the_checks_refuse_segment_events_without_traits_or_with_them_on_exit() -> None:
    events = [m for _, _, m in segment_events("segments.{segment}", "u1", _good_change())]
    (entered,) = events  # a first assignment: entered only
    check_message(orjson.dumps(entered), EVENT)
    assert entered["traits"] == _good_change()["traits"]
    entered.pop("traits")
    with pytest.raises(jsonschema.ValidationError):
        EVENT.validate(entered)
    moved = _good_change() | {"previous_segment": "potential", "version": 2}
    exited, _ = [m for _, _, m in segment_events("segments.{segment}", "u1", moved)]
    EVENT.validate(exited)
    with pytest.raises(jsonschema.ValidationError):
        EVENT.validate(exited | {"traits": moved["traits"]})


# --- in process: a model with a value head, messages, the read API, CEL


@dataclasses.dataclass(frozen=True)
class ValueScorer(Scorer):
    """The bootstrap network plus a made-up value head, row-independent as the
    real one: buyers get spend and days from their inputs; who never ordered
    gets NaN for both (the model cannot say)."""

    def score(self, x: np.ndarray) -> Scores:
        base = super().score(x)  # probabilities, purchase and activity as the model gives them
        traits = np.array(base.traits, copy=True)
        bought = raw_column(x, "has_ordered") > 0
        spend = 1.37 * raw_column(x, "spend_90d") + 0.123
        days = 30.0 / (1.0 + raw_column(x, "orders_90d")) + 0.3
        traits[:, TRAITS.index("predicted_spend_90d")] = np.where(bought, spend, np.nan)
        traits[:, TRAITS.index("days_to_next_order")] = np.where(bought, days, np.nan)
        return Scores(base.probabilities, traits)


def value_model(base: LoadedModel) -> LoadedModel:
    s = base.scorer
    # Every field copied, whatever kind of network the bootstrap model is.
    scorer = ValueScorer(**{f.name: getattr(s, f.name) for f in dataclasses.fields(s)})
    return dataclasses.replace(base, version="value-head-test", scorer=scorer)


AUDIENCES = """
audiences:
  - name: big_spender
    when: 'predicted_spend_90d >= 200.0'
  - name: likely_active
    when: 'p_active_90d >= 0.0 && days_to_next_order < 1000.0'
  - name: spend_unknown
    when: 'size(segment) > 0 && !(predicted_spend_90d >= 0.0)'
"""


def history(users: Sequence[str]) -> list[dict[str, Any]]:
    """Browsers who never order, one-off and repeat buyers, a lone click."""
    out: list[dict[str, Any]] = []
    for i, u in enumerate(users):
        t = T0 + i * 1000
        out += [click(u, t, "page_view"), click(u, t + 1, "add_to_cart")]
        for k in range(i % 4):
            out.append(order(u, t + (k + 1) * DAY + i, total=35.0 + 120.0 * (i % 3)))
    return sorted(out, key=lambda v: v["timestamp"])


def feed(
    settings: Settings, model: LoadedModel, values: list[dict[str, Any]], audiences: str | None
) -> list[dict[str, Any]]:
    """The values through the real batch processor, a few at a time; the changes."""
    parsed = None if audiences is None else parse(audiences, "a.yaml", model.classes)

    async def run() -> list[dict[str, Any]]:
        store = StateStore.from_settings(settings)
        sink = ConfluentSink(settings.kafka_client_config())
        proc = BatchProcessor(
            store, sink, lambda: model, pipeline_config(settings, audiences=parsed)
        )
        changes: list[dict[str, Any]] = []
        try:
            for start in range(0, len(values), 7):
                recs = [
                    RawRecord(
                        settings.topic_orders
                        if v["event_type"].startswith("order")
                        else settings.topic_clickstream,
                        0,
                        start + i,
                        v["user_id"].encode(),
                        orjson.dumps(v),
                    )
                    for i, v in enumerate(values[start : start + 7])
                ]
                changes += (await proc.process(recs)).changes
            return changes
        finally:
            sink.close()
            await store.close()

    return asyncio.run(run())


def last_changes(reader: TopicReader, n: int) -> dict[str, dict[str, Any]]:
    """Every change as read off the topic, strictly parsed and validated; the last per user."""
    messages = reader.wait_for(lambda m: len(m) >= n, timeout_s=30)
    last: dict[str, dict[str, Any]] = {}
    for m in messages:
        msg = check_message(m.value(), CHANGE)
        last[msg["user_id"]] = msg
    return last


USERS = [f"t{i:02d}" for i in range(16)]


def offline_scoring(
    model: LoadedModel, values: list[dict[str, Any]], user: str, at: str
) -> tuple[dict[str, float], dict[str, Any]]:
    """A user's published probabilities and traits at ``at``, from their events
    folded offline (no Redis, no worker)."""
    state = UserState()
    for v in values:
        if v["user_id"] == user:
            kind: Literal["clickstream", "orders"] = (
                "orders" if v["event_type"].startswith("order") else "clickstream"
            )
            event = decode(kind, user.encode(), orjson.dumps(v), now_ms=T0 + 400 * DAY)
            assert isinstance(event, Event)
            apply(state, event)
    at_ms = _to_epoch_ms(at)
    scores = model.scorer.score(transform(np.asarray([raw_row(state, at_ms)])))
    rounded = [round(p, 4) for p in scores.probabilities[0].tolist()]
    probs = dict(zip(model.classes, rounded, strict=True))
    return probs, published(clean(scores.traits)[0], at_ms)


def offline_traits(
    model: LoadedModel, values: list[dict[str, Any]], user: str, at: str
) -> dict[str, Any]:
    return offline_scoring(model, values, user, at)[1]


@pytest.mark.integration
def test_traits_in_messages_events_the_read_api_and_audiences(
    settings_factory: Callable[..., Settings],
    reader_factory: Callable[[str], TopicReader],
) -> None:
    # Per-segment topics of this test's own: the default names are shared by
    # every test on the session's broker, tombstones of other users included.
    settings = settings_factory(
        segment_topics=True, segment_topic_template=f"segments-{uuid.uuid4().hex[:10]}.{{segment}}"
    )
    model = value_model(load_current(settings.model_dir))
    ensure_segment_topics(settings, model.classes)
    ensure_audience_topic(settings)
    values = history(USERS)
    changes = feed(settings, model, values, AUDIENCES)
    assert changes and all(set(c["traits"]) == set(NAMES) for c in changes)
    last = last_changes(reader_factory(settings.topic_segments), len(changes))
    assert set(last) == set(USERS)

    # Buyers have every trait; browsers have no spend or next order (null, not NaN).
    for msg in last.values():
        t = msg["traits"]
        assert t["p_purchase_90d"] is not None and t["p_active_90d"] is not None, msg
        assert (t["predicted_spend_90d"] is None) == (t["expected_next_order_at"] is None)
    buyers = [m for m in last.values() if m["traits"]["predicted_spend_90d"] is not None]
    browsers = [m for m in last.values() if m["traits"]["predicted_spend_90d"] is None]
    assert buyers and browsers
    for m in buyers:
        assert m["traits"]["expected_next_order_at"] > m["event_time"]  # ISO-8601 UTC sorts

    # The per-segment topics carry the traits of the scoring that put the user there.
    entered = reader_factory(settings.segment_topic_template.format(segment=buyers[0]["segment"]))
    key = buyers[0]["user_id"]
    read = entered.wait_for(lambda ms: any(x.key() == key.encode() for x in ms))
    events = [check_message(m.value(), EVENT) for m in read]
    mine = [e for e in events if e["user_id"] == key and e["type"] == "segment-entered"]
    assert mine[-1]["traits"] == buyers[0]["traits"]
    assert mine[-1]["version"] == buyers[0]["version"]

    # Rule audiences read the traits: a buyer with enough predicted spend is a
    # big spender, a browser's unknown spend never is (NaN compares false).
    members: dict[str, set[str]] = {}  # audience -> its members after the last event
    for m in reader_factory(settings.topic_audiences).wait_for(lambda m: len(m) > 0):
        e = strict(m.value())
        group = members.setdefault(e["audience"], set())
        (group.add if e["action"] == "entered" else group.discard)(e["user_id"])
    browser_ids = {m["user_id"] for m in browsers}
    buyer_ids = {m["user_id"] for m in buyers}
    assert members["spend_unknown"] == browser_ids
    assert members["big_spender"] and members["big_spender"] <= buyer_ids
    assert members["likely_active"] == buyer_ids

    # The read API recomputes the traits of each user's last scoring: where that
    # scoring was the last change, it says exactly what the change said.
    classes = model.classes
    with Server(settings, classes, models=ModelVersions(settings.model_dir, lambda: model)) as srv:
        compared = 0
        for uid, msg in last.items():
            resp = srv.get(user_path(uid))
            assert resp.status_code == 200, resp.text
            body = strict(resp.content)
            assert set(body["traits"]) == set(NAMES)
            if body["scored_at"] == msg["event_time"]:
                assert body["traits"] == msg["traits"], uid
                assert body["probabilities"] == msg["probabilities"], uid
                compared += msg["traits"]["predicted_spend_90d"] is not None
            # Every user, against an offline fold of their events scored at
            # scored_at: what the worker's scoring at that time saw.
            assert body["traits"] == offline_traits(model, values, uid, body["scored_at"])
        assert compared >= 2, compared  # buyers whose last scoring was a change
    # A worker that cannot load the model that scored a user says null, never a guess.
    with Server(settings, classes, models=ModelVersions(settings.model_dir)) as srv:
        body = strict(srv.get(user_path(buyers[0]["user_id"])).content)
        assert body["traits"] == dict.fromkeys(NAMES)


def segmenter(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )


@pytest.mark.integration
def test_segmenter_user_shows_the_traits_of_the_last_scoring(
    settings_factory: Callable[..., Settings],
    reader_factory: Callable[[str], TopicReader],
) -> None:
    settings = settings_factory()
    model = load_current(settings.model_dir)  # what the command finds in the registry
    # An order big enough to move a browser out of potential at once (through
    # hysteresis), so the last scoring is a change.
    values = [click("ann", T0, "page_view"), order("ann", T0 + DAY, total=400.0)]
    changes = feed(settings, model, values, None)
    last = last_changes(reader_factory(settings.topic_segments), len(changes))["ann"]

    out = segmenter("user", "ann", "--json", env=settings_env(settings))
    assert out.returncode == 0, out.stderr
    data = strict(out.stdout.encode())
    assert data["scored_at"] == last["event_time"] == iso(T0 + DAY)
    assert data["traits"] == last["traits"]
    # The bootstrap has a value head: spend and the next order are known.
    assert data["traits"]["p_purchase_90d"] is not None
    assert data["traits"]["predicted_spend_90d"] is not None
    assert data["traits"]["expected_next_order_at"] is not None

    human = segmenter("user", "ann", env=settings_env(settings))
    assert human.returncode == 0, human.stderr
    lines = human.stderr.splitlines()  # the human form is on stderr (stream.cli.common.console)
    p = data["traits"]["p_purchase_90d"]
    assert any(ln.split() == ["p_purchase_90d", f"{p:.3f}"] for ln in lines), human.stderr
    spend = data["traits"]["predicted_spend_90d"]
    assert any(ln.split() == ["predicted_spend_90d", f"{spend:.2f}"] for ln in lines), lines
    nxt = data["traits"]["expected_next_order_at"]
    assert any(ln.split() == ["expected_next_order_at", nxt] for ln in lines), lines


def test_contracts_doc_example_is_a_valid_message() -> None:
    text = (Path(REPO) / "docs" / "contracts.md").read_text()
    start = text.index("## Output: `customer-segments`")
    begin = text.index("```json\n", start) + len("```json\n")
    block = text[begin : text.index("```", begin)]
    msg = check_message(block.encode(), CHANGE)
    assert set(msg["traits"]) == set(NAMES)


@pytest.mark.integration
def test_the_read_api_shows_one_scoring_even_when_the_last_was_an_audience_step(
    settings_factory: Callable[..., Settings],
) -> None:
    """An audience-only step (a clock condition flipping) is a scoring too: the
    record's probabilities follow it, so that they and the traits, recomputed
    at scored_at, come from the same scoring."""
    settings = settings_factory()
    model = load_current(settings.model_dir)
    audiences = "audiences:\n  - name: lately\n    when: 'days_since_last_activity <= 45.0'\n"
    values = [click("quiet", T0, "page_view"), order("quiet", T0 + 1000, total=90.0)]
    # Others move partition 0's stream time 50 days on; "quiet" sends nothing more.
    values += [click(f"o{d}", T0 + d * DAY, "page_view") for d in (10, 20, 31, 40, 46, 50)]
    parsed = parse(audiences, "a.yaml", model.classes)

    async def run() -> None:
        store = StateStore.from_settings(settings)
        sink = ConfluentSink(settings.kafka_client_config())
        proc = BatchProcessor(
            store, sink, lambda: model, pipeline_config(settings, audiences=parsed)
        )
        try:
            for i, v in enumerate(values):  # event by event, swept after each
                topic = (
                    settings.topic_orders
                    if v["event_type"].startswith("order")
                    else settings.topic_clickstream
                )
                raw = RawRecord(topic, 0, i, v["user_id"].encode(), orjson.dumps(v))
                await proc.process([raw])
                while (await proc.reevaluate([0], limit=50)).records:
                    pass
        finally:
            sink.close()
            await store.close()

    asyncio.run(run())
    left = iso(T0 + 1000 + 45 * DAY + 1)  # just past 45 days of silence: out of "lately"
    inactivity = iso(T0 + 1000 + 30 * DAY)  # the last regular step before it
    assert (
        offline_scoring(model, values, "quiet", left)[0]
        != (offline_scoring(model, values, "quiet", inactivity)[0])
    ), "the two scorings must differ for this test to tell them apart"
    with Server(settings, model.classes) as srv:  # the registry's model, by version
        body = strict(srv.get(user_path("quiet")).content)
    assert body["scored_at"] == left and body["audiences"] == []
    probabilities, traits = offline_scoring(model, values, "quiet", left)
    assert body["probabilities"] == probabilities
    assert body["traits"] == traits and body["traits"]["p_active_90d"] is not None
