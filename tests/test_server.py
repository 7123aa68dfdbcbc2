"""The feature server's app in-process (FastAPI's TestClient) over a materialized example repo on a real Redis.

Feast's wire format, equality with the SDK, every error status, API keys, limits, the registry listing,
metrics and the OpenAPI document. tests/test_server_process.py runs the real uvicorn process.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from feature_store import FeatureStore
from feature_store.config import ApiKeyConfig, RedisOnlineConfig
from feature_store.server import ServerSettings, create_app
from tests.server_fixtures import (
    FEATURES_10,
    ROOT,
    SERVER_REDIS_DB,
    at,
    delete_keys,
    free_port,
    make_repo,
    sdk_columns,
    server_columns,
    unique_prefix,
    with_db,
)

READ_KEY, WRITE_KEY, BOTH_KEY = "r" * 20 + "-read", "w" * 20 + "-write", "b" * 20 + "-both"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Path]:
    path = make_repo(tmp_path_factory.mktemp("server") / "repo", with_db(redis_url, SERVER_REDIS_DB), unique_prefix())
    yield path
    delete_keys(path)


@pytest.fixture(scope="module")
def store(repo: Path) -> Iterator[FeatureStore]:
    with FeatureStore(repo) as opened:
        yield opened


def started(app: FastAPI, **kwargs: Any) -> TestClient:
    return TestClient(app, raise_server_exceptions=False, **kwargs)


@pytest.fixture(scope="module")
def client(store: FeatureStore) -> Iterator[TestClient]:
    with started(create_app(store, ServerSettings(max_entities=500, max_body_bytes=64_000))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def secured(store: FeatureStore) -> Iterator[TestClient]:
    keys = (ApiKeyConfig(key=READ_KEY, scopes=("read",)), ApiKeyConfig(key=WRITE_KEY, scopes=("write",)),
            ApiKeyConfig(key=BOTH_KEY, scopes=("read", "write")))
    with started(create_app(store, ServerSettings(api_keys=keys))) as test_client:
        yield test_client


def post(client: TestClient, body: dict[str, Any], path: str = "/get-online-features", **kwargs: Any) -> Any:
    return client.post(path, content=json.dumps(body), headers={"Content-Type": "application/json",
                                                                **kwargs.pop("headers", {})}, **kwargs)


def error_of(response: Any, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"type", "message", "details"}
    assert error["type"] == kind, error
    assert error["message"]
    return error


# --- Feast's wire format, and the SDK's values --------------------------------------------------------------


def test_response_has_feasts_shape_and_the_sdks_values(client: TestClient, store: FeatureStore) -> None:
    now = at()
    entities = {"customer_id": [1, 2, 999_999, 7]}
    response = post(client, {"features": FEATURES_10, "entities": entities, "now": now.isoformat()})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"metadata", "results"} and set(body["metadata"]) == {"feature_names"}
    names = body["metadata"]["feature_names"]
    assert names == ["customer_id", *(f.split(":")[1] for f in FEATURES_10)]  # join keys first, request order
    assert len(body["results"]) == len(names)
    for result in body["results"]:
        assert set(result) == {"values", "statuses", "event_timestamps"}
        assert len(result["values"]) == len(result["statuses"]) == len(result["event_timestamps"]) == 4
        for stamp in result["event_timestamps"]:  # never null; how Feast's clients parse it
            assert stamp.endswith("Z")
            datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    key = body["results"][0]
    assert key == {"values": [1, 2, 999_999, 7], "statuses": ["PRESENT"] * 4,
                   "event_timestamps": ["1970-01-01T00:00:00Z"] * 4}
    assert server_columns(body) == sdk_columns(store, FEATURES_10, entities, now)
    statuses = {s for r in body["results"][1:] for s in r["statuses"]}
    assert {"PRESENT", "NOT_FOUND"} <= statuses


def test_feature_service_full_names_and_entity_rows_like_feast(client: TestClient, store: FeatureStore) -> None:
    now = at(hours_ago=24 * 20)  # replay: statuses and values as of then
    entities = {"customer_id": ["3", 4]}  # an integer key accepts digit strings, as in the SDK
    response = post(client, {"feature_service": "fraud_model_v1", "entities": entities, "full_feature_names": True,
                             "now": now.replace(tzinfo=None).isoformat()})  # naive: UTC
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["metadata"]["feature_names"][:2] == ["customer_id", "customer_spend__avg_spend_90d"]
    service = store.get_feature_service("fraud_model_v1")
    assert server_columns(body) == sdk_columns(store, service, entities, now, full_feature_names=True)


def test_parses_the_way_feasts_remote_online_store_does(client: TestClient) -> None:
    """feast/infra/online_stores/remote.py posts a JSON string without a Content-Type, reads the event time
    of results[1] with datetime.fromisoformat, and each value by feature index and entity index."""
    requested = ["avg_spend_90d", "txn_count_30d"]
    request = json.dumps({"features": [f"customer_spend:{f}" for f in requested], "entities": {"customer_id": [1, 2]}})
    response = client.post("/get-online-features", content=request.encode())  # no Content-Type, as requests sends
    assert response.status_code == 200, response.text
    body = json.loads(response.text)
    event_ts = datetime.fromisoformat(body["results"][1]["event_timestamps"][0].replace("Z", "+00:00"))
    assert event_ts.tzinfo is not None
    rows = []
    for entity in range(2):
        row = {}
        for index, name in enumerate(body["metadata"]["feature_names"]):
            if name in requested and body["results"][index]["statuses"][entity] == "PRESENT":
                row[name] = body["results"][index]["values"][entity]
        rows.append(row)
    assert all(isinstance(row["avg_spend_90d"], float) and isinstance(row["txn_count_30d"], int) for row in rows)
    # Feast's docs use curl -d, which sends application/x-www-form-urlencoded: read as JSON too.
    form = client.post("/get-online-features", content=request.encode(),
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 200 and form.json() == body


# --- errors -----------------------------------------------------------------------------------------------


def test_unknown_feature_view_service_and_route_are_404(client: TestClient) -> None:
    error = error_of(post(client, {"features": ["customer_spend:avg_spend_90"], "entities": {"customer_id": [1]}}),
                     404, "FeatureNotFoundError")
    assert "customer_spend:avg_spend_90d" in error["message"] and error["details"]["reference"]
    error_of(post(client, {"features": ["nope:x"], "entities": {"customer_id": [1]}}), 404, "FeatureNotFoundError")
    error_of(post(client, {"feature_service": "fraud_model_v9", "entities": {"customer_id": [1]}}), 404,
             "FeatureNotFoundError")
    error_of(client.get("/features/customer_spnd"), 404, "FeatureNotFoundError")
    error_of(client.get("/nowhere"), 404, "RouteNotFoundError")
    error = error_of(client.put("/get-online-features"), 405, "MethodNotAllowedError")
    assert error["details"]["method"] == "PUT"


def test_unknown_push_source_is_404(client: TestClient) -> None:
    body = {"push_source_name": "nope", "df": {"customer_id": [1]}, "to": "online"}
    error_of(post(client, body, "/push"), 404, "PushSourceNotFoundError")


@pytest.mark.parametrize("body", [
    b"{not json", b"", b"[]", b'"text"',
    json.dumps({"entities": {"customer_id": [1]}}).encode(),  # neither features nor feature_service
    json.dumps({"features": ["customer_spend:spend_7d"], "feature_service": "fraud_model_v1",
                "entities": {"customer_id": [1]}}).encode(),  # both
    json.dumps({"features": [], "entities": {"customer_id": [1]}}).encode(),
    json.dumps({"features": "customer_spend:spend_7d", "entities": {"customer_id": [1]}}).encode(),
    json.dumps({"features": ["customer_spend:spend_7d"], "entities": {"customer_id": [1.5]}}).encode(),
    json.dumps({"features": ["customer_spend:spend_7d"], "entities": {"customer_id": [{"a": 1}]}}).encode(),
    json.dumps({"features": ["customer_spend:spend_7d"], "entities": [1, 2]}).encode(),
    json.dumps({"features": ["customer_spend:spend_7d"], "entities": {"customer_id": [1]},
                "now": "yesterday"}).encode(),
])
def test_malformed_bodies_are_422(client: TestClient, body: bytes) -> None:
    response = client.post("/get-online-features", content=body, headers={"Content-Type": "application/json"})
    error = error_of(response, 422, "InvalidRequestError")
    assert error["details"]["errors"] and all(set(e) == {"loc", "msg", "type"} for e in error["details"]["errors"])


FEATURE = ["customer_spend:spend_7d"]


@pytest.mark.parametrize("body", [
    {"features": None, "feature_service": None},
    {},
    {"features": FEATURE, "feature_service": "fraud_model_v1"},
    {"features": FEATURE},
    {"feature_service": "fraud_model_v1"},
    {"features": None, "feature_service": "fraud_model_v1"},
    {"features": FEATURE, "feature_service": None},
    {"features": FEATURE, "now": 0},
    {"features": FEATURE, "now": 1_700_000_000.5},
    {"features": FEATURE, "now": "2026-11-27T10:00:00Z"},
    {"features": FEATURE, "now": None},
], ids=repr)
def test_the_openapi_document_says_what_is_refused(client: TestClient, body: dict[str, Any]) -> None:
    """A body the document's schema allows is answered, one it does not is a 422, and the reverse."""
    schema = client.get("/openapi.json").json()["components"]["schemas"]["GetOnlineFeaturesRequest"]
    request = {**body, "entities": {"customer_id": [1]}}
    response = post(client, request)
    refused = response.status_code == 422 and response.json()["error"]["type"] == "InvalidRequestError"
    assert jsonschema.Draft202012Validator(schema).is_valid(request) is not refused, response.text


