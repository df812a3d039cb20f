"""Secrets are never printed: settings errors, `segmenter` output and log lines.

Each secret setting is given a recognisable value; then something is wrong
(another setting, or the secret itself) and the text a person would see, from
the real settings loader and from the real CLI in a child process, is searched
for every secret. Also the ``*_FILE`` variants, and the log redaction filter.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.redaction import MASK, RedactingFilter, Redactor, install
from stream.settings import Settings, SettingsError, load_settings
from tests.conftest import REPO

# Recognisable, and each unlike the others, so that a leak names its source.
SASL = "sasl-pw-7Kq2Vx9Lm4"
REDIS_PW = "redis-pw-3Hn8Rt5Wc1"
PSEUDO = "pseudo-key-9Fb6Ys2Jd8Qa"
TOKEN = "api-token-5Mz1Xe7Gu3Pk"
REDIS_URL_PW = "url-pw-2Tc9Nq4Hv6"
KAFKA_URL_PW = "kafka-url-pw-8Wd3Lp5Sb"
ERASURE = "erasure-key-4Rv8Nb2Qx6"
SECRETS = (SASL, REDIS_PW, PSEUDO, TOKEN, REDIS_URL_PW, KAFKA_URL_PW, ERASURE)

SECRET_ENV = {
    "SEGMENTER_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "SEGMENTER_KAFKA_SASL_USERNAME": "svc",
    "SEGMENTER_KAFKA_SASL_PASSWORD": SASL,
    "SEGMENTER_REDIS_PASSWORD": REDIS_PW,
    "SEGMENTER_PSEUDONYMIZE_KEY": PSEUDO,
    "SEGMENTER_ERASURE_KEY": ERASURE,
    "SEGMENTER_API_TOKEN": TOKEN,
    "SEGMENTER_REDIS_URL": f"redis://app:{REDIS_URL_PW}@127.0.0.1:6379/0",
    "SEGMENTER_KAFKA_URL": f"kafka://svc:{KAFKA_URL_PW}@127.0.0.1:9092",
}

#: (what is wrong, the variable the error must name). Field errors, whole-model
#: errors (whose pydantic input is every setting) and a JSON parse error.
WRONG = [
    ({"SEGMENTER_BATCH_MAX": "lots"}, "SEGMENTER_BATCH_MAX"),
    ({"SEGMENTER_KAFKA_SASL_USERNAME": ""}, "SEGMENTER_KAFKA_SASL_USERNAME"),
    ({"SEGMENTER_STREAM_BUFFER_MAXSIZE": "10", "SEGMENTER_BATCH_MAX": "20"}, "BUFFER_MAXSIZE"),
    ({"SEGMENTER_REEVALUATE_DAYS": "[30,"}, "SEGMENTER_REEVALUATE_DAYS: not valid JSON"),
    ({"SEGMENTER_TOPIC_ORDERS": "clickstream"}, "SEGMENTER_TOPIC_"),
    # The secret settings themselves wrong.
    ({"SEGMENTER_PSEUDONYMIZE_KEY": "short-" + PSEUDO[:6]}, "SEGMENTER_PSEUDONYMIZE_KEY"),
    ({"SEGMENTER_ERASURE_KEY": ERASURE[:12]}, "SEGMENTER_ERASURE_KEY"),
    ({"SEGMENTER_API_TOKEN": TOKEN + " with spaces"}, "SEGMENTER_API_TOKEN"),
    ({"SEGMENTER_API_TOKEN": TOKEN[:10]}, "SEGMENTER_API_TOKEN"),
    ({"SEGMENTER_REDIS_URL": f"http://app:{REDIS_URL_PW}@h:6379/0"}, "SEGMENTER_REDIS_URL"),
    ({"SEGMENTER_KAFKA_URL": f"kafka://svc:{KAFKA_URL_PW}@h:port"}, "SEGMENTER_KAFKA_URL"),
    (
        {"SEGMENTER_KAFKA_URL": f"kafka://b0:9092;svc:{KAFKA_URL_PW}@b1"},
        "SEGMENTER_KAFKA_URL",
    ),
]
WRONG_IDS = [
    "field",
    "sasl-without-user",
    "buffer-vs-batch",
    "json",
    "topics",
    "short-key",
    "short-erasure-key",
    "token-spaces",
    "short-token",
    "redis-scheme",
    "kafka-port",
    "kafka-second",
]


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTER_")}


def segmenter(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The installed `segmenter` command, as a deployment runs it."""
    script = Path(sys.executable).with_name("segmenter")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "stream.cli"]
    return subprocess.run(
        [*argv, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )


def assert_no_secret(text: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"{leaked} printed in:\n{text}"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.startswith("SEGMENTER_"):
            monkeypatch.delenv(key)
    return monkeypatch


def test_all_secrets_set_and_valid_load(clean_env: pytest.MonkeyPatch) -> None:
    """The baseline the error cases change one thing of: valid as it stands."""
    for key, value in SECRET_ENV.items():
        clean_env.setenv(key, value)
    settings = load_settings()
    assert settings.api_token is not None and settings.api_token.get_secret_value() == TOKEN
    assert_no_secret(repr(settings) + str(settings.safe_summary()))
    assert set(settings.secret_values()) >= set(SECRETS)


@pytest.mark.parametrize(("wrong", "names"), WRONG, ids=WRONG_IDS)
def test_settings_errors_name_the_variable_and_no_secret(
    clean_env: pytest.MonkeyPatch, wrong: dict[str, str], names: str
) -> None:
    for key, value in (SECRET_ENV | wrong).items():
        clean_env.setenv(key, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    text = str(caught.value.code)
    assert_no_secret(text)
    assert names in text, text
    lines = text.splitlines()
    assert lines[0] == "Invalid configuration:"
    assert lines[-1] == "Fix the variable(s) above; `segmenter settings` lists every setting."
    # One line per problem, each naming a variable.
    assert all(line.startswith("  SEGMENTER_") for line in lines[1:-1]), lines


@pytest.mark.parametrize(("wrong", "names"), WRONG, ids=WRONG_IDS)
def test_the_worker_refuses_to_start_without_printing_a_secret(
    wrong: dict[str, str], names: str
) -> None:
    out = segmenter("worker", env=base_env() | SECRET_ENV | wrong)
    assert out.returncode != 0
    assert_no_secret(out.stdout + out.stderr)
    assert names in out.stderr and "Traceback" not in out.stderr


def test_every_problem_is_reported_at_once(clean_env: pytest.MonkeyPatch) -> None:
    for key, value in (
        SECRET_ENV
        | {"SEGMENTER_KAFKA_SASL_USERNAME": "", "SEGMENTER_PSEUDONYMIZE_KEY": "x" * 8}
        | {"SEGMENTER_API_TOKEN": "short"}
    ).items():
        clean_env.setenv(key, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    problems = str(caught.value.code).splitlines()[1:-1]
    assert len(problems) == 3, problems
    assert [p.split()[0].split("=")[0] for p in problems] == [
        "SEGMENTER_KAFKA_SECURITY_PROTOCOL",
        "SEGMENTER_PSEUDONYMIZE_KEY",
        "SEGMENTER_API_TOKEN",
    ]


def test_settings_command_masks_secrets_and_lists_file_variants(tmp_path: Path) -> None:
    key_file = tmp_path / "pseudo"
    key_file.write_text(PSEUDO + "\n")
    env = base_env() | SECRET_ENV
    del env["SEGMENTER_PSEUDONYMIZE_KEY"]
    env["SEGMENTER_PSEUDONYMIZE_KEY_FILE"] = str(key_file)
    out = segmenter("settings", env=env)
    assert out.returncode == 0, out.stderr
    assert_no_secret(out.stdout + out.stderr)
    for name in (
        "KAFKA_SASL_PASSWORD",
        "REDIS_PASSWORD",
        "PSEUDONYMIZE_KEY",
        "ERASURE_KEY",
        "API_TOKEN",
        "REDIS_URL",
    ):
        assert f"\nSEGMENTER_{name}_FILE=" in out.stdout, name
    assert f"SEGMENTER_PSEUDONYMIZE_KEY_FILE={key_file}" in out.stdout
    assert "SEGMENTER_PSEUDONYMIZE_KEY=**********" in out.stdout
    assert "SEGMENTER_API_TOKEN=**********" in out.stdout
    assert "SEGMENTER_ERASURE_KEY=**********" in out.stdout
    assert "SEGMENTER_REDIS_URL=redis://***@127.0.0.1:6379/0" in out.stdout


def test_settings_command_with_a_wrong_setting_still_lists_every_variable() -> None:
    """The error's hint sends people to `segmenter settings`: it must answer then too."""
    out = segmenter("settings", env=base_env() | SECRET_ENV | {"SEGMENTER_BATCH_MAX": "lots"})
    assert out.returncode != 0
    assert "SEGMENTER_BATCH_MAX" in out.stderr
    assert "SEGMENTER_API_RATE_PER_S=" in out.stdout and "SEGMENTER_API_TOKEN_FILE=" in out.stdout
    assert_no_secret(out.stdout + out.stderr)


# --- *_FILE variants


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("kafka_sasl_password", SASL),
        ("redis_password", REDIS_PW),
        ("pseudonymize_key", PSEUDO),
        ("erasure_key", ERASURE),
        ("api_token", TOKEN),
        ("redis_url", f"rediss://app:{REDIS_URL_PW}@redis.example:6380/2"),
    ],
)
def test_a_secret_file_gives_the_value_without_its_trailing_newline(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, name: str, value: str
) -> None:
    path = tmp_path / name
    path.write_text(value + "\n")
    clean_env.setenv(f"SEGMENTER_{name.upper()}_FILE", str(path))
    if name == "kafka_sasl_password":
        clean_env.setenv("SEGMENTER_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
        clean_env.setenv("SEGMENTER_KAFKA_SASL_USERNAME", "svc")
    settings = load_settings()
    got = getattr(settings, name)
    assert (got if isinstance(got, str) else got.get_secret_value()) == value
    # A child process (settings.to_env) gets the file, not the secret.
    env = settings.to_env()
    assert env[f"SEGMENTER_{name.upper()}_FILE"] == str(path)
    assert f"SEGMENTER_{name.upper()}" not in env
    assert value not in "".join(v for k, v in env.items() if k.startswith("SEGMENTER_"))
    for key in [k for k in os.environ if k.startswith("SEGMENTER_")]:
        clean_env.delenv(key)
    for key, each in env.items():
        if key.startswith("SEGMENTER_"):
            clean_env.setenv(key, each)
    assert load_settings() == settings


def test_setting_a_secret_and_its_file_is_an_error(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    clean_env.setenv("SEGMENTER_API_TOKEN", "another-token-0123456789")
    clean_env.setenv("SEGMENTER_API_TOKEN_FILE", str(path))
    with pytest.raises(SettingsError) as caught:
        load_settings()
    text = str(caught.value.code)
    assert "SEGMENTER_API_TOKEN and SEGMENTER_API_TOKEN_FILE are both set" in text
    assert TOKEN not in text and "another-token" not in text


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (None, "cannot be read"),
        (b"", "is empty"),
        (b"\n", "is empty"),
        (b"\xff\xfe", "is not UTF-8 text"),
    ],
    ids=["missing", "empty", "newline-only", "not-utf8"],
)
def test_an_unusable_secret_file_is_an_error_naming_the_path(
    tmp_path: Path, content: bytes | None, expect: str
) -> None:
    path = tmp_path / "redis-password"
    if content is not None:
        path.write_bytes(content)
    env = base_env() | SECRET_ENV
    del env["SEGMENTER_REDIS_PASSWORD"]
    env["SEGMENTER_REDIS_PASSWORD_FILE"] = str(path)
    out = segmenter("worker", env=env)
    assert out.returncode != 0
    assert f"SEGMENTER_REDIS_PASSWORD_FILE={path}: {expect}" in out.stderr, out.stderr
    assert_no_secret(out.stdout + out.stderr)


def test_a_wrong_secret_read_from_a_file_is_not_printed(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url_file = tmp_path / "redis-url"
    url_file.write_text(f"http://app:{REDIS_URL_PW}@redis:6379/0\n")
    key_file = tmp_path / "key"
    key_file.write_text("tooshort\n")
    clean_env.setenv("SEGMENTER_REDIS_URL_FILE", str(url_file))
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "SEGMENTER_REDIS_URL" in str(caught.value.code)
    assert_no_secret(str(caught.value.code))
    clean_env.delenv("SEGMENTER_REDIS_URL_FILE")
    clean_env.setenv("SEGMENTER_PSEUDONYMIZE_KEY_FILE", str(key_file))
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "SEGMENTER_PSEUDONYMIZE_KEY must be at least 16" in str(caught.value.code)
    assert "tooshort" not in str(caught.value.code)


def test_an_empty_api_token_means_none(clean_env: pytest.MonkeyPatch) -> None:
    """What a manifest without the value sets: no token, not a token of ""."""
    clean_env.setenv("SEGMENTER_API_TOKEN", "")
    assert load_settings().api_token is None


# --- the log filter


def _formatted(record_filter: logging.Filter, *args: object, exc: bool = False) -> str:
    """What a handler carrying ``record_filter`` writes for one record."""
    logger = logging.getLogger("test.secrets")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(record_filter)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        if exc:
            try:
                raise ConnectionError(f"AUTH failed with {args[-1]}")
            except ConnectionError:
                logger.exception(str(args[0]), *args[1:])
        else:
            logger.warning(str(args[0]), *args[1:])
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    return stream.getvalue().rstrip("\n")


def test_filter_masks_settings_secrets_and_url_credentials(clean_env: pytest.MonkeyPatch) -> None:
    for key, value in SECRET_ENV.items():
        clean_env.setenv(key, value)
    settings = load_settings()
    fltr = RedactingFilter(settings.redactor())
    text = _formatted(fltr, "connecting %s with %s and %r", settings.redis_url, REDIS_PW, SASL)
    assert_no_secret(text)
    assert "redis://***@127.0.0.1:6379/0" in text and MASK in text
    # Any URL, configured or not, loses its credentials.
    other = _formatted(fltr, "fetching https://bob:hunter2@example.com/x")
    assert other == "fetching https://***@example.com/x"
    # A traceback is cleaned too.
    text = _formatted(fltr, "failed for %s", TOKEN, exc=True)
    assert_no_secret(text)
    assert "ConnectionError" in text and "Traceback" in text


def test_install_puts_one_filter_on_every_root_handler() -> None:
    root = logging.Logger("fake-root")
    handlers = [logging.StreamHandler(), logging.NullHandler()]
    for h in handlers:
        root.addHandler(h)
    first = install(Redactor(["a-secret-value"]), root)
    second = install(Redactor(["another-secret"]), root)
    for h in handlers:
        ours = [f for f in h.filters if isinstance(f, RedactingFilter)]
        assert ours == [second] and first is not second


def test_setup_logging_of_the_cli_redacts() -> None:
    """`segmenter worker` (and retrain, forget) log through setup_logging: in a real process."""
    code = (
        "import logging\n"
        "from stream.cli import setup_logging\n"
        "from stream.settings import load_settings\n"
        "setup_logging('INFO', load_settings())\n"
        f"logging.getLogger('segmenter.x').warning('token=%s pw={REDIS_PW}', {TOKEN!r})\n"
        "logging.getLogger('aiokafka').error('dsn kafka://u:p4ss@b:9092')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=base_env() | SECRET_ENV,
        cwd=REPO,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "token=*** pw=***" in out.stderr
    assert "kafka://***@b:9092" in out.stderr and "p4ss" not in out.stderr
    assert_no_secret(out.stdout + out.stderr)


@given(secret=st.text(min_size=1, max_size=40), before=st.text(), after=st.text())
def test_redactor_never_leaks_a_secret(secret: str, before: str, after: str) -> None:
    redactor = Redactor([secret, "decoy-secret"])
    for text in (before + secret + after, secret * 3, before + secret + secret[:-1] + after):
        assert secret not in redactor(text)


_PASSWORD_CHARS = st.characters(
    blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc"), blacklist_characters="/?#"
)
_PLAIN_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters=":/@"), max_size=30
)


@given(
    user=st.from_regex(r"[A-Za-z0-9._-]{0,12}", fullmatch=True),
    password=st.text(_PASSWORD_CHARS, min_size=1, max_size=30),
    host=st.from_regex(r"[a-z0-9.-]{1,20}(:[0-9]{1,5})?", fullmatch=True),
    before=_PLAIN_TEXT,
    after=_PLAIN_TEXT,
)
def test_url_credentials_are_masked_whatever_the_password(
    user: str, password: str, host: str, before: str, after: str
) -> None:
    """Even an unescaped '@' or ':' in the password: the userinfo goes whole."""
    text = f"{before} redis://{user}:{password}@{host}/0 {after}"
    assert Redactor()(text) == f"{before} redis://***@{host}/0 {after}"


def test_a_secret_made_of_the_mask_withholds_the_line() -> None:
    redactor = Redactor(["**"])
    assert "**" not in redactor("x ** y")


def test_settings_repr_and_dump_keep_secrets_masked(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    token_file = tmp_path / "t"
    token_file.write_text(TOKEN)
    settings = Settings(api_token_file=token_file, pseudonymize_key=PSEUDO)
    assert_no_secret(repr(settings) + str(settings) + str(settings.model_dump()))
