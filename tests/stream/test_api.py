"""The read API (stream/worker/web/api.py) over real Redis state, and its OpenAPI contract.

Users are fed through the real BatchProcessor (as a worker does), then the
worker's HTTP app is served on a free port from a background thread with its
own event loop, and the tests talk to it over real HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import requests
import schemathesis
import yaml
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok

from model.features import FEATURE_NAMES
from model.registry import load_current
from stream.settings import Settings
from stream.sinks import ConfluentSink
from stream.worker.app import pipeline_config
from stream.worker.pipeline import BatchProcessor
from stream.worker.records import RawRecord
from stream.worker.state.store import StateStore, member_shard
from stream.worker.traits import ModelVersions
from stream.worker.web.api import OPENAPI_PATH, BadRequest, decode_cursor
from stream.worker.web.health import Health
from stream.worker.web.http import make_app
from tests.factories import DAY, T0, click, order

pytestmark = pytest.mark.integration

# Ids chosen to cross the URL: non-ASCII, an encoded '/', braces, a space, '%'.
USERS = ["ann", "bob", "cho", "dee", "eve", "zoë", "a/b", "{x}", "sp ace", "100%"]


def _events(user: str, n: int) -> list[dict[str, Any]]:
    """Different histories, so the users land in more than one segment."""
    out = [click(user, T0 + n * 1000, "page_view"), click(user, T0 + n * 1000 + 1, "add_to_cart")]
    for k in range(n % 4):
        out.append(order(user, T0 + (k + 1) * DAY + n, total=20.0 + 400.0 * (n % 3)))
    return out


def feed(settings: Settings, users: Sequence[str]) -> tuple[str, ...]:
    """Run the users' events through the real batch processor; the model's classes."""
    values = [v for i, u in enumerate(users) for v in _events(u, i)]
    model = load_current(settings.model_dir)

    async def run() -> None:
        store = StateStore.from_settings(settings)
        sink = ConfluentSink(settings.kafka_client_config())
        proc = BatchProcessor(store, sink, lambda: model, pipeline_config(settings))
        recs = [
            RawRecord(
                settings.topic_orders
                if v["event_type"].startswith("order")
                else settings.topic_clickstream,
                0,
                i,
                v["user_id"].encode(),
                orjson.dumps(v),
            )
            for i, v in enumerate(values)
        ]
        try:
            await proc.process(recs)
        finally:
            sink.close()
            await store.close()

    asyncio.run(run())
    return tuple(model.classes)


class Server:
    """The worker's HTTP app on 127.0.0.1:<free port>, on its own loop in a thread.

    A thread rather than the test's loop: schemathesis and requests are
    synchronous, and the Redis client must live on the loop that serves.
    """

    def __init__(
        self,
        settings: Settings,
        classes: Sequence[str],
        redis_url: str | None = None,
        health: Health | None = None,
        models: ModelVersions | None = None,
    ) -> None:
        self.settings = settings
        self.models = models
        self.classes = classes
        self.redis_url = redis_url
        self.health = health or Health()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._store: StateStore | None = None

    async def _start(self) -> None:
        if self.redis_url is None:
            self._store = StateStore.from_settings(self.settings)
        else:
            self._store = StateStore.from_url(self.redis_url, self.settings.redis_prefix)
        app = make_app(self.health, self._store, self.settings, self.classes, models=self.models)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._store is not None:
            await self._store.close()

    def __enter__(self) -> Server:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, **params: Any) -> requests.Response:
        return requests.get(self.url + path, params=params or None, timeout=10)


@pytest.fixture
def fed(settings_factory: Callable[..., Settings]) -> tuple[Settings, tuple[str, ...]]:
    settings = settings_factory()
    return settings, feed(settings, USERS)


@pytest.fixture
def server(fed: tuple[Settings, tuple[str, ...]]) -> Iterator[Server]:
    settings, classes = fed
    # A ready worker: the fuzz test asserts "no 5xx", and /readyz answers 503 otherwise.
    health = Health(kafka_ok=True, redis_ok=True, assigned=frozenset({"t:0"}), model_version="m")
    with Server(settings, classes, health=health) as srv:
        yield srv


def user_path(user_id: str) -> str:
    return "/users/" + quote(user_id, safe="")


def walk(server: Server, segment: str, limit: int) -> tuple[list[str], int]:
    """Every member of ``segment`` by following next_cursor; (members, pages)."""
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        resp = server.get(f"/segments/{segment}/users", **params)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["segment"] == segment and len(body["users"]) <= limit
        seen += body["users"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return seen, pages
        assert pages <= 100, "paging does not end"


def test_known_user_has_the_documented_fields(server: Server) -> None:
    resp = server.get(user_path("ann"))
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("application/json")
    data = resp.json()
    assert set(data) == {
        "user_id",
        "segment",
        "probabilities",
        "traits",
        "audiences",
        "version",
        "model_version",
        "scored_at",
        "stream_time",
        "features",
    }
    assert data["user_id"] == "ann"
    assert data["segment"] in server.classes and set(data["probabilities"]) == set(server.classes)
    assert abs(sum(data["probabilities"].values()) - 1) < 1e-3
    assert data["version"] >= 1 and data["model_version"]
    assert data["stream_time"].endswith("Z") and data["scored_at"].endswith("Z")
    # The bootstrap model has a value head: every trait is known (a next order
    # may be expected so far off that it is null: tests/stream/test_traits.py).
    traits = data["traits"]
    assert set(traits) == {
        "p_purchase_90d",
        "predicted_spend_90d",
        "p_active_90d",
        "expected_next_order_at",
    }
    assert 0 <= traits["p_purchase_90d"] <= 1 and 0 <= traits["p_active_90d"] <= 1
    assert traits["predicted_spend_90d"] >= 0
    next_order = traits["expected_next_order_at"]
    assert next_order is None or next_order > data["scored_at"]
    assert data["features"]["events"] == 2 and data["features"]["last_order_at"] is None
    # The same answer as `segmenter user --json`: both come from lookup.describe.
    assert data["features"]["first_seen_at"] == "2024-01-01T00:00:00Z"


@pytest.mark.parametrize("user_id", ["zoë", "a/b", "{x}", "sp ace", "100%"])
def test_ids_that_need_url_encoding_are_found(server: Server, user_id: str) -> None:
    resp = server.get(user_path(user_id))
    assert resp.status_code == 200, resp.text
    assert resp.json()["user_id"] == user_id


def test_unknown_user_is_404_json(server: Server) -> None:
    resp = server.get(user_path("nobody"))
    assert resp.status_code == 404
    assert resp.json() == {"error": "unknown user", "user_id": "nobody"}


@pytest.mark.parametrize(
    "path",
    [
        "/users/",
        "/users/" + "x" * 257,
        "/users/a%01b",
        "/users/a%0Ab",
        "/users/%7F",
        "/users/a%C2%85",
    ],
    ids=["empty", "too-long", "C0", "newline", "DEL", "C1"],
)
def test_invalid_user_id_is_400_json(server: Server, path: str) -> None:
    resp = server.get(path)
    assert resp.status_code == 400, resp.text
    assert set(resp.json()) == {"error"}


def test_256_character_id_is_valid(server: Server) -> None:
    assert server.get(user_path("é" * 256)).status_code == 404  # valid, just unknown


def test_paging_returns_every_member_once_and_counts_add_up(server: Server) -> None:
    counts = server.get("/segments").json()
    assert list(counts["segments"]) == list(server.classes)
    assert counts["stream_time"] is not None and counts["stream_time"].endswith("Z")
    assert sum(counts["segments"].values()) == len(USERS)
    everyone: list[str] = []
    populated = 0
    for segment, count in counts["segments"].items():
        members, pages = walk(server, segment, limit=1)
        assert len(members) == len(set(members)) == count, segment
        # limit=1 is one page per member; the last page already says null.
        assert pages == max(count, 1)
        assert members == sorted(members, key=lambda u: (member_shard(u), u.encode()))
        assert walk(server, segment, limit=1000)[0] == members
        everyone += members
        populated += count > 0
    assert sorted(everyone) == sorted(USERS)
    assert populated >= 2, "the fixture should spread users over several segments"


def test_default_page_and_cursor_round_trip(server: Server) -> None:
    counts = server.get("/segments").json()["segments"]
    segment = max(counts, key=lambda s: counts[s])
    page = server.get(f"/segments/{segment}/users").json()
    assert len(page["users"]) == counts[segment] and page["next_cursor"] is None
    first = server.get(f"/segments/{segment}/users", limit=1).json()
    if counts[segment] > 1:
        cursor = first["next_cursor"]
        assert (
            base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
            == (first["users"][0])
        )


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "-1"},
        {"limit": "ten"},
        {"limit": "1.5"},
        {"limit": "+5"},
        {"limit": ""},
        {"cursor": "!!!"},
        {"cursor": "a"},  # 4n+1 characters: not base64 at all
        {"cursor": "_w"},  # base64url of b"\xff": not UTF-8
        {"cursor": "YW5u=="},  # padding is never part of our cursors
        {"cursor": ""},
    ],
)
def test_bad_limit_or_cursor_is_400_json(server: Server, params: dict[str, str]) -> None:
    resp = server.get(f"/segments/{server.classes[0]}/users", **params)
    assert resp.status_code == 400, resp.text
    assert set(resp.json()) == {"error"}


def test_repeated_limit_is_400(server: Server) -> None:
    resp = requests.get(
        f"{server.url}/segments/{server.classes[0]}/users?limit=1&limit=2", timeout=10
    )
    assert resp.status_code == 400


def test_unknown_segment_is_404_and_a_bad_name_400(server: Server) -> None:
    resp = server.get("/segments/vip/users")
    assert resp.status_code == 404
    assert resp.json() == {"error": "unknown segment", "segment": "vip"}
    assert server.get("/segments/no%20spaces/users").status_code == 400
    assert server.get("/segments/a%2Fb/users").status_code == 400
    assert server.get("/segments/a%0Ab/users").status_code == 400


def test_pseudonymised_deployment_takes_the_raw_id(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(pseudonymize_key="k" * 32)
    classes = feed(settings, ["ann"])
    with Server(settings, classes) as srv:
        resp = srv.get("/users/ann")
        assert resp.status_code == 200 and resp.json()["user_id"] == "ann"
        segment = resp.json()["segment"]
        members = srv.get(f"/segments/{segment}/users").json()["users"]
        # Raw ids never reach Redis: the member list holds the pseudonym only.
        assert len(members) == 1 and members[0].startswith("p_") and "ann" not in members


def test_redis_down_is_503_json_never_500(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory()
    # Port 1 on loopback: nothing listens, so every Redis call fails fast.
    with Server(settings, ("high_value", "regular"), redis_url="redis://127.0.0.1:1/0") as srv:
        for path, params in [
            ("/users/{user_id}", {"user_id": "ann"}),
            ("/segments", {}),
            ("/segments/{segment}/users", {"segment": "regular"}),
        ]:
            resp = conforms(srv, path, params)
            assert resp.status_code == 503, (path, resp.text)
            assert resp.json() == {"error": "state store unavailable"}
            assert resp.headers["retry-after"] == ["1"]
        # Not ready (Redis and the rest are down): 503, with a body the document describes.
        assert conforms(srv, "/readyz").status_code == 503
        # Answered without Redis: liveness and the contract.
        assert conforms(srv, "/healthz").status_code == 200
        assert srv.get("/openapi.json").status_code == 200


def conforms(
    srv: Server,
    path: str,
    path_parameters: dict[str, str] | None = None,
    query: dict[str, Any] | None = None,
) -> Any:
    """GET ``path`` and check the answer against the document, whatever its status."""
    case = schema[path]["GET"].Case(path_parameters=path_parameters or {}, query=query or {})
    resp = case.call(base_url=srv.url, timeout=10)
    case.validate_response(
        resp,
        checks=[
            status_code_conformance,
            content_type_conformance,
            response_headers_conformance,
            response_schema_conformance,
        ],
    )
    return resp


def test_real_answers_conform_to_the_document(server: Server) -> None:
    """The fuzzer rarely guesses a stored id; these 200s go through the same validator."""
    for user_id in USERS:
        resp = conforms(server, "/users/{user_id}", {"user_id": user_id})
        assert resp.status_code == 200 and resp.json()["user_id"] == user_id
    counts = conforms(server, "/segments").json()["segments"]
    segment = max(counts, key=lambda s: counts[s])
    assert counts[segment] >= 2
    first = conforms(server, "/segments/{segment}/users", {"segment": segment}, {"limit": 1})
    assert first.json()["next_cursor"] is not None
    query = {"limit": 1000, "cursor": first.json()["next_cursor"]}
    rest = conforms(server, "/segments/{segment}/users", {"segment": segment}, query)
    assert rest.status_code == 200 and rest.json()["next_cursor"] is None
    assert conforms(server, "/readyz").status_code == 200


def test_openapi_yaml_and_json_are_the_same_document(server: Server) -> None:
    as_yaml = server.get("/openapi.yaml")
    as_json = server.get("/openapi.json")
    assert as_yaml.status_code == as_json.status_code == 200
    on_disk = yaml.safe_load(OPENAPI_PATH.read_text())
    assert yaml.safe_load(as_yaml.text) == as_json.json() == on_disk


def test_openapi_lists_every_model_feature() -> None:
    """The document names each feature: adding one to the model must update the contract."""
    doc = yaml.safe_load(OPENAPI_PATH.read_text())
    features = doc["components"]["schemas"]["Features"]
    documented = {k.removeprefix("model.") for k in features["required"] if k.startswith("model.")}
    assert documented == set(FEATURE_NAMES)
    assert set(features["required"]) == set(features["properties"])


# --- the contract, fuzzed: schemathesis against the running server

#: Every operation the document declares. Checked, so that a broken or empty
#: document cannot make the fuzz test pass by generating nothing.
OPERATIONS = {
    "GET /users/{user_id}",
    "GET /segments",
    "GET /segments/{segment}/users",
    "GET /audiences/{audience}/users",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /openapi.yaml",
    "GET /openapi.json",
}

# Loaded from the file at collection time, as schemathesis' pytest plugin needs:
# its lazy from_fixture() loader breaks on pytest 9 (Node._nodeid is gone).
# The file is what the server serves: test_openapi_yaml_and_json_are_the_same_document.
schema = schemathesis.openapi.from_path(OPENAPI_PATH)


def test_the_fuzzed_document_declares_every_operation() -> None:
    results = list(schema.get_all_operations())
    assert all(isinstance(result, Ok) for result in results), results
    assert {result.ok().label for result in results if isinstance(result, Ok)} == OPERATIONS


@pytest.fixture
def cases() -> Iterator[list[Any]]:
    """The cases one fuzz test ran; none at all fails the test at teardown."""
    seen: list[Any] = []
    yield seen
    assert seen, "schemathesis generated no cases for this operation"


#: aiohttp's default limit on the request line (and on each header line).
MAX_REQUEST_LINE = 8190


def _forged_cursor(case: Any) -> bool:
    """A cursor of the documented shape that no page could have produced (not UTF-8)."""
    cursor = (case.query or {}).get("cursor")
    if not isinstance(cursor, str):
        return False
    try:
        decode_cursor(cursor)
    except BadRequest:
        return True
    return False


@schema.parametrize()
# One server per operation, shared by its examples: that is the point of the
# function-scoped fixtures here, so hypothesis need not warn about them.
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_api_conforms_to_its_openapi_document(case: Any, server: Server, cases: list[Any]) -> None:
    cases.append(case)
    # A regex cannot say "base64url of UTF-8", so schemathesis may build a cursor
    # that fits the pattern yet decodes to invalid UTF-8. The document says such
    # a cursor gets 400; only for it is "valid data is accepted" not expected.
    excluded = [positive_data_acceptance] if _forged_cursor(case) else []
    response = case.call(base_url=server.url, timeout=10)
    if len(response.request.url) - len(server.url) > MAX_REQUEST_LINE:
        # Only invalid input gets this long (a valid URL stays under 5 KiB); aiohttp's
        # HTTP parser refuses it, before any handler, with a plain-text 400.
        assert response.status_code == 400
        return
    case.validate_response(response, excluded_checks=excluded)