@pytest.mark.parametrize("now", ["1700000000", "2026-11-27", "27/11/2026 10:00", "yesterday"])
def test_now_is_a_date_and_time_string_as_documented(client: TestClient, now: str) -> None:
    """format: date-time, not the Unix times or bare dates pydantic would otherwise take."""
    error = error_of(post(client, {"features": FEATURE, "entities": {"customer_id": [1]}, "now": now}), 422,
                     "InvalidRequestError")
    assert error["details"]["errors"][0]["loc"] == ["now"]


def test_integer_keys_beyond_64_bits_are_refused(client: TestClient) -> None:
    body = {"features": ["customer_spend:spend_7d"], "entities": {"customer_id": [2**63]}}
    error_of(post(client, body), 422, "InvalidRequestError")
    assert post(client, {**body, "entities": {"customer_id": [2**63 - 1, -(2**63)]}}).status_code == 200


def test_digit_strings_beyond_64_bits_or_not_ascii_digits_are_400(client: TestClient) -> None:
    for bad in ["1" * 40, " 12 ", "\u0661\u0662", "1_000", "12.5"]:
        body = {"features": ["customer_spend:spend_7d"], "entities": {"customer_id": [bad]}}
        error_of(post(client, body), 400, "EntityDataFrameError")
    body = {"features": ["customer_spend:spend_7d"], "entities": {"customer_id": ["12", "-3", "+4"]}}
    assert post(client, body).status_code == 200


