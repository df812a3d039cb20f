"""`segmenter bench --peers`: a peer that is not installed is said so, never 0 ev/s,
and the ratios and the latency overhead are the arithmetic the JSON promises.

The peers' measured rates on a real broker are checked in test_bench_ratio.py
(one bench run serves both). Here each peer process is the real one
(``python -m stream.devtools.bench.peer_*``), run in an environment where its
library fails to import: a directory first on PYTHONPATH whose module of that
name raises what Python raises for a missing package.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from stream.devtools.bench import JSON_KEYS, BenchConfig, BenchError, BenchResult, render
from stream.devtools.bench.peers import PEERS, parse_peers, run_peer
from stream.settings import load_settings


def _shadow(tmp_path: Path, module: str, body: str) -> Path:
    shadow = tmp_path / "shadow"
    shadow.mkdir(exist_ok=True)
    (shadow / f"{module}.py").write_text(body)
    return shadow


def _run(peer: str, tmp_path: Path) -> tuple[float | None, str]:
    # Nothing is contacted: the peer stops at its import, before the broker.
    settings = load_settings(kafka_url="kafka://127.0.0.1:9", redis_url="redis://127.0.0.1:9/0")
    return run_peer(
        peer,
        settings,
        run_id="t",
        total=1000,
        workdir=tmp_path,
        stall_s=30.0,
        on_start=lambda pid: None,
        on_progress=lambda n: None,
    )


@pytest.mark.parametrize(("peer", "module"), [("bytewax", "bytewax"), ("quix", "quixstreams")])
def test_a_peer_whose_library_does_not_import_is_reported_not_installed(
    peer: str, module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = f"raise ModuleNotFoundError(\"No module named '{module}'\", name='{module}')\n"
    monkeypatch.setenv("PYTHONPATH", str(_shadow(tmp_path, module, missing)))
    assert _run(peer, tmp_path) == (None, "not installed")

    result = BenchResult(
        events=1000,
        users=10,
        partitions=4,
        workers=1,
        raw_eps=100_000.0,
        faust_passthrough_eps=5_000.0,
        pipeline_eps=20_000.0,
        peer_versions={peer: "not installed"},
    )
    out = result.to_json()
    assert out[f"{peer}_eps"] is None and out[f"pipeline_vs_{peer}"] is None
    assert out["peers"] == {peer: "not installed"}
    console = Console(width=200, record=True)
    console.print(render(result))
    row = next(line for line in console.export_text().splitlines() if line.startswith(f"│ {peer}"))
    assert "not installed" in row


def test_a_peer_that_crashes_is_an_error_not_a_missing_peer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = "raise RuntimeError('bytewax is installed but broken')\n"
    monkeypatch.setenv("PYTHONPATH", str(_shadow(tmp_path, "bytewax", broken)))
    with pytest.raises(BenchError, match="installed but broken"):
        _run("bytewax", tmp_path)


def test_peer_ratios_and_latency_overhead_are_the_json_arithmetic() -> None:
    result = BenchResult(
        events=30_000,
        users=2_400,
        partitions=4,
        workers=1,
        raw_eps=600_000.0,
        faust_passthrough_eps=6_000.0,
        pipeline_eps=20_000.0,
        p50_ms=189.0,
        p99_ms=332.0,
        raw_p50_ms=51.0,
        raw_p99_ms=123.0,
        latency_rate_eps=6_000.0,
        bytewax_eps=100_000.0,
        quix_eps=25_000.0,
        peer_versions={"bytewax": "0.21.1", "quix": "3.28.1"},
    )
    out = result.to_json()
    assert set(JSON_KEYS) <= set(out)
    assert (out["overhead_p50_ms"], out["overhead_p99_ms"]) == (138.0, 209.0)
    assert (out["pipeline_vs_bytewax"], out["pipeline_vs_quix"]) == (0.2, 0.8)
    assert (out["bytewax_eps"], out["quix_eps"]) == (100_000, 25_000)
    console = Console(width=200, record=True)
    console.print(render(result))
    text = console.export_text()
    assert "pipeline_vs_quix" in text and "0.80" in text and "+209.0 ms" in text
    # Without the latency phase or the peers, null rather than a made-up number.
    none = BenchResult(
        events=1000,
        users=10,
        partitions=4,
        workers=1,
        raw_eps=1.0,
        faust_passthrough_eps=1.0,
        pipeline_eps=1.0,
    ).to_json()
    assert none["overhead_p50_ms"] is None and none["overhead_p99_ms"] is None
    assert none["pipeline_vs_bytewax"] is None and none["peers"] == {}


def test_peer_names_are_checked() -> None:
    assert parse_peers(" quix, bytewax,quix ") == ("quix", "bytewax")
    assert parse_peers("") == ()
    assert set(PEERS) == {"bytewax", "quix"}
    with pytest.raises(ValueError, match="flink"):
        parse_peers("bytewax,flink")
    with pytest.raises(ValueError, match="flink"):
        BenchConfig(peers=("flink",)).validate()
