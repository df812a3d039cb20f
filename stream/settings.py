"""Typed settings from the environment (prefix ``SEGMENTER_``), validated at start-up.

A wrong value fails here, before any connection is made, with one line per
problem that names the variable and says what it expects (see
:func:`load_settings`). No secret is ever part of that text: secret settings
(:data:`SECRET_FIELDS`) and URL credentials are never echoed.

Each secret can also come from a file (``SEGMENTER_<NAME>_FILE``, the Docker and
Kubernetes secrets convention): its content, less trailing newlines, is the value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson
from platformdirs import user_data_path, user_state_path
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

from model.segments import DEFAULT_REEVALUATE_DAYS
from stream.core.events import MIN_TIMESTAMP_MS, DecodeLimits, parse_instant
from stream.redaction import Redactor, read_secret_file, redact_urls, url_passwords
from stream.redaction import redact_url as redact
from stream.settings_errors import (
    ENV_PREFIX,
    HINT,
    SECRET_FIELDS,
    URL_FIELDS,
    SettingsError,
    SettingsProblems,
    _plain,
    describe_errors,
)
from stream.settings_limits import event_time_floor
from stream.settings_rules import more_problems

__all__ = [
    "ENV_PREFIX",
    "SECRET_FIELDS",
    "URL_FIELDS",
    "Settings",
    "SettingsError",
    "SettingsProblems",
    "describe_errors",
    "load_settings",
]

FILE_FIELDS = (
    "kafka_sasl_password",
    "redis_url",
    "redis_password",
    "pseudonymize_key",
    "erasure_key",
    "api_token",
)
MIN_API_TOKEN_LEN = 16


def _file_description(name: str) -> str:
    return (
        f"File whose content is {ENV_PREFIX}{name.upper()} (Docker/Kubernetes secret); "
        "set one or the other"
    )


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
    kafka_sasl_password_file: Path | None = Field(
        None, description=_file_description("kafka_sasl_password")
    )
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle for the brokers' TLS")
    kafka_ssl_certfile: Path | None = Field(None, description="Client certificate (mutual TLS)")
    kafka_ssl_keyfile: Path | None = None
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="redis:// or rediss:// (TLS)")
    redis_url_file: Path | None = Field(None, description=_file_description("redis_url"))
    redis_password: SecretStr | None = Field(None, description="Redis AUTH password")
    redis_password_file: Path | None = Field(None, description=_file_description("redis_password"))
    redis_ssl_ca_certs: Path | None = Field(None, description="CA bundle for rediss://")
    redis_prefix: str = Field("seg", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    redis_cluster: bool = Field(
        False,
        description="Redis Cluster: SEGMENTER_REDIS_URL names any node; users spread over "
        "the masters by hash tag",
    )
    redis_allow_eviction: bool = Field(
        False,
        description="start even if Redis may evict keys (maxmemory-policy other than "
        "noeviction), which silently drops users' state",
    )

    # --- topics
    topic_clickstream: str = "clickstream"
    topic_orders: str = "orders"
    topic_segments: str = "customer-segments"
    topic_dlq: str = "segmenter-dlq"
    topic_audiences: str = "customer-audiences"
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

    # --- consumer tuning (stream/worker/consumer.py; `segmenter bench` measures each)
    consumer_batching: bool = Field(
        True,
        description="Hand the agent whole fetches (stream/worker/consumer.py); "
        "false = stock Faust, one event per record",
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
    producer_linger_ms: float = Field(
        2.0,
        ge=0,
        le=1_000,
        description="How long the change producer waits to fill a request (latency)",
    )
    event_loop: Literal["asyncio", "uvloop"] = Field(
        "asyncio",
        description="Event loop of the worker (asyncio and uvloop measured alike: "
        "docs/performance.md)",
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
    state_cache_users: int = Field(
        10_000,
        ge=0,
        le=10_000_000,
        description="Users' records a worker keeps as it last committed them, so that "
        "Redis need not send one still at that revision (0 = none); each costs 2.5-10 KB "
        "of the worker's memory (docs/performance.md)",
    )

    # --- input guards
    max_event_bytes: int = Field(64 * 1024, ge=256)
    max_future_s: float = Field(86_400.0, ge=0)
    min_event_time: int = Field(
        MIN_TIMESTAMP_MS,
        description="Events before this are dead-lettered: YYYY-MM-DD (midnight UTC), ISO-8601 "
        "with a zone, or epoch ms, not before 1970-01-01. Lower it to replay older archives",
    )
    click_dedup_hours: float = Field(
        24.0,
        ge=0,
        le=24 * 30,
        description="Clicks re-sent with the same event_id within this many hours of the "
        "user's latest event time are dropped (orders are deduplicated by order id for as "
        "long as the user is kept); 0 = by offset only",
    )
    max_batch_failures: int = Field(
        5,
        ge=1,
        le=1000,
        description="Attempts a batch may fail the same way (not a Redis or broker outage) "
        "before its records are dead-lettered one by one and the worker goes on",
    )
    dlq_value_head_bytes: int = Field(
        1024,
        ge=0,
        le=64 * 1024,
        description="Bytes of an over-large record's value kept in the DLQ (with its size "
        "and SHA-256); smaller records are kept whole",
    )
    forget_denylist_days: float = Field(
        400.0,
        ge=0,
        description="How long an erased user's keyed digest blocks their events from coming "
        "back (a replay, a rebuild); at least SEGMENTER_RETENTION_DAYS and the input "
        "topics' retention",
    )
    retention_days: float = Field(
        400.0,
        gt=0,
        description="Forget users inactive this long in event time; also the lateness bound",
    )
    pseudonymize_key: SecretStr | None = Field(
        None, description="HMAC key: when set, user ids are pseudonymised on ingest"
    )
    pseudonymize_key_file: Path | None = Field(
        None, description=_file_description("pseudonymize_key")
    )
    erasure_key: SecretStr | None = Field(
        None, description="HMAC key of the erasure list (default: SEGMENTER_PSEUDONYMIZE_KEY)"
    )
    erasure_key_file: Path | None = Field(None, description=_file_description("erasure_key"))
    erasure_prefix: str = Field(
        "segmenter-erasure",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Redis prefix of the erasure list: keep it when rebuilding under a new "
        "SEGMENTER_REDIS_PREFIX",
    )

    # --- model and segments
    # Per-user directories (platformdirs), so a worker starts from any directory;
    # containers set both to a volume.
    model_dir: Path = Field(
        default_factory=lambda: user_data_path("segmenter") / "models",
        description="Model registry; seeded with the bundled bootstrap model when empty",
    )
    hysteresis_margin: float = Field(0.1, ge=0, le=1)
    hysteresis_floor: float = Field(0.2, ge=0, le=1)
    reevaluate_days: tuple[float, ...] = Field(
        DEFAULT_REEVALUATE_DAYS,
        description="Inactivity thresholds (event-time days) that trigger a re-score",
    )
    reevaluate_interval_s: float = Field(2.0, gt=0, description="How often the sweep runs")
    explain_top_k: int = Field(3, ge=0, le=18, description="Features explained per change")
    segment_topics: bool = Field(False, description="Also publish segments.<segment> events")
    segment_topic_template: str = Field("segments.{segment}", pattern=r"\{segment\}")
    playbook_path: Path | None = Field(None, description="YAML playbook (default: bundled)")
    audiences_path: Path | None = Field(
        None,
        description="YAML file of rule audiences (CEL conditions): checked at start, "
        "reloaded on change or SIGHUP; `segmenter audiences check FILE` checks one",
    )
    drift_window_rows: int = Field(
        10_000,
        ge=0,
        le=200_000,
        description="Rows scored on arriving events that input drift (PSI against the model's "
        "training distribution) is measured over, per worker; 0 turns drift metrics off. "
        "Memory: 8 bytes per feature and row",
    )

    # --- operations
    metrics_host: str = Field("127.0.0.1", description="Bind address; 0.0.0.0 in containers")
    metrics_port: int = Field(
        9108, ge=0, le=65535, description="/metrics, /healthz, /readyz; 0 turns them off"
    )
    api_token: SecretStr | None = Field(
        None,
        description="Bearer token the read API (/users, /segments) requires, at least "
        f"{MIN_API_TOKEN_LEN} printable ASCII characters; unset or empty = no token asked "
        "(a warning at start-up unless METRICS_HOST is loopback)",
    )
    api_token_file: Path | None = Field(None, description=_file_description("api_token"))
    api_rate_per_s: float = Field(
        50.0,
        ge=0,
        le=1_000_000,
        description="Read API requests per second per client address (token bucket); "
        "over it: 429 with Retry-After. 0 = no limit",
    )
    api_burst: int = Field(
        100,
        ge=0,
        le=1_000_000,
        description="Requests a client may make at once before the rate applies; 0 = no limit",
    )
    trusted_proxies: str = Field(
        "",
        description="Comma-separated proxy addresses or networks (CIDR) whose "
        "X-Forwarded-For the rate limit believes; empty = none (the socket peer counts)",
    )
    housekeeping_interval_s: float = Field(
        5.0, gt=0, le=300, description="Redis health, populations, lag, model check"
    )
    data_dir: Path = Field(
        default_factory=lambda: user_state_path("segmenter") / "faust",
        description="Faust's local state; created with its parents",
    )
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any) -> Any:
        """SEGMENTER_<NAME>_FILE -> SEGMENTER_<NAME>, before any field is validated.

        Here rather than in a settings source so that keyword overrides (tests,
        `segmenter bench`) get the same rules as the environment.
        """
        if not isinstance(data, dict):
            return data
        data = dict(data)
        problems: list[str] = []
        for name in FILE_FIELDS:
            var = f"{ENV_PREFIX}{name.upper()}"
            path = data.get(f"{name}_file")
            if path is None or str(path) == "":
                continue
            # An empty value counts as unset: compose files often write VAR=${VAR:-}.
            given = data.get(name)
            if given is not None and str(_plain(given)) != "":
                problems.append(f"{var} and {var}_FILE are both set: keep one of them")
                continue
            try:
                data[name] = read_secret_file(Path(path))
            except ValueError as exc:
                problems.append(f"{var}_FILE={path}: {exc}")
        if problems:
            raise SettingsProblems(problems)
        return data

    @field_validator("min_event_time", mode="before")
    @classmethod
    def _instant(cls, value: Any) -> Any:
        return parse_instant(value) if isinstance(value, str) and not value.isdigit() else value

    @field_validator("min_event_time")
    @classmethod
    def _after_epoch(cls, value: int) -> int:
        return event_time_floor(value)

    @field_validator("api_token", "erasure_key", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: Any) -> Any:
        # Kubernetes and compose files set a variable to "" to mean "not given".
        return None if _plain(value) == "" else value

    @field_validator("kafka_url")
    @classmethod
    def _kafka_url(cls, value: str) -> str:
        brokers = value.split(";")
        for part in brokers:
            url = part if "://" in part else f"kafka://{part}"
            parts = urlsplit(url)
            try:
                port = parts.port
            except ValueError:  # not a number, or out of range
                port = None
            if parts.scheme != "kafka" or not parts.hostname or port is None:
                which = f"{redact(url)!r} is not a broker address; " if len(brokers) > 1 else ""
                raise ValueError(f"{which}expected kafka://host:port (several separated by ';')")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
            raise ValueError("expected redis://host:port/db, rediss://… (TLS) or unix://path")
        return value

    @model_validator(mode="after")
    def _security(self) -> Settings:
        # Every problem at once, one line each: a deployer fixes them in one go.
        # No message quotes a secret's value: only its length or shape.
        problems: list[str] = []
        if self.kafka_security_protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            problems.append(
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
                problems.append(f"SEGMENTER_{name.upper()}={path} is not a readable file")
        if self.pseudonymize_key is not None and len(self.pseudonymize_key.get_secret_value()) < 16:
            problems.append(
                "SEGMENTER_PSEUDONYMIZE_KEY must be at least 16 characters (it has "
                f"{len(self.pseudonymize_key.get_secret_value())})"
            )
        if self.api_token is not None:
            token = self.api_token.get_secret_value()
            if len(token) < MIN_API_TOKEN_LEN or not re.fullmatch(r"[\x21-\x7e]+", token):
                # It travels in an HTTP header: visible ASCII, no spaces.
                problems.append(
                    f"SEGMENTER_API_TOKEN must be at least {MIN_API_TOKEN_LEN} printable ASCII "
                    f"characters without spaces (it has {len(token)} characters); e.g. "
                    "`openssl rand -hex 32`"
                )
        problems += more_problems(self)
        if problems:
            raise SettingsProblems(problems)
        return self

    @field_validator("drift_window_rows")
    @classmethod
    def _drift_window(cls, value: int) -> int:
        if 0 < value < 100:
            raise ValueError(
                "a drift window under 100 rows measures noise: use 100 or more, or 0 for off"
            )
        return value

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
            raise SettingsProblems(
                [f"SEGMENTER_TOPIC_* names must be distinct, got {', '.join(topics)}"]
            )
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # repr() and str() (an exception, a debug line) show URLs without their
        # credentials; SecretStr fields mask themselves.
        for name, value in super().__repr_args__():
            if name in URL_FIELDS and isinstance(value, str):
                value = redact_urls(value)
            yield name, value

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
        dumped = self.model_dump()
        for name, value in dumped.items():
            if value is None:
                continue
            if name in FILE_FIELDS and dumped.get(f"{name}_file") is not None:
                # The child reads the same file: the secret stays out of its
                # environment (/proc/<pid>/environ), and X with X_FILE is an error.
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if isinstance(value, list | tuple | dict):
                value = orjson.dumps(value).decode()  # complex settings are JSON in the environment
            env[f"{ENV_PREFIX}{name.upper()}"] = str(value)
        return env

    def decode_limits(self) -> DecodeLimits:
        """The input guards, the same for the worker and for training."""
        return DecodeLimits(
            max_bytes=self.max_event_bytes,
            max_future_ms=int(self.max_future_s * 1000),
            min_timestamp_ms=self.min_event_time,
        )

    def safe_summary(self) -> dict[str, object]:
        """What may be logged: secrets masked, URLs stripped of credentials."""
        out: dict[str, object] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                out[name] = "**********" if value.get_secret_value() else ""
            elif name.endswith("_url") and isinstance(value, str):
                out[name] = redact_urls(value)
            else:
                out[name] = str(value) if isinstance(value, Path) else value
        return out

    def secret_values(self) -> list[str]:
        """Every secret these settings hold, as text that might show up in a log line."""
        out = [
            secret.get_secret_value()
            for secret in (getattr(self, name) for name in sorted(SECRET_FIELDS))
            if secret is not None
        ]
        for name in sorted(URL_FIELDS):
            out += url_passwords(getattr(self, name))
        return [s for s in out if s]

    def redactor(self) -> Redactor:
        """Masks these settings' secrets and any URL credentials (logs, messages)."""
        return Redactor(self.secret_values())


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc)) from None
    except PydanticSettingsError as exc:  # a list/dict setting that is not JSON
        # Its text names the field and the source, never the value.
        found = re.search(r'field "(\w+)"', str(exc))
        var = f"{ENV_PREFIX}{found.group(1).upper()}" if found else "A list setting"
        raise SettingsError(
            f"Invalid configuration:\n  {var}: not valid JSON; list settings are JSON, e.g. "
            f'{ENV_PREFIX}REEVALUATE_DAYS="[30, 60, 90]"\n{HINT}'
        ) from None