@pytest.mark.parametrize("digits", [4_301, 5_000, 50_000])
def test_digit_strings_beyond_the_int_conversion_limit_are_400_naming_the_key(client: TestClient,
                                                                              digits: int) -> None:
    """Python's int() refuses strings of more than 4,300 digits (a ValueError that used to answer 500)."""
    body = {"features": ["customer_spend:spend_7d"], "entities": {"customer_id": [1, "9" * digits]}}
    error = error_of(post(client, body), 400, "EntityDataFrameError")
    assert "customer_id" in error["message"] and "64-bit" in error["message"]
    assert len(error["message"]) < 300  # the value is cut short, not echoed whole
    zeros = {"features": ["customer_spend:spend_7d"], "entities": {"customer_id": ["0" * digits + "7"]}}
    answered = post(client, zeros)  # leading zeros: still customer 7
    seven = post(client, {**zeros, "entities": {"customer_id": [7]}})
    assert answered.status_code == 200 and answered.json()["results"][1:] == seven.json()["results"][1:]


def test_push_answers_rows_online_updates_and_time(client: TestClient) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    row = {"transaction_id": [9_000_001, 9_000_002], "customer_id": [1, 2], "event_timestamp": [now.isoformat()] * 2,
           "created": [now.isoformat()] * 2,
           "amount": [10.0, 20.0], "category": ["grocery", "travel"]}
    response = post(client, {"push_source_name": "transactions_push", "df": row, "to": "online"}, "/push")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["rows"] == 2 and body["online_updates"] >= 2  # one per entity and view over the source
    assert body["pushed_at"].endswith("Z") and datetime.fromisoformat(body["pushed_at"].replace("Z", "+00:00")) >= now
    error_of(post(client, {"push_source_name": "transactions_push", "df": {"customer_id": [1]}}, "/push"), 422,
             "PushDataError")


