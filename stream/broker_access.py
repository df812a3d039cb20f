"""Can these settings talk to the broker? One metadata request, before anything else.

A wrong SASL password or a broker certificate the CA file does not trust is not
a transient fault: librdkafka would retry it for ever, logging a line every few
hundred milliseconds. So every command that connects asks once, with the
settings' own client configuration and librdkafka's log silenced, and turns the
first such error into one line that names the setting to fix (never a secret's
value), as a :class:`~stream.settings_errors.SettingsError` (exit code 1).

Called by :func:`stream.topics.ensure_topics` (the worker, retrain, produce,
bench, demo) and by the CLI's ``require_broker`` (export).
"""

from __future__ import annotations

import logging
import ssl
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from stream.settings import Settings
from stream.settings_errors import SettingsError


class _DebugOnly(logging.Logger):
    """librdkafka's log lines for the check, all at DEBUG: the error callback says
    what matters, once, instead of a line every few hundred milliseconds."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        super().log(logging.DEBUG, msg, *args, **kwargs)


_librdkafka = _DebugOnly("segmenter.broker_access.librdkafka")
_librdkafka.parent = logging.getLogger("segmenter")


class BrokerAccessError(SettingsError):
    """The broker refused these settings' credentials or TLS: one line, what to fix."""


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context aiokafka clients (Faust's, the bench's) use, from the same
    settings librdkafka reads: None unless the protocol is SSL or SASL_SSL."""
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    context = ssl.create_default_context(
        cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
    )
    if settings.kafka_ssl_certfile:
        context.load_cert_chain(
            str(settings.kafka_ssl_certfile),
            str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
        )
    return context


def _refusal(settings: Settings, err: KafkaError) -> str | None:
    """The line for an error no retry will cure, or None for one that may pass."""
    text = err.str()
    where = f"the Kafka broker at {settings.bootstrap_servers}"
    proto = f"SEGMENTER_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol}"
    if err.code() == KafkaError._AUTHENTICATION or "SASL authentication" in text:
        return (
            f"{where} refused the SASL login of SEGMENTER_KAFKA_SASL_USERNAME="
            f"{settings.kafka_sasl_username} (SEGMENTER_KAFKA_SASL_MECHANISM="
            f"{settings.kafka_sasl_mechanism}): check SEGMENTER_KAFKA_SASL_PASSWORD "
            "(or SEGMENTER_KAFKA_SASL_PASSWORD_FILE)"
        )
    if "certificate verify failed" in text:
        cafile = settings.kafka_ssl_cafile or "unset, so the system's CAs"
        return (
            f"{where} presented a TLS certificate that SEGMENTER_KAFKA_SSL_CAFILE "
            f"({cafile}) does not trust: point it at the CA that signed the broker's certificate"
        )
    if err.code() == KafkaError._SSL or "SSL handshake failed" in text:
        return f"TLS with {where} failed ({text}): check {proto} and SEGMENTER_KAFKA_SSL_*"
    return None


def check_broker_access(settings: Settings, timeout_s: float = 15.0) -> AdminClient:
    """Ask the broker for its metadata; return the admin client that got it.

    Raises :class:`BrokerAccessError` as soon as an authentication or TLS error
    comes back, or once ``timeout_s`` passes without an answer.
    """
    errors: list[KafkaError] = []
    config: dict[str, Any] = settings.kafka_client_config() | {
        "error_cb": errors.append,
        "logger": _librdkafka,
    }
    admin = AdminClient(config)
    redact = settings.redactor()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
            return admin
        except KafkaException as exc:
            errors.append(exc.args[0])
        admin.poll(0)  # serves the error callback
        for err in errors:
            line = _refusal(settings, err)
            if line is not None:
                raise BrokerAccessError(redact(line))
        if time.monotonic() >= deadline:
            last = errors[-1].str() if errors else "no answer"
            raise BrokerAccessError(
                redact(
                    f"no answer from the Kafka broker at {settings.bootstrap_servers} within "
                    f"{timeout_s:.0f} s ({last}): check SEGMENTER_KAFKA_URL and "
                    f"SEGMENTER_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol}"
                )
            )
        errors.clear()
