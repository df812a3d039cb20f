"""The retrain job: replay from the broker, train, gate, promote; and its lock."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest
import redis

from model.gate import decide
from model.registry import current_version, ensure_serving_model, list_versions
from stream.generate import GeneratorConfig, generate
from stream.produce import encode_generated
from stream.settings import Settings
from tests.conftest import settings_env
from tests.helpers import produce
from tests.stream.test_cli import segmenter


def test_gate_needs_both_baselines_beaten_and_no_regression() -> None:
    base = {"rfm": 0.5, "previous_segment": 0.6}
    assert decide(0.70, base, None, 0.01)[0]
    assert decide(0.70, base, 0.705, 0.01)[0]
    ok, reason = decide(0.60, {"rfm": 0.5}, 0.70, 0.01)
    assert not ok and "0.6000 < serving model 0.7000" in reason
    ok, reason = decide(0.65, base | {"previous_segment": 0.66}, None, 0.01)
    assert not ok and "previous_segment" in reason


@pytest.mark.integration
def test_retrain_once_replays_the_topics_and_gates_against_the_serving_model(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory()
    sent = [
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
    expected = decide(verdict["candidate_f1"], verdict["baselines_f1"], verdict["current_f1"], 0.01)
    assert verdict["outcome"] == ("promoted" if expected[0] else "candidate")
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
