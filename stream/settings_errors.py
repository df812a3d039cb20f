"""What a wrong setting says: one line per problem, each naming the variable, no secret.

Kept apart from the settings themselves so that the rules for showing values
(never a secret, URLs without credentials) read in one place.
"""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr, ValidationError

from stream.redaction import Redactor, redact_urls, url_passwords

ENV_PREFIX = "SEGMENTER_"
#: Settings whose values are secrets: never shown in errors, logs or `segmenter settings`.
SECRET_FIELDS = frozenset(
    {"kafka_sasl_password", "redis_password", "pseudonymize_key", "erasure_key", "api_token"}
)
#: Settings that may carry credentials in their userinfo (scheme://user:pass@host).
URL_FIELDS = frozenset({"kafka_url", "redis_url"})
#: Settings that may be given as a file instead (SEGMENTER_<NAME>_FILE).


class SettingsProblems(ValueError):
    """Several problems found by one validator, each a line naming its variable.

    Raised from model validators, whose errors pydantic reports against the
    whole input (every setting, secrets included): :func:`describe_errors`
    prints these lines and never that input.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _plain(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


class SettingsError(SystemExit):
    """Raised (as a clean exit) when the environment holds a wrong setting."""


HINT = "Fix the variable(s) above; `segmenter settings` lists every setting."


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _shown(field: str, value: Any) -> str:
    """' (got ...)' for a wrong value that may be shown; nothing for a secret."""
    if field in SECRET_FIELDS or isinstance(value, dict | SecretStr):
        return ""
    if field in URL_FIELDS and isinstance(value, str):
        value = redact_urls(value)
    text = repr(value)
    return f" (got {text[:77] + '...' if len(text) > 80 else text})"


def _secrets_in(exc: ValidationError) -> list[str]:
    """Secret values a validation error carries (as inputs), to mask from its text.

    A safety net under the rules of :func:`describe_errors`: a validator's own
    message could quote a value it should not have.
    """
    found: list[str] = []
    for err in exc.errors(include_url=False):
        value = err.get("input")
        pairs: list[tuple[Any, Any]] = []
        if isinstance(value, dict):
            pairs = list(value.items())
        elif err["loc"]:
            pairs = [(err["loc"][0], value)]
        for name, each in pairs:
            plain = _plain(each)
            if name in SECRET_FIELDS and isinstance(plain, str):
                found.append(plain)
            elif name in URL_FIELDS:
                found += url_passwords(plain)
    return found


def describe_errors(exc: ValidationError) -> str:
    """One line per problem, each naming the variable to fix; no secret in any of them."""
    lines = ["Invalid configuration:"]
    for err in exc.errors(include_url=False):
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, SettingsProblems):
            lines += [f"  {_one_line(p)}" for p in cause.problems]
            continue
        msg = _one_line(str(err["msg"]).removeprefix("Value error, "))
        loc = err["loc"]
        if not loc:
            # A whole-model error: its input is every setting, secrets included.
            lines.append(f"  {msg}")
            continue
        field = str(loc[0])
        var = f"{ENV_PREFIX}{field.upper()}" + "".join(f"[{p}]" for p in loc[1:])
        lines.append(f"  {var}: {msg}{_shown(field, err.get('input'))}")
    lines.append(HINT)
    redactor = Redactor(_secrets_in(exc))
    return "\n".join(redactor(line) for line in lines)
