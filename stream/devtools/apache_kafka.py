"""Apache Kafka, the broker users run, as a local single-node server for the tests,
the bench, the demo and anyone with Java who wants one.

One process in KRaft mode (broker and controller together), from the jars Maven
resolves for ``deploy/kafka/pom.xml`` (the one pinned version: the same one
``docker-compose.yml`` runs). The jars are resolved once into a cache directory
and reused; ``SEGMENTER_KAFKA_LIB`` names another (a directory already holding
them is used as is, an empty one is filled). Each start formats a fresh log
directory in a temp dir, binds 127.0.0.1 on free ports, and is stopped by the
PID we started: SIGTERM, then SIGKILL after 15 s.

`segmenter` itself never needs this: it is a development tool, like
:mod:`stream.devtools.embedded`'s Tansu broker, and needs Java 17+ (and Maven,
the first time).

Besides PLAINTEXT it can open the listeners a secured cluster has: SASL/SCRAM
(users added at format time), TLS (PEM files the caller provides), and both;
with ``authorizer=True`` Kafka's StandardAuthorizer checks ACLs (everything is
allowed where no ACL matches, and PLAINTEXT clients are super users, so only
the ACLs a test adds deny anything).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from platformdirs import user_cache_path

from stream.devtools.embedded import EmbeddedError, free_port, stop_process

log = logging.getLogger(__name__)

#: The pom that pins the version (and the log4j2 binding Kafka needs beside it).
POM = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "pom.xml"

#: Settings every instance gets: one node, so replication factor 1 for the
#: internal topics; no 3 s wait before the first group rebalance; a cleaner
#: buffer that fits a small heap (the 128 MiB default is allocated on it).
#: Topics are not auto-created: the service creates its own (Tansu never
#: auto-creates), so a topic it forgot to create fails here as it would there
#: instead of appearing uncompacted.
BASE_PROPERTIES: dict[str, str] = {
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    "auto.create.topics.enable": "false",
    "log.cleaner.dedupe.buffer.size": str(32 * 1024 * 1024),
    "num.partitions": "1",
}

#: For tests of compaction: the cleaner looks for work every 500 ms and the
#: log manager's first checks come after 1 s (30 s by default). Topics still
#: need a small segment.ms / min.cleanable.dirty.ratio / delete.retention.ms.
FAST_CLEANING: dict[str, str] = {
    "log.cleaner.backoff.ms": "500",
    "log.initial.task.delay.ms": "1000",
    "log.retention.check.interval.ms": "1000",
}

LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = INFO
"""

SCRAM_MECHANISM = "SCRAM-SHA-512"


def pom_path() -> Path:
    given = os.environ.get("SEGMENTER_KAFKA_POM")
    return Path(given) if given else POM


def kafka_version(pom: Path | None = None) -> str:
    """The pinned Kafka version: ``<kafka.version>`` of the pom."""
    pom = pom or pom_path()
    try:
        text = pom.read_text()
    except OSError as exc:
        raise EmbeddedError(
            f"cannot read {pom} ({exc.strerror}): Apache Kafka is resolved from the repository's "
            "deploy/kafka/pom.xml; run from a clone, or set SEGMENTER_KAFKA_POM"
        ) from None
    found = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", text)
    if not found:
        raise EmbeddedError(f"{pom} has no <kafka.version> property")
    return found.group(1)


def _has_jars(lib: Path) -> bool:
    return lib.is_dir() and any(lib.glob("kafka_2.13-*.jar"))


