"""The peer phase of `segmenter bench --peers`: other stream processors' trivial fold
on the same backlog and broker, each in its own process, measured like P.

A peer is a module run as ``python -m`` (peer_bytewax, peer_quix), with the
run's settings in its environment. It reads the input topics from the start
and reports how many records it has folded (peer_child), and its rate is taken
from those samples between 10% and 90% of the backlog, as B0's and P's are. A
peer whose library is not installed says so and exits: the run reports it as
not installed (null in the JSON), never as 0 ev/s.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from stream.devtools.bench.config import BenchError, Samples
from stream.devtools.bench.measure import log_tail
from stream.devtools.bench.peer_child import MISSING_EXIT
from stream.devtools.embedded import stop_process
from stream.settings import Settings

log = logging.getLogger("segmenter.bench")

#: Peer name -> (module run as ``python -m``, what it runs, for the table).
PEERS: dict[str, tuple[str, str]] = {
    "bytewax": (
        "stream.devtools.bench.peer_bytewax",
        "bytewax stateful_map, Kafka source, no recovery",
    ),
    "quix": (
        "stream.devtools.bench.peer_quix",
        "quix-streams StreamingDataFrame, stateful apply, RocksDB + changelog",
    ),
}
#: What to install for the peers (pyproject's optional extra).
INSTALL_HINT = "pip install -e '.[bench]'"


def parse_peers(text: str) -> tuple[str, ...]:
    """``"bytewax,quix"`` -> ``("bytewax", "quix")``; an unknown name is an error."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise ValueError(f"unknown peer(s) {', '.join(unknown)}: choose from {', '.join(PEERS)}")
    return names


class PeerMissing(Exception):
    """The peer's library did not import in its process."""


@dataclass
class ChildProgress:
    """Progress lines ``{"t", "n"}`` of a child process, and its other lines (``meta``)."""

    samples: Samples = field(default_factory=Samples)
    meta: dict[str, Any] = field(default_factory=dict)


def _parse(line: bytes) -> dict[str, Any]:
    """One line of a child's stdout; anything but a JSON object (a library that
    prints) is not the child's report, and is passed over."""
    try:
        point = orjson.loads(line)
    except orjson.JSONDecodeError:
        point = None
    if not isinstance(point, dict):
        log.debug("not a progress line: %r", line[:200])
        return {}
    return point


def follow_child(
    proc: subprocess.Popen[bytes],
    what: str,
    total: int,
    log_path: Path,
    stall_s: float,
    on_progress: Callable[[int], None],
) -> ChildProgress:
    """Read a child's JSON lines until it has done ``total`` records.

    Raises PeerMissing if it exits saying its library is missing, and
    BenchError if it exits early or makes no progress for ``stall_s`` (plus
    90 s before its first record: a group join and a cold start).
    """
    out = ChildProgress()
    lines: list[bytes] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        started = last = time.monotonic()
        seen = 0
        while out.samples.last < total:
            time.sleep(0.05)
            while seen < len(lines):
                point = _parse(lines[seen])
                seen += 1
                if "n" in point:
                    out.samples.add(point["t"], point["n"])
                    last = time.monotonic()
                else:
                    out.meta.update(point)
            on_progress(out.samples.last)
            if proc.poll() is not None and out.samples.last < total:
                reader.join(5)  # its last lines (a "missing" one) may still be in the pipe
                for line in lines[seen:]:
                    out.meta.update(_parse(line))
                if proc.returncode == MISSING_EXIT and "missing" in out.meta:
                    raise PeerMissing(str(out.meta.get("error", "")))
                raise BenchError(
                    f"{what} exited {proc.returncode} at {out.samples.last:,} records:\n"
                    f"{log_tail(log_path)}"
                )
            limit = stall_s + (90 if not out.samples.last else 0)
            if time.monotonic() - max(last, started) > limit:
                raise BenchError(
                    f"{what}: no progress for {limit:.0f} s at {out.samples.last:,} records:\n"
                    f"{log_tail(log_path)}"
                )
    finally:
        stop_process(proc, 10)
        reader.join(5)
    return out


def run_peer(
    peer: str,
    settings: Settings,
    *,
    run_id: str,
    total: int,
    workdir: Path,
    stall_s: float,
    on_start: Callable[[int], None],
    on_progress: Callable[[int], None],
) -> tuple[float | None, str]:
    """(the peer's rate over the 10%-90% window, its version), or (None, "not installed")."""
    module, _ = PEERS[peer]
    log_path = workdir / f"peer-{peer}.log"
    output = f"bench-{run_id}-peer-{peer}-out"
    cmd = [
        sys.executable,
        "-m",
        module,
        "--topics",
        ",".join(settings.input_topics),
        "--output",
        output,
        "--group",
        f"bench-{run_id}-peer-{peer}",
        "--expect",
        str(total),
        "--datadir",
        str(workdir / f"peer-{peer}-data"),
    ]
    with log_path.open("wb") as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, env=settings.to_env())
    on_start(proc.pid)
    try:
        got = follow_child(proc, f"peer {peer}", total, log_path, stall_s, on_progress)
    except PeerMissing as exc:
        log.warning("peer %s: not installed (%s; %s)", peer, exc, INSTALL_HINT)
        return None, "not installed"
    eps = got.samples.rate(total)
    version = str(got.meta.get("version", "?"))
    log.info("peer %s %s: trivial fold at %s records/s", peer, version, f"{eps:,.0f}")
    return eps, version


def run_topics(settings: Settings, run_id: str) -> list[str]:
    """Every topic of this run on the broker, the peers' outputs and the changelogs
    quix-streams created included (their names carry the consumer group's)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(settings.kafka_client_config())
    return sorted(t for t in admin.list_topics(timeout=15).topics if f"bench-{run_id}-" in t)
