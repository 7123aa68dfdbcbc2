"""POST /push through the real server: pushed events are served at once, training sets see the same values,
and concurrent pushes for one entity from several HTTP clients lose nothing."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from feature_store import FeatureStore
from tests.server_fixtures import (
    SERVER_REDIS_DB,
    Server,
    delete_keys,
    make_repo,
    run_server,
    server_columns,
    unique_prefix,
    with_db,
)

pytestmark = pytest.mark.slow  # real server processes: the full suite (make test), not make test-fast

LIVE = ["customer_live:spend_1d", "customer_live:txn_count_1h_live"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[tuple[Path, Server]]:
    base = tmp_path_factory.mktemp("push")
    repo = make_repo(base / "repo", with_db(redis_url, SERVER_REDIS_DB), unique_prefix(), customers=60)
    try:
        with run_server(repo, base / "server.log") as server:
            yield repo, server
    finally:
        delete_keys(repo)


def events(customers: list[int], amounts: list[float], at: datetime) -> dict[str, list[Any]]:
    stamp = at.isoformat()
    return {"transaction_id": [None] * len(customers), "customer_id": customers,
            "event_timestamp": [stamp] * len(customers), "created": [stamp] * len(customers), "amount": amounts,
            "category": ["grocery"] * len(customers)}


def online(server: Server, customers: list[int], now: datetime) -> dict[str, Any]:
    with server.client() as client:
        response = client.post("/get-online-features", json={"features": LIVE, "entities": {"customer_id": customers},
                                                               "now": now.isoformat()})
    assert response.status_code == 200, response.text
    return server_columns(response.json())


def test_pushed_events_are_served_at_once_and_trained_on_with_the_same_values(served: tuple[Path, Server]) -> None:
    repo, server = served
    customers = [7, 5_000_001]  # a known customer and a new one
    pushed_at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    before = online(server, customers, datetime.now(UTC))
    with server.client() as client:
        response = client.post("/push", json={"push_source_name": "transactions_push",
                                              "df": events(customers, [10.5, 20.25], pushed_at)})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["rows"] == 2 and answer["online_updates"] >= 2  # at least one per entity
    now = datetime.now(UTC) + timedelta(seconds=1)
    after = online(server, customers, now)
    spend_before, spend_after = before["spend_1d"][0], after["spend_1d"][0]
    assert math.isclose(spend_after[0], spend_before[0] + 10.5, rel_tol=1e-9)
    assert after["spend_1d"][1][1] == "PRESENT" and math.isclose(spend_after[1], 20.25, rel_tol=1e-9)
    assert after["txn_count_1h_live"][0][1] == 1
    # A training row at the same time sees the pushed events too: serving equals training.
    with FeatureStore(repo) as store:
        entity_df = pd.DataFrame({"customer_id": customers, "event_timestamp": [pd.Timestamp(now)] * 2})
        offline = store.get_historical_features(entity_df, LIVE).to_df()
    for i in range(2):
        assert math.isclose(offline["spend_1d"][i], spend_after[i], rel_tol=1e-9)
        assert offline["txn_count_1h_live"][i] == after["txn_count_1h_live"][0][i]


NON_FINITE = ['"nan"', '"inf"', "Infinity", "-Infinity", "NaN", "1e309", "1e308"]


@pytest.mark.parametrize("amount", NON_FINITE)
def test_non_finite_amounts_are_a_422_naming_column_and_row(served: tuple[Path, Server], amount: str) -> None:
    """JSON as clients send it, non-standard literals included: nothing is logged or served."""
    _repo, server = served
    customer = 5_000_100 + NON_FINITE.index(amount)
    at = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    body = (f'{{"push_source_name": "transactions_push", "df": {{"customer_id": [{customer}, {customer}], '
            f'"event_timestamp": ["{at}", "{at}"], "created": ["{at}", "{at}"], "amount": [1.0, {amount}], '
            '"category": ["a", "b"], "transaction_id": [1, 2]}}')
    with server.client() as client:
        response = client.post("/push", content=body, headers={"content-type": "application/json"})
    if amount == "NaN":  # JSON's parser gives a NaN float, which pandas-style is a missing value
        assert response.status_code in (200, 422), response.text
    else:
        assert response.status_code == 422, response.text
        message = response.json()["error"]["message"]
        assert "'amount'" in message and "row 1" in message, message
    if response.status_code == 422:
        assert online(server, [customer], datetime.now(UTC))["txn_count_1h_live"][0] == [0]


def test_concurrent_pushes_for_one_entity_lose_nothing(served: tuple[Path, Server]) -> None:
    _repo, server = served
    customer, threads, each = 5_000_002, 4, 15
    statuses: list[int] = []

    def push() -> None:
        with server.client() as client:
            for _ in range(each):
                at = datetime.now(UTC) - timedelta(minutes=1)
                response = client.post("/push", json={"push_source_name": "transactions_push", "to": "online",
                                                      "df": events([customer], [1.0], at)})
                statuses.append(response.status_code)

    workers = [threading.Thread(target=push) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert set(statuses) == {200}, statuses
    served_now = online(server, [customer], datetime.now(UTC) + timedelta(seconds=1))
    assert served_now["txn_count_1h_live"][0] == [threads * each]
    assert served_now["spend_1d"][0] == [float(threads * each)]


def training_counts(repo: Path, customers: list[int]) -> list[int]:
    with FeatureStore(repo) as store:
        entity_df = pd.DataFrame({"customer_id": customers,
                                  "event_timestamp": [pd.Timestamp(datetime.now(UTC))] * len(customers)})
        return [int(v) for v in store.get_historical_features(entity_df, LIVE).to_df()["txn_count_1h_live"]]


@pytest.mark.parametrize("where", ["header", "body"])
def test_a_retried_push_with_an_idempotency_key_counts_once(served: tuple[Path, Server], where: str) -> None:
    """The Idempotency-Key header or the body's push_id: the retry answers 200 with duplicate true and the same
    pushed_at; online and training sets count the events once."""
    repo, server = served
    customers = [5_000_200, 5_000_201] if where == "header" else [5_000_210, 5_000_211]
    body: dict[str, Any] = {"push_source_name": "transactions_push",
                            "df": events(customers, [1.0, 2.0], datetime.now(UTC) - timedelta(minutes=1))}
    key = f"retry-{where}-{customers[0]}"
    headers = {"Idempotency-Key": key} if where == "header" else {}
    if where == "body":
        body["push_id"] = key
    answers = []
    with server.client() as client:
        for _ in range(3):
            response = client.post("/push", json=body, headers=headers)
            assert response.status_code == 200, response.text
            answers.append(response.json())
    assert [a["duplicate"] for a in answers] == [False, True, True]
    assert {a["pushed_at"] for a in answers} == {answers[0]["pushed_at"]} and answers[1]["online_updates"] == 0
    served_now = online(server, customers, datetime.now(UTC) + timedelta(seconds=1))
    assert served_now["txn_count_1h_live"][0] == [1, 1]
    assert training_counts(repo, customers) == [1, 1]


def test_an_idempotency_key_reused_with_other_rows_is_a_409(served: tuple[Path, Server]) -> None:
    _repo, server = served
    customer = 5_000_220
    at = datetime.now(UTC) - timedelta(minutes=1)
    with server.client() as client:
        first = client.post("/push", json={"push_source_name": "transactions_push", "push_id": "reused",
                                           "df": events([customer], [1.0], at)})
        assert first.status_code == 200, first.text
        other = client.post("/push", headers={"Idempotency-Key": "reused"},
                            json={"push_source_name": "transactions_push", "df": events([customer], [9.0], at)})
        assert other.status_code == 409, other.text
        error = other.json()["error"]
        assert error["type"] == "PushIdConflictError" and "'reused'" in error["message"], error
        both = client.post("/push", headers={"Idempotency-Key": "a"},
                           json={"push_source_name": "transactions_push", "push_id": "b",
                                 "df": events([customer], [1.0], at)})
        assert both.status_code == 422 and "Idempotency-Key" in both.json()["error"]["message"], both.text
    assert online(server, [customer], datetime.now(UTC) + timedelta(seconds=1))["spend_1d"][0] == [1.0]