def kafka_lib(pom: Path | None = None, timeout_s: float = 600.0) -> Path:
    """The directory of Kafka's runtime jars, resolving them with Maven if need be.

    ``SEGMENTER_KAFKA_LIB`` if set (used as is when it holds the jars); else a
    per-user cache directory named by the version and the pom's hash, so a
    changed pom resolves anew and an unchanged one never calls Maven again.
    """
    pom = pom or pom_path()
    version = kafka_version(pom)
    given = os.environ.get("SEGMENTER_KAFKA_LIB")
    if given:
        lib = Path(given)
        if _has_jars(lib):
            return lib
    else:
        digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:12]
        lib = user_cache_path("segmenter") / "kafka" / f"{version}-{digest}"
        if _has_jars(lib):
            return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise EmbeddedError(
            "Apache Kafka's jars are resolved with Maven, and `mvn` is not on PATH "
            "(apt-get install maven), or set SEGMENTER_KAFKA_LIB to a directory of them"
        )
    lib.parent.mkdir(parents=True, exist_ok=True)
    # Into a fresh directory, renamed into place when complete: a run that is
    # interrupted, or another one resolving at the same time, never leaves a
    # half-filled directory that looks done.
    staging = Path(tempfile.mkdtemp(prefix=f".{lib.name}-", dir=lib.parent))
    log.info("resolving Apache Kafka %s with Maven into %s", version, lib)
    try:
        done = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={staging}",
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if done.returncode != 0 or not _has_jars(staging):
            tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
            raise EmbeddedError(
                f"Maven could not resolve Apache Kafka {version} from {pom} "
                f"(exit {done.returncode}):\n" + "\n".join(tail)
            )
        if _has_jars(lib):  # someone else finished first
            return lib
        with contextlib.suppress(FileNotFoundError):
            lib.rmdir()  # an empty directory given by SEGMENTER_KAFKA_LIB
        try:
            staging.rename(lib)
        except OSError:
            if not _has_jars(lib):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return lib


def java_binary() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise EmbeddedError(
            "Apache Kafka needs Java 17 or newer, and `java` is not on PATH "
            "(apt-get install openjdk-17-jre-headless)"
        )
    return found