def test_malformed_push_is_422(client: TestClient) -> None:
    error_of(post(client, {"df": {"customer_id": [1]}}, "/push"), 422, "InvalidRequestError")
    error_of(post(client, {"push_source_name": "x", "df": {}, "to": "sideways"}, "/push"), 422, "InvalidRequestError")


CONTENT_TYPES = [None, "application/json", "application/json; charset=utf-8", "application/x-www-form-urlencoded",
                 "text/plain", "multipart/form-data; boundary=x"]


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
def test_both_endpoints_read_json_whatever_the_content_type(client: TestClient, content_type: str | None) -> None:
    """Feast's client sends no Content-Type and Feast's docs use curl -d (form-urlencoded), for reads and pushes
    alike: both endpoints read the body as JSON the same way."""
    headers = {} if content_type is None else {"Content-Type": content_type}
    now = datetime.now(UTC).replace(microsecond=0).isoformat()
    push = {"push_source_name": "transactions_push", "to": "online",
            "df": {"customer_id": [3], "event_timestamp": [now], "created": [now], "amount": [1.0],
                   "category": ["grocery"], "transaction_id": [None]}}
    pushed = client.post("/push", content=json.dumps(push).encode(), headers=headers)
    assert pushed.status_code == 200, pushed.text
    read = {"features": ["customer_spend:spend_7d"], "entities": {"customer_id": [3]}}
    assert client.post("/get-online-features", content=json.dumps(read).encode(), headers=headers).status_code == 200
    error_of(client.post("/push", content=b"{not json", headers=headers), 422, "InvalidRequestError")


@pytest.mark.parametrize("path", ["/push", "/get-online-features"])
@pytest.mark.parametrize("content_type", CONTENT_TYPES)
def test_cross_site_browser_requests_are_refused(store: FeatureStore, path: str, content_type: str | None) -> None:
    """What keeps a web page from pushing (or reading) through a visitor's browser: not the Content-Type, which a
    page can choose among the 'simple' ones or leave out, but the Origin (and Sec-Fetch-Site) every browser sends
    with a cross-site POST and cannot be made to forge."""
    body = json.dumps({"push_source_name": "transactions_push", "df": {"customer_id": [1]}} if path == "/push"
                      else {"features": ["customer_spend:spend_7d"], "entities": {"customer_id": [1]}}).encode()
    headers = {} if content_type is None else {"Content-Type": content_type}
    app = create_app(store, ServerSettings(cors_origins=("https://dashboard.example",)))
    with started(app) as browserish:
        for cross in ({"Origin": "https://evil.example"}, {"Origin": "null"},
                      {"Origin": "http://testserver:8080"},  # another port of the same host is another origin
                      {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}):
            error = error_of(browserish.post(path, content=body, headers={**headers, **cross}), 403,
                             "CrossSiteRequestError")
            assert "server.cors_origins" in error["message"]
        for allowed in ({}, {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},  # e.g. /docs
                        {"Origin": "https://dashboard.example", "Sec-Fetch-Site": "cross-site"}):  # CORS-allowed
            answered = browserish.post(path, content=body, headers={**headers, **allowed})
            assert answered.status_code != 403, answered.text
        # Reading endpoints without side effects stay open to simple cross-site GETs (they cannot read the answer).
        assert browserish.get("/health", headers={"Origin": "https://evil.example"}).status_code == 200


