"""Typed settings from the environment (prefix ``SEGMENTER_``), validated at start-up.

A wrong value fails here, before any connection is made, with a message that
names the variable and says what it expects (see :func:`load_settings`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import orjson
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

ENV_PREFIX = "SEGMENTER_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    # --- connections
    kafka_url: str = Field(
        "kafka://127.0.0.1:9092", description="Broker list, kafka://host:port[;host:port]"
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle for the brokers' TLS")
    kafka_ssl_certfile: Path | None = Field(None, description="Client certificate (mutual TLS)")
    kafka_ssl_keyfile: Path | None = None
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="redis:// or rediss:// (TLS)")
    redis_password: SecretStr | None = Field(None, description="Redis AUTH password")
    redis_ssl_ca_certs: Path | None = Field(None, description="CA bundle for rediss://")
    redis_prefix: str = Field("seg", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")

    # --- topics
    topic_clickstream: str = "clickstream"
    topic_orders: str = "orders"
    topic_segments: str = "customer-segments"
    topic_dlq: str = "segmenter-dlq"
    topic_models: str = "segmenter-models"
    topic_partitions: int = Field(8, ge=1, le=1024, description="Partitions when creating topics")

    # --- consumer group and batching
    group_id: str = Field("segmenter", min_length=1)
    batch_max: int = Field(10_000, ge=1, le=100_000, description="Records per agent batch at most")
    batch_within_s: float = Field(0.05, gt=0, le=10)
    broker_session_timeout_s: float = Field(30.0, gt=0)
    broker_rebalance_timeout_s: float = Field(60.0, gt=0)
    broker_heartbeat_interval_s: float = Field(3.0, gt=0)
    commit_interval_s: float = Field(1.0, gt=0)

    # --- consumer tuning (stream/consumer.py; `segmenter bench` measures each)
    consumer_batching: bool = Field(
        True,
        description="Hand the agent whole fetches (stream/consumer.py); false = stock Faust, "
        "one event per record",
    )
    stream_buffer_maxsize: int = Field(
        20_000,
        ge=1,
        le=1_000_000,
        description="Records fetched ahead of the agent before fetching pauses",
    )
    broker_max_poll_records: int = Field(
        5000, ge=1, le=100_000, description="Records per fetch handed to the agent at most"
    )
    consumer_max_fetch_size: int = Field(
        4 * 1024 * 1024,
        ge=64 * 1024,
        le=256 * 1024 * 1024,
        description="Bytes fetched per partition and request",
    )
    consumer_fetch_max_wait_ms: int = Field(
        20,
        ge=1,
        le=30_000,
        description="How long a fetch waits for records (Faust's own is 1500 ms; latency)",
    )
    event_loop: Literal["asyncio", "uvloop"] = Field(
        "asyncio",
        description="Event loop of the worker (asyncio and uvloop measured alike: README)",
    )
    blas_threads: int = Field(
        1,
        ge=0,
        le=256,
        description="Threads NumPy's BLAS may use in the worker (0 = the library's default, "
        "one per core). 1: batches are small, and idle OpenBLAS threads spin on cores the "
        "consumer, broker, Redis and other workers need",
    )
    gc_gen0_threshold: int = Field(
        500_000,
        ge=0,
        le=10_000_000,
        description="Young objects (allocated less freed) before a young garbage collection "
        "(0 = Python's default); start-up objects are frozen out of collection",
    )

    # --- input guards
    max_event_bytes: int = Field(64 * 1024, ge=256)
    max_future_s: float = Field(86_400.0, ge=0)
    dedup_window: int = Field(
        8,
        ge=0,
        le=255,
        description="Recent event_ids kept per user and input topic (against producer retries)",
    )
    retention_days: float = Field(
        400.0,
        gt=0,
        description="Forget users inactive this long in event time; also the lateness bound",
    )
    pseudonymize_key: SecretStr | None = Field(
        None, description="HMAC key: when set, user ids are pseudonymised on ingest"
    )

    # --- model and segments
    model_dir: Path = Path("var/models")
    hysteresis_margin: float = Field(0.1, ge=0, le=1)
    hysteresis_floor: float = Field(0.2, ge=0, le=1)
    reevaluate_days: tuple[float, ...] = Field(
        (14.0, 30.0, 60.0, 90.0, 120.0, 180.0, 365.0),
        description="Inactivity thresholds (event-time days) that trigger a re-score",
    )
    reevaluate_interval_s: float = Field(2.0, gt=0, description="How often the sweep runs")
    explain_top_k: int = Field(3, ge=0, le=18, description="Features explained per change")
    segment_topics: bool = Field(False, description="Also publish segments.<segment> events")
    segment_topic_template: str = Field("segments.{segment}", pattern=r"\{segment\}")
    playbook_path: Path | None = Field(None, description="YAML playbook (default: bundled)")

    # --- operations
    metrics_host: str = Field("127.0.0.1", description="Bind address; 0.0.0.0 in containers")
    metrics_port: int = Field(
        9108, ge=0, le=65535, description="/metrics, /healthz, /readyz; 0 turns them off"
    )
    housekeeping_interval_s: float = Field(
        5.0, gt=0, le=300, description="Redis health, populations, lag, model check"
    )
    data_dir: Path = Path("var/faust")
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")

    @field_validator("kafka_url")
    @classmethod
    def _kafka_url(cls, value: str) -> str:
        for part in value.split(";"):
            parts = urlsplit(part if "://" in part else f"kafka://{part}")
            if parts.scheme != "kafka" or not parts.hostname or parts.port is None:
                raise ValueError(
                    f"{part!r} is not a broker address; expected kafka://host:port "
                    "(several separated by ';')"
                )
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
            raise ValueError(f"expected redis://host:port/db or rediss://…, got {redact(value)!r}")
        return value

    @model_validator(mode="after")
    def _security(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"SEGMENTER_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "SEGMENTER_KAFKA_SASL_USERNAME and SEGMENTER_KAFKA_SASL_PASSWORD"
            )
        for name in (
            "kafka_ssl_cafile",
            "kafka_ssl_certfile",
            "kafka_ssl_keyfile",
            "redis_ssl_ca_certs",
        ):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"SEGMENTER_{name.upper()}={path} is not a readable file")
        if list(self.reevaluate_days) != sorted(set(self.reevaluate_days)) or any(
            not (0 < d < 100_000)
            for d in self.reevaluate_days  # also refuses NaN and Infinity
        ):
            raise ValueError(
                "SEGMENTER_REEVALUATE_DAYS must be increasing positive days, e.g. [30,60]"
            )
        if self.stream_buffer_maxsize < self.batch_max:
            raise ValueError(
                f"SEGMENTER_STREAM_BUFFER_MAXSIZE={self.stream_buffer_maxsize} must be at least "
                f"SEGMENTER_BATCH_MAX={self.batch_max}, or batches could never fill"
            )
        if self.pseudonymize_key is not None and len(self.pseudonymize_key.get_secret_value()) < 16:
            raise ValueError("SEGMENTER_PSEUDONYMIZE_KEY must be at least 16 characters")
        return self

    @field_validator("segment_topic_template")
    @classmethod
    def _one_placeholder(cls, template: str) -> str:
        # Only {segment} may be filled in; anything else would fail at the first
        # change, mid-stream, instead of here.
        try:
            name = template.format(segment="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"SEGMENTER_SEGMENT_TOPIC_TEMPLATE={template!r}: only the {{segment}} "
                f"placeholder is allowed ({type(exc).__name__}: {exc})"
            ) from None
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", name):
            raise ValueError(
                f"SEGMENTER_SEGMENT_TOPIC_TEMPLATE={template!r} does not give a valid Kafka "
                "topic name (letters, digits, '.', '_', '-')"
            )
        return template

    @model_validator(mode="after")
    def _distinct_topics(self) -> Settings:
        topics = [
            self.topic_clickstream,
            self.topic_orders,
            self.topic_segments,
            self.topic_dlq,
            self.topic_models,
        ]
        if len(set(topics)) != len(topics):
            raise ValueError(f"topic names must be distinct, got {topics}")
        return self

    @property
    def bootstrap_servers(self) -> str:
        """``host:port,host:port`` for confluent-kafka and aiokafka."""
        out = []
        for part in self.kafka_url.split(";"):
            parts = urlsplit(part if "://" in part else f"kafka://{part}")
            out.append(f"{parts.hostname}:{parts.port}")
        return ",".join(out)

    def kafka_client_config(self) -> dict[str, Any]:
        """librdkafka (confluent-kafka) settings: bootstrap servers plus security."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.kafka_security_protocol,
        }
        if self.kafka_security_protocol.startswith("SASL_"):
            assert self.kafka_sasl_password is not None
            conf |= {
                "sasl.mechanisms": self.kafka_sasl_mechanism,
                "sasl.username": self.kafka_sasl_username,
                "sasl.password": self.kafka_sasl_password.get_secret_value(),
            }
        if self.kafka_ssl_cafile:
            conf["ssl.ca.location"] = str(self.kafka_ssl_cafile)
        if self.kafka_ssl_certfile:
            conf["ssl.certificate.location"] = str(self.kafka_ssl_certfile)
        if self.kafka_ssl_keyfile:
            conf["ssl.key.location"] = str(self.kafka_ssl_keyfile)
        return conf

    def redis_client_kwargs(self) -> dict[str, Any]:
        """Extra redis-py keyword arguments (AUTH and TLS); the URL carries the rest."""
        kwargs: dict[str, Any] = {}
        if self.redis_password is not None:
            kwargs["password"] = self.redis_password.get_secret_value()
        if self.redis_ssl_ca_certs is not None:
            kwargs["ssl_ca_certs"] = str(self.redis_ssl_ca_certs)
        return kwargs

    @property
    def faust_broker(self) -> str:
        return ";".join(f"kafka://{hp}" for hp in self.bootstrap_servers.split(","))

    @property
    def input_topics(self) -> tuple[str, str]:
        return (self.topic_clickstream, self.topic_orders)

    @property
    def all_topics(self) -> tuple[str, ...]:
        return (*self.input_topics, self.topic_segments, self.topic_dlq, self.topic_models)

    def to_env(self) -> dict[str, str]:
        """This process's environment with ``SEGMENTER_*`` replaced by these settings:
        what a child process (a worker, a benchmark phase) needs to load them back."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if isinstance(value, list | tuple | dict):
                value = orjson.dumps(value).decode()  # complex settings are JSON in the environment
            env[f"{ENV_PREFIX}{name.upper()}"] = str(value)
        return env

    def safe_summary(self) -> dict[str, object]:
        """What may be logged: secrets masked, URLs stripped of credentials."""
        out: dict[str, object] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                out[name] = "**********" if value.get_secret_value() else ""
            elif name.endswith("_url") and isinstance(value, str):
                out[name] = redact(value)
            else:
                out[name] = str(value) if isinstance(value, Path) else value
        return out


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


class SettingsError(SystemExit):
    """Raised (as a clean exit) when the environment holds a wrong setting."""


def describe_errors(exc: ValidationError) -> str:
    lines = ["Invalid configuration:"]
    for err in exc.errors(include_url=False):
        field = ".".join(str(p) for p in err["loc"])
        var = f"{ENV_PREFIX}{field.upper()}" if field else "(settings)"
        shown = err.get("input")
        if field and "password" in field:
            shown = "**********"
        lines.append(f"  {var}: {err['msg']} (got {shown!r})")
    lines.append("Fix the variable(s) above; `segmenter --help` lists every setting.")
    return "\n".join(lines)


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc)) from None
    except PydanticSettingsError as exc:  # a list/dict setting that is not JSON
        raise SettingsError(
            f"Invalid configuration: {exc}. List settings are JSON, e.g. "
            f'{ENV_PREFIX}REEVALUATE_DAYS="[30, 60, 90]"'
        ) from None
