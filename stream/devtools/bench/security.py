"""The settings' security (SASL, TLS) for the bench's aiokafka clients and its bare
Faust agent, as the worker's librdkafka and Faust clients get it."""

from __future__ import annotations

from typing import Any

from stream.broker_access import ssl_context
from stream.settings import Settings


def aiokafka_security(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``AIOKafkaConsumer`` (empty for PLAINTEXT)."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    kwargs: dict[str, Any] = {"security_protocol": protocol}
    context = ssl_context(settings)
    if context is not None:
        kwargs["ssl_context"] = context
    if protocol.startswith("SASL_"):
        assert settings.kafka_sasl_password is not None  # settings validation ensures it
        kwargs |= {
            "sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": settings.kafka_sasl_password.get_secret_value(),
        }
    return kwargs
