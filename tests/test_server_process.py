"""The feature server as it runs: ``python -m feature_store ... serve`` under uvicorn, over a real Redis.

Two worker processes serving the SDK's values, API keys from the environment, the loopback Host check,
the workers' metrics added up, and a Redis that dies under load and comes back: 503s while it
is down, 200s again without restarting the server, and the server process never exits.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from feature_store import FeatureStore
from feature_store.server.serve import is_loopback, warnings_for
from tests.conftest import _free_port, start_redis
from tests.server_fixtures import (
    FEATURES_10,
    SERVER_REDIS_DB,
    Server,
    at,
    delete_keys,
    make_repo,
    run_server,
    sdk_columns,
    server_columns,
    unique_prefix,
    with_db,
)

pytestmark = pytest.mark.slow  # real server processes: the full suite (make test), not make test-fast

READ, WRITE = "read-key-" + "r" * 24, "write-key-" + "w" * 24


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Path]:
    path = make_repo(tmp_path_factory.mktemp("served") / "repo", with_db(redis_url, SERVER_REDIS_DB), unique_prefix())
    yield path
    delete_keys(path)


def test_two_workers_serve_the_sdks_values_with_keys_from_the_environment(repo: Path, tmp_path: Path) -> None:
    now, entities = at(), {"customer_id": [1, 5, 999_999]}
    with FeatureStore(repo) as store:  # expected values first: the server process has the repo to itself
        expected = sdk_columns(store, FEATURES_10, entities, now)
        expected_service = sdk_columns(store, store.get_feature_service("fraud_model_v1"), entities, now, True)
    env = {"FEATURE_STORE_API_KEYS": f"{READ}:read;{WRITE}:write"}
    with run_server(repo, tmp_path / "server.log", "--workers", "2", env=env) as server:
        with server.client() as client:
            body = {"features": FEATURES_10, "entities": entities, "now": now.isoformat()}
            assert client.post("/get-online-features", json=body).status_code == 401
            assert client.post("/get-online-features", json=body, headers=bearer(WRITE)).status_code == 403
            response = client.post("/get-online-features", json=body, headers=bearer(READ))
            assert response.status_code == 200, response.text
            assert server_columns(response.json()) == expected
            service = {"feature_service": "fraud_model_v1", "entities": entities, "now": now.isoformat(),
                       "full_feature_names": True}
            served = client.post("/get-online-features", json=service, headers=bearer(READ))
            assert server_columns(served.json()) == expected_service
            assert client.get("/ready").json()["status"] == "ready"
            # Bound to loopback, the server answers only to loopback names (DNS rebinding).
            assert client.get("/health", headers={"Host": "attacker.example"}).status_code == 400
            assert client.get("/health", headers={"Host": "localhost:1234"}).status_code == 200
        statuses = hammer(server, {"features": FEATURES_10, "entities": {"customer_id": [3]}}, threads=4, each=50)
        assert statuses == {200: 200}, server.output()
        metrics = httpx.get(f"{server.url}/metrics").text
        line = 'feature_store_server_requests_total{endpoint="/get-online-features",method="POST",status="200"}'
        counted = [float(row.split()[-1]) for row in metrics.splitlines() if row.startswith(line)]
        assert counted == [202.0], metrics[:2000]  # both workers' requests, added up in one scrape
        server.proc.terminate()  # a graceful shutdown; uvicorn re-raises the signal once it is done
        assert server.proc.wait(timeout=15) in (0, -15), server.output()
    assert "Traceback" not in server.output()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def hammer(server: Server, body: dict[str, Any], threads: int, each: int) -> Counter[int]:
    statuses: Counter[int] = Counter()

    def run() -> None:
        with server.client() as client:  # one keep-alive connection per thread
            for _ in range(each):
                statuses[client.post("/get-online-features", json=body, headers=bearer(READ)).status_code] += 1

    started = [threading.Thread(target=run) for _ in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join()
    return statuses


def test_redis_dies_under_load_and_comes_back(tmp_path: Path) -> None:
    port = _free_port()
    redis = start_redis(port)
    try:
        repo = make_repo(tmp_path / "repo", f"redis://127.0.0.1:{port}/0", unique_prefix(), customers=40)
        body = {"features": FEATURES_10, "entities": {"customer_id": [1, 2]}}
        with run_server(repo, tmp_path / "server.log") as server:
            seen: list[tuple[float, int, str]] = []
            stop = threading.Event()

            def load() -> None:
                with server.client(timeout=5) as client:
                    while not stop.is_set():
                        response = client.post("/get-online-features", json=body)
                        kind = response.json()["error"]["type"] if response.status_code != 200 else ""
                        seen.append((time.monotonic(), response.status_code, kind))

            threads = [threading.Thread(target=load) for _ in range(3)]
            for thread in threads:
                thread.start()
            try:
                time.sleep(0.5)
                killing = time.monotonic()
                redis.kill()
                redis.wait(timeout=10)
                killed = time.monotonic()
                time.sleep(1.0)
                with server.client() as client:
                    down = client.get("/ready")
                    assert down.status_code == 503 and down.json()["error"]["type"] == "ServerNotReadyError"
                    assert client.get("/health").status_code == 200  # alive: nothing to restart
                restarting = time.monotonic()
                redis = start_redis(port)  # empty: values read NOT_FOUND, with status 200
                restarted = time.monotonic()
                time.sleep(1.0)
            finally:
                stop.set()
                for thread in threads:
                    thread.join(timeout=10)
            assert server.proc.poll() is None, server.output()
            before = {status for t, status, _ in seen if t < killing}
            during = {(status, kind) for t, status, kind in seen if killed + 0.2 < t < restarting}
            after = [status for t, status, _ in seen if t > restarted + 0.5]
            assert before == {200}
            assert during == {(503, "OnlineStoreUnavailable")}, during
            assert after and set(after) == {200}
            assert httpx.get(f"{server.url}/ready").status_code == 200
            metrics = httpx.get(f"{server.url}/metrics").text
            assert 'feature_store_server_online_store_errors_total{endpoint="/get-online-features"}' in metrics
        assert "Traceback" not in server.output()
    finally:
        redis.kill()
        redis.wait(timeout=10)


def test_a_public_address_without_keys_is_warned_about(repo: Path, tmp_path: Path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.com")
    assert warnings_for(repo, "127.0.0.1") == []
    [warning] = warnings_for(repo, "0.0.0.0")
    assert "WITHOUT API KEYS" in warning
    os.environ["FEATURE_STORE_API_KEYS"] = READ
    try:
        assert warnings_for(repo, "0.0.0.0") == []
    finally:
        del os.environ["FEATURE_STORE_API_KEYS"]
