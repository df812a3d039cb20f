"""A small `segmenter bench` in CI, as a regression guard on the ratio it reports.

The target is pipeline_vs_faust >= 3.0 (README "Performance"); it is NOT met
yet (1.1x on the full-size bench, 1.4-1.6x on this small one). Until it is,
this test holds the line that is met: the whole pipeline (decode, fold,
Redis, score, publish) is at least as fast as a bare Faust agent that does
nothing. When the target is reached, raise the bound here to 3.0.

Ratios only: both sides run on the same machine in the same minute, so the
machine's speed cancels out; absolute rates and latencies are not asserted.
"""

from __future__ import annotations

import pytest
from rich.console import Console

from stream.bench import JSON_KEYS, BenchConfig, run_bench

pytestmark = pytest.mark.integration


@pytest.mark.timeout(240)
def test_pipeline_is_at_least_as_fast_as_a_bare_faust_agent(
    kafka_bootstrap: str, redis_url: str
) -> None:
    result = run_bench(
        BenchConfig(
            events=30_000,
            users=3_000,
            partitions=4,
            latency_s=3.0,
            kafka_url=f"kafka://{kafka_bootstrap}",
            redis_url=redis_url,
        ),
        Console(stderr=True, quiet=True),
    )
    out = result.to_json()
    assert set(JSON_KEYS) <= set(out)
    assert out["events"] == 30_000
    assert result.pipeline_vs_raw < 1  # sanity: nothing beats the raw drain
    assert result.latency_samples > 0
    assert result.pipeline_vs_faust >= 1.0, (
        f"pipeline {result.pipeline_eps:,.0f} ev/s vs bare Faust "
        f"{result.faust_passthrough_eps:,.0f} ev/s: {result.pipeline_vs_faust:.2f}x; "
        f"breakdown {result.breakdown.get('pipeline')}"
    )