def new_cluster_id() -> str:
    """A KRaft cluster id: a random UUID in base64url without padding (what
    ``kafka-storage random-uuid`` prints), without starting a JVM for it.

    Never one starting with "-", as Kafka's own Uuid.randomUuid() ensures: the
    format command would read it as an option (seen here, 1 start in 64).
    """
    while True:
        found = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not found.startswith("-"):
            return found


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for the broker's TLS listeners: its key (unencrypted PKCS#8)
    and certificate chain in one file, and the CA that signed it."""

    key_and_chain: Path
    ca: Path


@dataclass
class ApacheKafka:
    """A single-node Apache Kafka (KRaft) on 127.0.0.1, stopped by its PID.

    Listeners: PLAINTEXT always; SASL_PLAINTEXT with ``scram_users``; SSL with
    ``tls``; SASL_SSL with both. Each on a free port, read back from
    :attr:`bootstrap`, :attr:`sasl_bootstrap`, :attr:`ssl_bootstrap` and
    :attr:`sasl_ssl_bootstrap`.
    """

    port: int = 0
    controller_port: int = 0
    sasl_port: int = 0
    ssl_port: int = 0
    sasl_ssl_port: int = 0
    #: SCRAM-SHA-512 users (name -> password), created at format time.
    scram_users: Mapping[str, str] = field(default_factory=dict)
    tls: TlsFiles | None = None
    #: Check ACLs (StandardAuthorizer). Everything is allowed where no ACL
    #: matches; PLAINTEXT and the controller (User:ANONYMOUS) are super users.
    authorizer: bool = False
    #: More server.properties, over the defaults.
    properties: Mapping[str, str] = field(default_factory=dict)
    heap_mb: int = 512
    #: Keep the temp dir (logs and data) after stop, for a post-mortem.
    keep_dir: bool = False
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    workdir: Path | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    @property
    def sasl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def ssl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.ssl_port}"

    @property
    def sasl_ssl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.sasl_ssl_port}"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None, "not started"
        return self.workdir / "logs" / "server.log"

    def server_properties(self) -> dict[str, str]:
        assert self.workdir is not None
        listeners = {"PLAINTEXT": self.port}
        if self.scram_users:
            listeners["SASL_PLAINTEXT"] = self.sasl_port
        if self.tls is not None:
            listeners["SSL"] = self.ssl_port
        if self.scram_users and self.tls is not None:
            listeners["SASL_SSL"] = self.sasl_ssl_port
        advertised = ",".join(f"{n}://127.0.0.1:{p}" for n, p in listeners.items())
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "listeners": f"{advertised},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": advertised,
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join(f"{n}:{n}" for n in listeners)
            + ",CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.workdir / "data"),
            **BASE_PROPERTIES,
        }
        if self.scram_users:
            props["sasl.enabled.mechanisms"] = SCRAM_MECHANISM
            jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            for name in ("sasl_plaintext", "sasl_ssl"):
                props[f"listener.name.{name}.scram-sha-512.sasl.jaas.config"] = jaas
        if self.tls is not None:
            for name in ("ssl", "sasl_ssl"):
                props[f"listener.name.{name}.ssl.keystore.type"] = "PEM"
                props[f"listener.name.{name}.ssl.keystore.location"] = str(self.tls.key_and_chain)
                props[f"listener.name.{name}.ssl.client.auth"] = "none"
        if self.authorizer:
            props |= {
                "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                "super.users": "User:ANONYMOUS",
                "allow.everyone.if.no.acl.found": "true",
            }
        props |= dict(self.properties)
        return props

    def _java(self, lib: Path, main: str, *args: str, heap: bool = False) -> list[str]:
        assert self.workdir is not None
        opts = [
            f"-Xms{self.heap_mb}m" if heap else "-Xms64m",
            f"-Xmx{self.heap_mb}m" if heap else "-Xmx256m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.workdir / 'logs'}",
        ]
        return [java_binary(), *opts, "-cp", f"{lib}/*", main, *args]

    def start(self, timeout_s: float = 90.0) -> ApacheKafka:
        lib = kafka_lib()
        java_binary()  # a missing Java fails here, in one line
        for name in ("port", "controller_port", "sasl_port", "ssl_port", "sasl_ssl_port"):
            if not getattr(self, name):
                setattr(self, name, free_port())
        self.workdir = Path(tempfile.mkdtemp(prefix="segmenter-kafka-"))
        (self.workdir / "logs").mkdir()
        (self.workdir / "log4j2.properties").write_text(LOG4J2)
        config = self.workdir / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in self.server_properties().items()))
        try:
            self._format(lib, config, timeout_s)
            out = (self.workdir / "logs" / "kafka.out").open("wb")
            with out:  # the child keeps its own copy of the descriptor
                self.proc = subprocess.Popen(
                    self._java(lib, "kafka.Kafka", str(config), heap=True),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # our Ctrl-C goes to us; we stop it in order
                )
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        log.info(
            "Apache Kafka %s on %s, pid %d, logs in %s",
            kafka_version(),
            self.bootstrap,
            self.proc.pid,
            self.log_path.parent,
        )
        return self

    def _format(self, lib: Path, config: Path, timeout_s: float) -> None:
        scram = [
            a
            for name, password in self.scram_users.items()
            for a in ("--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={password}]")
        ]
        done = subprocess.run(
            self._java(
                lib,
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                new_cluster_id(),
                "-c",
                str(config),
                *scram,
            ),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if done.returncode != 0:
            raise EmbeddedError(
                f"formatting Apache Kafka's log directory failed (exit {done.returncode}): "
                + (done.stderr or done.stdout).strip()[-2000:]
            )

    def _wait_ready(self, timeout_s: float) -> None:
        """Ready when the port accepts and metadata lists this broker."""
        from confluent_kafka.admin import AdminClient

        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EmbeddedError(
                    f"Apache Kafka exited with code {self.proc.returncode} during start-up:\n"
                    + self.tail()
                )
            with contextlib.suppress(Exception):
                meta = admin.list_topics(timeout=1)
                if meta.brokers:
                    return
            time.sleep(0.2)
        raise EmbeddedError(
            f"Apache Kafka did not answer on {self.bootstrap} within {timeout_s}s:\n" + self.tail()
        )

    def tail(self, lines: int = 40) -> str:
        """The end of the server log (and the JVM's own output), for error messages."""
        if self.workdir is None:
            return ""
        out = []
        for name in ("kafka.out", "server.log"):
            with contextlib.suppress(OSError):
                text = (self.workdir / "logs" / name).read_text(errors="replace")
                out += text.splitlines()[-lines:]
        return "\n".join(out)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM (a controlled shutdown), then SIGKILL after ``timeout_s``."""
        stop_process(self.proc, timeout_s)
        if self.workdir is not None and not self.keep_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def apache_kafka(**kwargs: object) -> Iterator[ApacheKafka]:
    broker = ApacheKafka(**kwargs).start()  # type: ignore[arg-type]
    try:
        yield broker
    finally:
        broker.stop()