def test_entity_problems_are_400(client: TestClient) -> None:
    error = error_of(post(client, {"features": FEATURES_10, "entities": {"cust_id": [1]}}), 400,
                     "EntityDataFrameError")
    assert "customer_id" in error["message"]
    error_of(post(client, {"features": FEATURES_10, "entities": {"customer_id": [1, None]}}), 400,
             "EntityDataFrameError")
    error_of(post(client, {"features": FEATURES_10, "entities": {"customer_id": ["one"]}}), 400,
             "EntityDataFrameError")
    error_of(post(client, {"features": FEATURES_10, "entities": {"customer_id": [1, 2], "other": [1]}}), 400,
             "EntityDataFrameError")


def test_limits_are_413(client: TestClient) -> None:
    error = error_of(post(client, {"features": ["customer_spend:spend_7d"], "entities": {"customer_id": [1] * 501}}),
                     413, "RequestTooLargeError")
    assert error["details"] == {"rows": 501, "max_entities": 500}
    big = {"features": ["customer_spend:spend_7d"], "entities": {"customer_id": list(range(20_000))}}
    error_of(post(client, big), 413, "RequestTooLargeError")  # by Content-Length, before reading

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streamed
        yield b'{"features": ["customer_spend:spend_7d"], "entities": {"customer_id": ['
        for _ in range(100):
            yield b"1," * 500
        yield b"1]}}"

    streamed = client.post("/get-online-features", content=chunks(), headers={"Content-Type": "application/json"})
    error_of(streamed, 413, "RequestTooLargeError")
    pushed = client.post("/push", content=chunks(), headers={"Content-Type": "application/json"})
    error_of(pushed, 413, "RequestTooLargeError")


# --- API keys ---------------------------------------------------------------------------------------------


def test_api_keys_and_scopes(secured: TestClient) -> None:
    body = {"features": ["customer_spend:spend_7d"], "entities": {"customer_id": [1]}}
    missing = post(secured, body)
    error_of(missing, 401, "AuthenticationError")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    error_of(post(secured, body, headers={"Authorization": "Bearer " + "x" * 30}), 401, "AuthenticationError")
    error_of(post(secured, body, headers={"Authorization": f"Basic {READ_KEY}"}), 401, "AuthenticationError")
    error_of(post(secured, body, headers={"Authorization": f"Bearer {WRITE_KEY}"}), 403, "PermissionDeniedError")
    assert post(secured, body, headers={"Authorization": f"Bearer {READ_KEY}"}).status_code == 200
    assert post(secured, body, headers={"Authorization": f"bearer  {BOTH_KEY} "}).status_code == 200
    assert secured.get("/features", headers={"Authorization": f"Bearer {READ_KEY}"}).status_code == 200
    error_of(secured.get("/features/customer_spend"), 401, "AuthenticationError")
    push = {"push_source_name": "nope", "df": {"customer_id": [1]}}
    error_of(post(secured, push, "/push", headers={"Authorization": f"Bearer {READ_KEY}"}), 403,
             "PermissionDeniedError")
    error_of(post(secured, push, "/push", headers={"Authorization": f"Bearer {WRITE_KEY}"}), 404,
             "PushSourceNotFoundError")  # authorized, then the SDK's answer
    for open_path in ("/health", "/ready", "/metrics", "/docs", "/openapi.json"):
        assert secured.get(open_path).status_code == 200, open_path
    spec = secured.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    assert spec["paths"]["/get-online-features"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in spec["paths"]["/health"]["get"]


def test_without_keys_everything_is_open(client: TestClient) -> None:
    body = {"features": ["customer_spend:spend_7d"], "entities": {"customer_id": [1]}}
    assert post(client, body).status_code == 200
    assert post(client, body, headers={"Authorization": "Bearer whatever"}).status_code == 200
    assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})


