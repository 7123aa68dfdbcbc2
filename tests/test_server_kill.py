"""kill -9 of a feature server while clients push: every acknowledged push counts exactly once, online and in
training sets; an unacknowledged one counts at most once (never twice: nothing retries it). With 1 and 8
clients, on 1 and 2 worker processes."""

from __future__ import annotations

import itertools
import os
import random
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pandas as pd
import pytest

from feature_store import FeatureStore
from tests.server_fixtures import SERVER_REDIS_DB, delete_keys, make_repo, run_server, unique_prefix, with_db

pytestmark = pytest.mark.slow  # real server processes killed: the full suite (make test), not make test-fast

FEATURE = "customer_live:txn_count_1h_live"
FIRST = 10_000_000  # customers no batch row has: each push is one event of a customer of its own


def pusher(url: str, customers: itertools.count[int], acknowledged: list[int], attempted: list[int],
           stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=5) as client:
        while not stop.is_set():
            customer = next(customers)
            attempted.append(customer)
            stamp = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
            body = {"push_source_name": "transactions_push", "df": {
                "transaction_id": [customer], "customer_id": [customer], "event_timestamp": [stamp],
                "created": [stamp], "amount": [1.0], "category": ["grocery"]}}
            try:
                response = client.post("/push", json=body)
            except httpx.TransportError:
                return  # the server is gone: this push was not acknowledged
            if response.status_code == 200:
                acknowledged.append(customer)


@pytest.mark.parametrize(("clients", "workers"), [(1, 1), (8, 2)])
def test_a_killed_server_loses_and_doubles_no_acknowledged_push(tmp_path: Path, redis_url: str, clients: int,
                                                                 workers: int) -> None:
    repo = make_repo(tmp_path / "repo", with_db(redis_url, SERVER_REDIS_DB), unique_prefix(), customers=30)
    customers = itertools.count(FIRST)
    acknowledged: list[int] = []
    attempted: list[int] = []
    try:
        with run_server(repo, tmp_path / "server.log", "--workers", str(workers)) as server:
            stop = threading.Event()
            threads = [threading.Thread(target=pusher, args=(server.url, customers, acknowledged, attempted, stop))
                       for _ in range(clients)]
            for thread in threads:
                thread.start()
            time.sleep(random.Random(clients).uniform(1.5, 3.0))
            for pid in [server.proc.pid, *children(server.proc.pid)]:  # the whole server, workers included
                os.kill(pid, signal.SIGKILL)
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
        assert len(acknowledged) > 10, "too few pushes to say anything"
        with FeatureStore(repo) as store:
            online = dict(zip(attempted, store.get_online_features([FEATURE], {"customer_id": attempted})
                              .values["txn_count_1h_live"], strict=True))
            now = datetime.now(UTC)
            offline = store.get_historical_features(
                pd.DataFrame({"customer_id": attempted, "event_timestamp": [now] * len(attempted)}), [FEATURE],
            ).to_df().set_index("customer_id")["txn_count_1h_live"].to_dict()
        for customer in acknowledged:
            assert (online[customer], offline[customer]) == (1, 1), customer
        for customer in set(attempted) - set(acknowledged):
            assert online[customer] in (0, 1) and offline[customer] in (0, 1), customer
    finally:
        delete_keys(repo)


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (uvicorn's workers), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found
