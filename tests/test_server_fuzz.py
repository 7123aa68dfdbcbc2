"""Schemathesis over the feature server's own OpenAPI document: no request, valid or not, gets a 5xx, and no
request the document allows is refused as malformed.

Property-based: for every operation, hypothesis generates bodies, paths and headers from the schema
(and breaks them), sends them to the app in-process (over a real Redis), and the checks fail on any
server error or on a response that does not match the documented schema and status codes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode, checks

from feature_store import FeatureStore
from feature_store.server import ServerSettings, create_app
from tests.server_fixtures import SERVER_REDIS_DB, delete_keys, make_repo, unique_prefix, with_db


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Any]:
    repo: Path = make_repo(tmp_path_factory.mktemp("fuzz") / "repo", with_db(redis_url, SERVER_REDIS_DB),
                           unique_prefix(), customers=40)
    with FeatureStore(repo) as store:
        app = create_app(store, ServerSettings(max_entities=200, max_body_bytes=20_000))
        with TestClient(app):  # runs the lifespan: the registry is loaded, as in a served app
            yield app
    delete_keys(repo)


def operations() -> list[str]:
    """Operation labels, known without a store: the document does not depend on the data."""
    return ["POST /get-online-features", "POST /push", "GET /features", "GET /features/{view}", "GET /health",
            "GET /ready", "GET /metrics"]


FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))  # per operation; make test-fast takes fewer

CASES = [(label, GenerationMode.POSITIVE) for label in operations()] + [
    (label, GenerationMode.NEGATIVE) for label in ("POST /get-online-features", "POST /push")
]  # the other operations take no input that could be broken


@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{label} {mode.value}" for label, mode in CASES])
def test_no_request_makes_a_server_error(fuzz_app: Any, label: str, mode: GenerationMode) -> None:
    # schemathesis' own pytest plugin does not run under pytest 9: drive hypothesis with its strategies.
    api = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    found = {f"{op.method.upper()} {op.path}": op for op in (r.ok() for r in api.get_all_operations())}
    assert set(found) == set(operations()), sorted(found)
    operation = found[label]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def check(case: Any) -> None:
        response = case.call_and_validate(checks=[checks.not_a_server_error, checks.response_schema_conformance,
                                                  checks.content_type_conformance])
        if mode is GenerationMode.POSITIVE and response.status_code == 422:
            # The document and the behaviour agree: a body the schema allows is never refused as malformed.
            error = response.json()["error"]
            assert error["type"] != "InvalidRequestError", (case.body, error)

    check()