def test_host_header_and_cors(store: FeatureStore) -> None:
    with started(create_app(store, ServerSettings(allowed_hosts=("localhost", "127.0.0.1")))) as local:
        error_of(local.get("/health", headers={"Host": "attacker.example"}), 400, "UntrustedHostError")
        assert local.get("/health", headers={"Host": "localhost:6566"}).status_code == 200
        plain = local.get("/health", headers={"Host": "127.0.0.1", "Origin": "https://app.example"})
        assert "access-control-allow-origin" not in plain.headers  # no CORS unless configured
    settings = ServerSettings(cors_origins=("https://app.example",), api_keys=(ApiKeyConfig(key=READ_KEY),))
    with started(create_app(store, settings)) as cors:
        preflight = cors.options("/get-online-features", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        other = cors.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


# --- registry, operations, docs -----------------------------------------------------------------------------


def test_features_lists_the_registry_with_types(client: TestClient) -> None:
    body = client.get("/features").json()
    assert body["project"] == "demo" and body["registry_version"] >= 1
    assert body["entities"] == [{"name": "customer", "join_keys": ["customer_id"], "description": "A card holder."}]
    views = {v["name"]: v for v in body["feature_views"]}
    assert set(views) == {"customer_spend", "customer_habits", "customer_profile", "customer_live"}
    assert body["push_sources"] == [{"name": "transactions_push", "batch_source": "transactions", "description": ""}]
    spend = {f["name"]: f for f in views["customer_spend"]["features"]}
    assert spend["avg_spend_90d"] == {"name": "avg_spend_90d", "reference": "customer_spend:avg_spend_90d",
                                      "type": "DOUBLE", "function": "mean", "column": "amount", "window": "90d",
                                      "hop": "1h"}
    assert spend["txn_count_30d"]["type"] == "BIGINT" and spend["txn_count_30d"]["column"] is None
    assert spend["last_category"]["type"] == "VARCHAR"
    profile = client.get("/features/customer_profile").json()
    assert profile["kind"] == "snapshot" and profile["ttl"] == "365d" and profile["join_keys"] == ["customer_id"]
    assert [(f["name"], f["type"], f["function"]) for f in profile["features"]] == [
        ("age", "BIGINT", "latest"), ("segment", "VARCHAR", "latest")]
    services = {s["name"]: s["features"] for s in body["feature_services"]}
    assert services["fraud_model_v1"][-1] == "customer_profile:age"


def test_health_ready_and_metrics(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["status"] == "ready" and ready["online_store"] == "redis" and ready["registry_version"] >= 1
    post(client, {"features": ["customer_spend:spend_7d"], "entities": {"customer_id": [1, 2, 3]}})
    post(client, {"features": ["customer_spend:nope"], "entities": {"customer_id": [1]}})
    text = client.get("/metrics").text
    for line in ('feature_store_server_requests_total{endpoint="/get-online-features",method="POST",status="200"}',
                 'feature_store_server_requests_total{endpoint="/get-online-features",method="POST",status="404"}',
                 "feature_store_server_request_duration_seconds_bucket{",
                 "feature_store_server_entities_per_request_bucket{le=\"5.0\"}",
                 "feature_store_server_online_store_errors_total", "feature_store_server_push_lag_seconds",
                 "feature_store_server_registry_version 1.0"):
        assert line in text, line


def test_openapi_has_the_real_schemas(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    request = schemas["GetOnlineFeaturesRequest"]
    assert {"entities", "features", "feature_service", "full_feature_names", "now"} <= set(request["properties"])
    assert request["required"] == ["entities"]
    assert {"GetOnlineFeaturesResponse", "PushRequest", "PushResponse", "ErrorResponse", "RegistryResponse"} <= set(
        schemas)
    operation = spec["paths"]["/get-online-features"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/GetOnlineFeaturesRequest"}
    assert {"200", "400", "404", "413", "422", "503"} <= set(operation["responses"])
    assert "swagger-ui" in client.get("/docs").text


def test_ready_and_metrics_reveal_no_addresses_without_the_read_scope(store: FeatureStore, repo: Path) -> None:
    """/ready and /metrics need no key (probes, scrapers): what they answer names no host, port or URL of the
    registry or the online store, even when those fail; a caller with the read scope gets the details."""
    closed = free_port()
    down_redis = store.config.model_copy(update={"online_store": RedisOnlineConfig(
        url=f"redis://127.0.0.1:{closed}/0", key_prefix="fstest-never-written", timeout_seconds=0.3)})
    down_registry = down_redis.model_copy(update={"registry": f"postgresql+psycopg://fs@127.0.0.1:{closed}/test"})
    keys = (ApiKeyConfig(key=READ_KEY, scopes=("read",)),)
    for config, cause in ((down_redis, "OnlineStoreUnavailable"), (down_registry, "RegistryError")):
        with FeatureStore(repo, config) as broken, started(create_app(broken, ServerSettings(api_keys=keys))) as app:
            for path in ("/ready", "/metrics"):
                for _ in range(2):  # a second /ready too: nothing about the cause is kept for later answers
                    text = app.get(path).text
                    assert str(closed) not in text and "127.0.0.1" not in text and "://" not in text, text
            error = error_of(app.get("/ready"), 503, "ServerNotReadyError")
            assert error["details"]["cause"] == cause and "server log" in error["message"]
            detailed = error_of(app.get("/ready", headers={"Authorization": f"Bearer {READ_KEY}"}), 503,
                                "ServerNotReadyError")
            assert str(closed) in detailed["message"]


def test_docs_work_offline_from_files_the_package_ships(client: TestClient) -> None:
    """/docs refers to no CDN: every asset it loads is served by the server itself, from the package."""
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "://" not in page.text and "//cdn" not in page.text  # no absolute URL anywhere in the page
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert len(assets) == 3 and all(a.startswith("/docs/") for a in assets), assets
    kinds = {".js": ("text/javascript", "application/javascript"), ".css": ("text/css",), ".png": ("image/png",)}
    static = ROOT / "feature_store" / "server" / "static" / "swagger-ui"
    for asset in assets:
        served = client.get(asset)
        assert served.status_code == 200, asset
        assert served.headers["content-type"].split(";")[0] in kinds[Path(asset).suffix], served.headers
        assert served.content == (static / Path(asset).name).read_bytes()
    assert "url: '/openapi.json'" in page.text and client.get("/openapi.json").status_code == 200
    # The files are package data, so that an installed wheel serves them too.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["feature_store"]
    packaged = {path for pattern in patterns for path in (ROOT / "feature_store").glob(pattern)}
    assert {*static.iterdir()} <= packaged


def test_no_registry_is_503_on_ready_and_404_on_reads(tmp_path: Path) -> None:
    repo = tmp_path / "empty"
    repo.mkdir()
    (repo / "feature_store.yaml").write_text("project: empty\n")
    with FeatureStore(repo) as empty, started(create_app(empty)) as unapplied:
        error = error_of(unapplied.get("/ready"), 503, "ServerNotReadyError")
        assert "apply" in error["message"]
        error_of(post(unapplied, {"features": ["a:b"], "entities": {"id": [1]}}), 404, "NotAppliedError")
        assert unapplied.get("/health").status_code == 200


def refreshes(app: FastAPI, result: str) -> float:
    value: float = app.state.metrics.refreshes.labels(result)._value.get()
    return value


def wait_for(condition: Any, seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_registry_refresh_in_the_background_survives_a_broken_registry(store: FeatureStore, repo: Path) -> None:
    app = create_app(store, ServerSettings(registry_refresh_seconds=0.05))
    body = {"features": ["customer_spend:spend_7d"], "entities": {"customer_id": [1]}}
    with started(app) as refreshed, sqlite3.connect(repo / "data" / "registry.db") as db:
        assert store.registry_refresh_seconds == float("inf")  # requests never reload the registry
        served = app.state.refresher.version
        ok = refreshes(app, "ok")
        wait_for(lambda: refreshes(app, "ok") >= ok + 2)
        # A registry that cannot be read (a newer version moved on, with a spec this one cannot parse):
        name, spec = db.execute("SELECT name, spec FROM fs_objects WHERE kind = 'feature_view' LIMIT 1").fetchone()
        db.execute("UPDATE fs_projects SET version = version + 1")
        db.execute("UPDATE fs_objects SET spec = '{broken' WHERE kind = 'feature_view' AND name = ?", [name])
        db.commit()
        try:
            errors = refreshes(app, "error")
            wait_for(lambda: refreshes(app, "error") >= errors + 2)
            assert app.state.refresher.version == served  # the previous catalog is still served
            assert post(refreshed, body).status_code == 200
            assert refreshed.get("/ready").status_code == 200
        finally:
            db.execute("UPDATE fs_objects SET spec = ? WHERE kind = 'feature_view' AND name = ?", [spec, name])
            db.commit()
        wait_for(lambda: app.state.refresher.version == served + 1)
        assert post(refreshed, body).status_code == 200
