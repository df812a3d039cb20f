"""The read API's guards over real Redis state: bearer token, rate limit, access log.

Served as in tests/stream/test_api.py (the worker's real aiohttp app, real
HTTP, state fed through the real batch processor); the rate limiter's bounds
are also checked alone, on a fake clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator

import orjson
import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from stream.core.events import Reason, Rejected, decode
from stream.devtools.embedded import free_port
from stream.settings import Settings
from stream.worker.faults.dead_letters import dlq_headers
from stream.worker.records import RawRecord
from stream.worker.state.store import StateStore
from stream.worker.web.api import RateLimiter
from stream.worker.web.health import Health
from stream.worker.web.http import is_loopback, serve
from tests.conftest import WorkerProcess
from tests.factories import DAY, T0, click
from tests.stream.test_api import Server, feed, user_path

TOKEN = "tok-4Gh8Jk2Lm6Np0Qr5"
NOW = T0 + DAY
USERS = ["ann", "zoë-7731", "secret-user-4242"]
READY = Health(kafka_ok=True, redis_ok=True, assigned=frozenset({"t:0"}), model_version="m")


def get(srv: Server, path: str, token: str | None = None, **headers: str) -> requests.Response:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.get(srv.url + path, headers=headers, timeout=10)


@pytest.fixture
def guarded(settings_factory: Callable[..., Settings]) -> Iterator[Server]:
    """A token-protected API with the rate limit off (its own tests turn it on)."""
    settings = settings_factory(api_token=TOKEN, api_rate_per_s=0)
    classes = feed(settings, USERS)
    with Server(settings, classes, health=READY) as srv:
        yield srv


PROTECTED = ["/users/ann", "/segments", "/segments/regular/users", "/users/", "/nothing-here"]


@pytest.mark.integration
@pytest.mark.parametrize("path", PROTECTED)
def test_without_a_token_the_api_answers_401(guarded: Server, path: str) -> None:
    resp = get(guarded, path)
    assert resp.status_code == 401, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.json() == {"error": "bearer token required"}
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.integration
@pytest.mark.parametrize(
    "authorization",
    [
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Bearer {TOKEN.upper()}",
        "Bearer " + "é" * 16,
        f"Basic {TOKEN}",
        "Bearer",
        TOKEN,
    ],
)
def test_a_wrong_token_is_401(guarded: Server, authorization: str) -> None:
    resp = requests.get(
        guarded.url + "/users/ann",
        headers={"Authorization": authorization.encode()},  # type: ignore[dict-item]
        timeout=10,
    )
    assert resp.status_code == 401, resp.text
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert set(resp.json()) == {"error"}


@pytest.mark.integration
def test_with_the_token_the_api_answers(guarded: Server) -> None:
    resp = get(guarded, user_path("zoë-7731"), TOKEN)
    assert resp.status_code == 200 and resp.json()["user_id"] == "zoë-7731"
    assert get(guarded, user_path("nobody"), TOKEN).status_code == 404
    counts = get(guarded, "/segments", TOKEN).json()["segments"]
    assert sum(counts.values()) == len(USERS)
    segment = max(counts, key=lambda s: counts[s])
    members = get(guarded, f"/segments/{segment}/users", TOKEN)
    assert members.status_code == 200 and members.json()["users"]
    # The scheme is case-insensitive (RFC 7235).
    assert get(guarded, "/segments", Authorization=f"bearer {TOKEN}").status_code == 200


@pytest.mark.integration
@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/openapi.json"])
def test_probes_metrics_and_the_contract_stay_open(guarded: Server, path: str) -> None:
    assert get(guarded, path).status_code == 200


@pytest.mark.integration
def test_ids_are_compared_as_utf8_bytes_never_patched_up(guarded: Server) -> None:
    # Not UTF-8: refused, not looked up as the text "%FF".
    resp = get(guarded, "/users/%FF", TOKEN)
    assert resp.status_code == 400 and "UTF-8" in resp.json()["error"]
    assert get(guarded, "/users/a%ED%A0%80", TOKEN).status_code == 400  # a lone surrogate
    # The id "%FF" itself is a different, valid (unknown) id.
    resp = get(guarded, "/users/%25FF", TOKEN)
    assert resp.status_code == 404 and resp.json()["user_id"] == "%FF"


@pytest.mark.integration
def test_past_the_burst_a_client_gets_429_and_probes_still_answer(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(api_token=TOKEN, api_rate_per_s=0.5, api_burst=5)
    classes = feed(settings, ["ann"])
    with Server(settings, classes, health=READY) as srv:
        codes = [get(srv, "/users/ann", TOKEN).status_code for _ in range(5)]
        assert codes == [200] * 5
        over = get(srv, "/users/ann", TOKEN)
        assert over.status_code == 429
        assert over.json() == {"error": "too many requests"}
        assert 1 <= int(over.headers["Retry-After"]) <= 2
        # Limited before the token is checked: guessing tokens is limited too.
        assert get(srv, "/segments", "a-wrong-token-guess").status_code == 429
        for path in ("/healthz", "/readyz", "/metrics"):
            assert get(srv, path).status_code == 200, path


@pytest.mark.integration
def test_access_log_has_route_templates_and_no_user_ids(
    guarded: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="segmenter.access")
    assert get(guarded, user_path("secret-user-4242"), TOKEN).status_code == 200
    assert get(guarded, user_path("unknown-user-9999"), TOKEN).status_code == 404
    assert get(guarded, user_path("secret-user-4242")).status_code == 401
    counts = get(guarded, "/segments", TOKEN).json()["segments"]
    segment = max(counts, key=lambda s: counts[s])
    first = get(guarded, f"/segments/{segment}/users?limit=1", TOKEN).json()
    cursor = first["next_cursor"]
    if cursor is not None:  # a cursor encodes a user id: the query is never logged
        get(guarded, f"/segments/{segment}/users?limit=1&cursor={cursor}", TOKEN)
    get(guarded, "/healthz")
    lines = [r.getMessage() for r in caplog.records if r.name == "segmenter.access"]
    text = "\n".join(lines)
    for user in [*USERS, "unknown-user-9999", "secret-user-4242"]:
        assert user not in text
    assert cursor is None or cursor not in text
    assert "method=GET route=/users/{user_id} status=200" in text
    assert "method=GET route=/users/{user_id} status=404" in text
    assert "method=GET route=/users/{user_id} status=401" in text
    assert "route=/segments/{segment}/users status=200" in text
    assert "route=/healthz status=200" in text
    for line in lines:
        assert "duration_ms=" in line and "client=127.0.0.1" in line
    probe = [r for r in caplog.records if "route=/healthz" in r.getMessage()]
    assert probe and all(r.levelno == logging.DEBUG for r in probe)


@pytest.mark.integration
def test_start_up_warns_when_the_api_is_open_beyond_loopback(
    settings_factory: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    open_settings = settings_factory()
    closed = open_settings.model_copy(update={"api_token": SecretStr(TOKEN)})

    async def start(settings: Settings, host: str) -> list[str]:
        caplog.clear()
        store = StateStore.from_settings(settings)
        runner = await serve(Health(), host, 0, store, settings)
        await runner.cleanup()
        await store.close()
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    caplog.set_level(logging.WARNING, logger="segmenter.http")
    warned = asyncio.run(start(open_settings, "0.0.0.0"))
    assert any("SEGMENTER_API_TOKEN" in m for m in warned), warned
    assert not asyncio.run(start(open_settings, "127.0.0.1"))
    assert not asyncio.run(start(closed, "0.0.0.0"))


@pytest.mark.integration
def test_a_real_worker_asks_for_the_token_logs_access_and_redacts_after_faust_starts(
    settings_factory: Callable[..., Settings],
    worker_factory: Callable[[Settings], WorkerProcess],
) -> None:
    """`segmenter worker` end to end. The pseudonymisation key is made equal to
    the clickstream topic's name, so that every log line naming that topic must
    come out masked: "partitions assigned" is logged after Faust (mode) has
    replaced the root log handlers, so it proves the filter was put back."""
    probe = settings_factory()
    port = free_port()
    settings = settings_factory(
        api_token=TOKEN, pseudonymize_key=probe.topic_clickstream, metrics_port=port
    )
    worker = worker_factory(settings)
    worker.wait_ready()
    # Partitions can be assigned before the HTTP task has bound its port.
    deadline = time.monotonic() + 30
    while "the read API" not in worker.log():
        assert time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.1)

    def status(path: str, token: str | None = None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        url = f"http://127.0.0.1:{port}{path}"
        return requests.get(url, headers=headers, timeout=10).status_code

    assert status("/users/secret-user-4242") == 401
    assert status("/users/secret-user-4242", TOKEN) == 404
    assert status("/segments", TOKEN) == 200
    assert status("/healthz") == 200
    assert worker.stop() == 0
    log = worker.log()
    assert "partitions assigned: ***:0" in log, log[-3000:]
    assert probe.topic_clickstream not in log and TOKEN not in log
    assert "route=/users/{user_id} status=401" in log and "status=404" in log
    assert "secret-user-4242" not in log
    assert "read API (bearer token required)" in log


def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("10.1.2.3")
    assert not is_loopback("worker.example")


# --- the rate limiter alone


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)
    assert limiter.take("b") == 0.0  # per client
    clock.now += 0.5
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0


def test_idle_clients_are_forgotten_and_the_table_is_capped() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=10.0, burst=10, max_clients=100, clock=clock)
    for i in range(50):
        limiter.take(f"10.0.0.{i}")
    assert len(limiter) == 50
    clock.now += 1.0  # everyone's bucket is full again: as good as no bucket
    limiter.take("10.0.1.1")
    assert len(limiter) == 1
    for i in range(1000):  # a flood of addresses, none idle long enough
        limiter.take(f"10.1.{i // 256}.{i % 256}")
    assert len(limiter) == 100


@given(
    steps=st.lists(st.tuples(st.integers(0, 20), st.floats(0, 0.3, allow_nan=False)), max_size=300),
    rate=st.floats(0.5, 50, allow_nan=False),
    burst=st.integers(1, 20),
)
def test_a_client_never_gets_more_than_burst_plus_rate(
    steps: list[tuple[int, float]], rate: float, burst: int
) -> None:
    clock, small_clock = Clock(), Clock()
    # A table that never forgets (a forgotten client starts over with a full
    # bucket, by design), and a small one, which must stay within its cap.
    limiter = RateLimiter(rate=rate, burst=burst, max_clients=10**6, clock=clock)
    small = RateLimiter(rate=rate, burst=burst, max_clients=8, clock=small_clock)
    allowed: dict[int, int] = {}
    for client, dt in steps:
        clock.now += dt
        small_clock.now += dt
        if limiter.take(f"c{client}") == 0.0:
            allowed[client] = allowed.get(client, 0) + 1
        small.take(f"c{client}")
        assert len(small) <= 8
    elapsed = clock.now - 1000.0
    for n in allowed.values():
        assert n <= burst + rate * elapsed + 1e-6


# --- raw ids stay out of logs and DLQ headers


def test_key_mismatch_detail_carries_neither_key_nor_user_id() -> None:
    value = click("secret-user-4242", NOW - 1000)
    result = decode("clickstream", b"other-user-7777", orjson.dumps(value), now_ms=NOW)
    assert isinstance(result, Rejected) and result.reason is Reason.KEY_MISMATCH
    assert "secret-user-4242" not in result.detail and "other-user-7777" not in result.detail
    record = RawRecord("clickstream", 0, 5, b"other-user-7777", orjson.dumps(value))
    headers = dict(dlq_headers(record, result))
    assert b"4242" not in headers["x-dlq-detail"] and b"7777" not in headers["x-dlq-detail"]


def test_a_key_that_is_not_utf8_never_matches_a_replacement_character() -> None:
    value = orjson.dumps(click("\ufffd", NOW - 1000))
    result = decode("clickstream", b"\xff", value, now_ms=NOW)
    assert isinstance(result, Rejected) and result.reason is Reason.KEY_MISMATCH
    assert not isinstance(decode("clickstream", "\ufffd".encode(), value, now_ms=NOW), Rejected)


@pytest.mark.integration
def test_x_forwarded_for_counts_only_from_trusted_proxies(
    settings_factory: Callable[..., Settings],
) -> None:
    limited = {"api_rate_per_s": 0.01, "api_burst": 2}
    behind = settings_factory(**limited, trusted_proxies="10.0.0.0/8, 127.0.0.1")
    classes = feed(behind, ["ann"])

    def hit(srv: Server, forwarded: str) -> int:
        return get(srv, "/users/ann", **{"X-Forwarded-For": forwarded}).status_code

    with Server(behind, classes, health=READY) as srv:
        assert [hit(srv, "203.0.113.5") for _ in range(3)] == [200, 200, 429]
        assert hit(srv, "203.0.113.6") == 200  # another client behind the same ingress
        # Hops left of the nearest untrusted one are the client's own to forge.
        assert hit(srv, "198.51.100.9, 203.0.113.5") == 429
        assert hit(srv, "203.0.113.7, 10.1.2.3") == 200  # through two proxies

    # The peer is not a listed proxy: its X-Forwarded-For is not believed.
    direct = settings_factory(**limited, trusted_proxies="10.0.0.0/8")
    with Server(direct, classes, health=READY) as srv:
        assert [hit(srv, f"203.0.113.{i}") for i in range(3)] == [200, 200, 429]
