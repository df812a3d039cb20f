"""A data team's path on an orders-only purchase log, as the issue ran it:

1. the events up to a date T go into the topics;
2. ``segmenter retrain --once --until T --horizon 90d`` replays them;
3. the gate promotes the model trained on them over the bootstrap (which was
   trained on generated data: no home advantage), and a worker serves it;
4. each customer's final segment, read from ``customer-segments``, is compared
   with what they actually spent in the 90 days after T.

The log is an orders-only generated population (heavy-tailed purchase rates
and order values: :mod:`stream.training.populations`); the real UCI sample goes
through ``segmenter train --input`` in ``tests/stream/test_cli_train.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import orjson
import pytest

from model.registry import current_version, ensure_serving_model
from model.segments import DEFAULT_SEGMENTS
from model.training.dataset import build_examples, sort_events
from model.training.evaluate import classification_report
from model.training.sources import decode_records
from stream.core.events import iso
from stream.core.fold import DAY_MS
from stream.settings import Settings
from stream.training.populations import PopulationConfig, generate_population
from stream.training.produce import encode_generated
from tests.conftest import TopicReader, WorkerProcess, settings_env
from tests.helpers import produce, wait_applied
from tests.stream.test_cli import segmenter

pytestmark = pytest.mark.integration

HORIZON = 90 * DAY_MS


def orders_only_log(settings: Settings) -> tuple[list[tuple[str, bytes | None, bytes]], int]:
    """(records, T): a heavy-tailed orders-only population, T 90 days before its end."""
    # CDNOW-like rates and order values (the PopulationConfig defaults), 10k
    # customers over 18 months: near the size of the real log the issue
    # measured (23k). At 4k the fit was too thin to place the archetypes.
    cfg = PopulationConfig(
        users=10_000, days=540, seed=11, share_orders_only=1.0, share_click_only=0.0
    )
    topics = {"clickstream": settings.topic_clickstream, "orders": settings.topic_orders}
    records = [(topics[t], k, v) for t, k, v in encode_generated(generate_population(cfg))]
    assert all(t == settings.topic_orders for t, _, _ in records)
    return records, cfg.start_ms + int(cfg.days * DAY_MS) - HORIZON


@pytest.mark.brokers("tansu", "kafka")
def test_retrain_on_an_orders_only_log_promotes_a_model_the_worker_serves(
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
    reader_factory: Callable[[str], TopicReader],
) -> None:
    settings = settings_factory()
    records, t_cut = orders_only_log(settings)
    events = sort_events(
        decode_records(
            records,
            clickstream_topic=settings.topic_clickstream,
            orders_topic=settings.topic_orders,
        ).events
    )
    # Only the past goes into the topics, as on the day of the retrain.
    past = [r for r in records if orjson.loads(r[2])["timestamp"] <= t_cut]
    assert 0 < len(past) < len(records)
    ends = produce(settings, past)
    boot = ensure_serving_model(settings.model_dir)

    out = segmenter(
        "retrain", "--once", "--until", iso(t_cut), "--horizon", "90d",
        env=settings_env(settings), timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    version = current_version(settings.model_dir)
    assert version != boot, out.stderr[-3000:]
    gate = orjson.loads((settings.model_dir / version / "gate.json").read_bytes())
    assert gate["outcome"] == "promoted" and gate["primary_metric"] == "high_value_f1"
    assert "potential" in gate["no_support"] or gate["scores"]["candidate"]["macro_f1"]
    assert gate["serving"]["home"] is False  # the bootstrap is scored like a baseline...
    serving = gate["scores"][f"serving {boot}"]["high_value_f1"]
    assert gate["candidate_f1"] > serving  # ...and beaten on this log's rows

    # The worker serves it: every user's final segment comes from the new model.
    segments = reader_factory(settings.topic_segments)
    worker = worker_factory(settings)
    worker.wait_ready()
    wait_applied(settings, ends, worker, timeout_s=120)
    users = {k.decode() for _, k, _ in past}
    segments.wait_for(lambda ms: len({m.key() for m in ms}) >= len(users) * 0.9, 120)
    final: dict[str, dict[str, object]] = {}
    for value in segments.values():
        final[str(value["user_id"])] = value
    assert {v["model_version"] for v in final.values()} == {version}

    # Against what each customer did in the 90 days after T.
    truth = build_examples(events, [t_cut], horizon_ms=HORIZON)
    index = {c: i for i, c in enumerate(DEFAULT_SEGMENTS)}
    served = np.array([index[str(final[u]["segment"])] for u in truth.users if u in final])
    y = np.array([y for u, y in zip(truth.users, truth.y, strict=True) if u in final])
    live = classification_report(y, served, DEFAULT_SEGMENTS)
    # The old bootstrap scored 0 here on a real log; what is served now finds
    # top customers. (Offline at T the candidate and the bootstrap are
    # compared on the same rows by the gate, above.)
    assert live["high_value_f1"] > 0.2, live
