"""The retrain job: replay from the broker, train, gate, promote; and its lock."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis

import stream.training.retrain
from model.features import vector
from model.registry import current_version, ensure_serving_model, list_versions
from model.training.dataset import build_examples, sort_events
from model.training.sources import decode_records
from model.training.train import prepare_examples
from stream.core.fold import DAY_MS, fold_all
from stream.settings import Settings
from stream.training.generate import GeneratorConfig, generate
from stream.training.produce import encode_generated
from stream.training.retrain import RetrainConfig, run_once
from tests.conftest import settings_env
from tests.helpers import produce
from tests.stream.test_cli import segmenter


@pytest.mark.brokers("tansu", "kafka")
@pytest.mark.integration
def test_retrain_once_replays_the_topics_and_gates_against_the_serving_model(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory()
    sent: list[tuple[str, bytes | None, bytes]] = [
        (settings.topic_clickstream if t == "clickstream" else settings.topic_orders, k, v)
        for t, k, v in encode_generated(generate(GeneratorConfig(users=150, days=200, seed=4)))
    ]
    produce(settings, sent)
    boot = ensure_serving_model(settings.model_dir)
    args = [
        "retrain",
        "--once",
        "--window",
        "200d",
        "--horizon",
        "45d",
        "--step",
        "14d",
        "--epochs",
        "5",
    ]

    out = segmenter(*args, env=settings_env(settings), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    new = [v for v in list_versions(settings.model_dir) if v != boot]
    assert len(new) == 1
    verdict = orjson.loads((settings.model_dir / new[0] / "gate.json").read_bytes())
    assert verdict["outcome"] in ("promoted", "candidate")
    assert verdict["current_f1"] is not None, "the serving model was scored on the same window"
    # Each verdict explains itself: promoted exactly when every check passed.
    assert verdict["checks"] and all(c["detail"] for c in verdict["checks"])
    passed = all(c["passed"] for c in verdict["checks"])
    assert verdict["outcome"] == ("promoted" if passed else "candidate")
    # Judged on three closed cutoffs, a user's rows at each resampled together.
    assert len(verdict["cutoffs_ms"]) == 3
    assert verdict["gate_rows"]["rows"] > verdict["gate_rows"]["users"] > 0
    evidence = verdict["serving"]["evidence"]
    assert evidence["users"] == verdict["gate_rows"]["users"]
    assert evidence["low"] <= evidence["difference"] <= evidence["high"]
    assert len(evidence["cutoffs"]) == 3
    # The bootstrap was trained on generated data: scored like a baseline here.
    assert verdict["serving"]["home"] is False
    assert (settings.model_dir / new[0] / "report.md").exists()
    expected_current = new[0] if verdict["outcome"] == "promoted" else boot
    assert current_version(settings.model_dir) == expected_current
    manifest = orjson.loads((settings.model_dir / new[0] / "manifest.json").read_bytes())
    assert manifest["training"]["events"] == len(sent)

    # A second scheduler finds the lock held and stands down.
    client = redis.Redis.from_url(settings.redis_url)
    client.set(f"{settings.redis_prefix}:retrain-lock", "someone-else", px=60_000)
    try:
        skipped = segmenter(*args, env=settings_env(settings), timeout=120)
        assert skipped.returncode == 0
        assert "skipping" in skipped.stderr
        assert len(list_versions(settings.model_dir)) == 2
    finally:
        client.delete(f"{settings.redis_prefix}:retrain-lock")


class _Captured(Exception):
    """Stops run_once after the replay: what it would train on is all these tests need."""


@pytest.mark.integration
def test_retrain_folds_all_history_and_windows_only_the_cutoffs(
    settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_factory()
    sent: list[tuple[str, bytes | None, bytes]] = [
        (settings.topic_clickstream if t == "clickstream" else settings.topic_orders, k, v)
        for t, k, v in encode_generated(generate(GeneratorConfig(users=80, days=220, seed=6)))
    ]
    produce(settings, sent)
    everything = sort_events(
        decode_records(
            sent,
            clickstream_topic=settings.topic_clickstream,
            orders_topic=settings.topic_orders,
        ).events
    )
    # Read only up to 20 days before the newest event: --until must hold too.
    until = everything[-1].timestamp - 20 * DAY_MS
    offline = [e for e in everything if e.timestamp <= until]
    cfg = RetrainConfig(window_days=100, until_ms=until, horizon_ms=30 * DAY_MS, step_ms=7 * DAY_MS)

    calls: list[tuple[list[Any], dict[str, Any]]] = []

    def capture(events: list[Any], model_dir: Path, **kwargs: Any) -> Path:
        calls.append((events, kwargs))
        raise _Captured

    monkeypatch.setattr(stream.training.retrain, "train_from_events", capture)
    client = redis.Redis.from_url(settings.redis_url)
    with pytest.raises(_Captured):
        run_once(settings, cfg, client)
    # The lock was released on the way out, as after any failed run.
    assert client.get(f"{settings.redis_prefix}:retrain-lock") is None
    [(events, kwargs)] = calls

    # Every event up to --until was folded, including those before the window...
    assert len(events) == len(offline) and max(e.timestamp for e in events) == offline[-1].timestamp
    since = offline[-1].timestamp - 100 * DAY_MS
    assert kwargs["cutoffs_since_ms"] == since
    assert any(e.timestamp < since for e in events)
    # ...and the window bounds the cutoffs: the examples the job trains on
    # equal the full offline fold at those cutoffs.
    prepared = prepare_examples(
        events, horizon_ms=cfg.horizon_ms, step_ms=cfg.step_ms, cutoffs_since_ms=since
    )
    ex = prepared.examples
    assert ex.cutoffs.min() >= since
    cutoffs = sorted(set(ex.cutoffs.tolist()))
    full = build_examples(offline, cutoffs, horizon_ms=cfg.horizon_ms)
    assert ex.users == full.users
    np.testing.assert_array_equal(ex.x, full.x)
    np.testing.assert_array_equal(ex.y, full.y)

    # Not vacuous: users with events before the window have features a fold of
    # the window alone would get wrong, and the job got them right.
    at = cutoffs[len(cutoffs) // 2]
    old = {e.user_id for e in offline if e.timestamp < since}
    wrong = 0
    for i in np.flatnonzero(ex.cutoffs == at):
        user = ex.users[i]
        if user not in old:
            continue
        mine = [e for e in offline if e.user_id == user and e.timestamp <= at]
        np.testing.assert_array_equal(ex.x[i], vector(fold_all(mine), at), err_msg=user)
        recent = [e for e in mine if e.timestamp >= since]
        if recent and not np.array_equal(ex.x[i], vector(fold_all(recent), at)):
            wrong += 1
    assert wrong > 10, "too few long-standing users in the window to tell the folds apart"
