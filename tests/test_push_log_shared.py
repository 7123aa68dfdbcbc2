"""The PostgreSQL push log (offline/push_log/postgres.py) through the store and the feature server: pushes count once
in training sets and online, before and after compaction; and two feature servers with working directories of their
own (two hosts, as far as the push log can tell) push to the same sources, clients retrying on the other server,
while a third process compacts: a training set afterwards counts every acknowledged push exactly once."""

from __future__ import annotations

import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pandas as pd
import pytest

from feature_store import FeatureStore
from tests.server_fixtures import delete_keys, make_repo, run_server, unique_prefix

FEATURE = "customer_live:txn_count_1h_live"
FIRST = 30_000_000  # customers no batch row has
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def pg_table(postgres_url: str) -> Iterator[str]:
    from feature_store.offline.push_log.postgres import PostgresPushLog

    table = f"fs_test_log_{uuid.uuid4().hex[:10]}"
    yield table
    with PostgresPushLog(PG_URL, table, Path("/nonexistent")).connect() as con:
        con.execute(f"DROP TABLE IF EXISTS {table}")
        con.execute(f"DROP TABLE IF EXISTS {table}_manifest")


def use_pg_log(repo: Path, table: str, shared: Path) -> None:
    config = repo / "feature_store.yaml"
    line = (f'offline_store: {{type: duckdb, path: data/offline.duckdb, push_log: {{type: postgres, url: "{PG_URL}", '
            f'table: {table}, compacted_path: "{shared}", delete_grace_seconds: 0}}}}')
    config.write_text(re.sub(r"(?m)^offline_store:.*$", line, config.read_text()))


def event(customer: int) -> dict[str, list[object]]:
    stamp = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    return {"transaction_id": [customer], "customer_id": [customer], "event_timestamp": [stamp],
            "created": [stamp], "amount": [1.0], "category": ["grocery"]}


def counts(store: FeatureStore, customers: list[int]) -> tuple[list[int], list[int]]:
    """(online, offline) event counts of each customer in the last hour."""
    online = store.get_online_features([FEATURE], {"customer_id": customers}).values["txn_count_1h_live"]
    offline = store.get_historical_features(
        pd.DataFrame({"customer_id": customers, "event_timestamp": [datetime.now(UTC)] * len(customers)}),
        [FEATURE]).to_df().set_index("customer_id")["txn_count_1h_live"]
    return list(online), [int(offline[c]) for c in customers]


def test_pushes_on_the_postgres_log_count_once_before_and_after_compaction(tmp_path: Path, pg_table: str) -> None:
    repo = make_repo(tmp_path / "repo", "", "", customers=30,
                     online_store={"type": "sqlite", "path": "data/online.db"})
    use_pg_log(repo, pg_table, tmp_path / "shared")
    customers = [FIRST + i for i in range(4)]
    with FeatureStore(repo) as store:
        store.push_log.settle_seconds = 0.0
        for c in customers[:3]:
            store.push("transactions_push", event(c))
        rows = event(customers[3])
        first = store.push("transactions_push", rows, push_id="once")
        again = store.push("transactions_push", rows, push_id="once")
        assert again.duplicate and again.pushed_at == first.pushed_at
        assert counts(store, customers) == ([1] * 4, [1] * 4)
        result = store.compact(["transactions_push"])[0]
        assert (result.rows, result.tail_removed) == (4, 4) and result.parts >= 1
        assert not store.push_log.snapshot("transactions_push").jsonl, "the table's rows are folded into parquet"
        assert counts(store, customers) == ([1] * 4, [1] * 4)
        store.materialize()
        assert counts(store, customers) == ([1] * 4, [1] * 4)


@pytest.mark.slow
def test_two_servers_share_one_push_log(tmp_path: Path, redis_url: str, pg_table: str) -> None:
    prefix = unique_prefix()
    shared = tmp_path / "shared"  # the compacted parts: storage both hosts reach
    first = make_repo(tmp_path / "host1", redis_url, prefix, customers=30)
    use_pg_log(first, pg_table, shared)
    second = tmp_path / "host2"
    shutil.copytree(first, second)  # a working directory of its own: its files are not the first host's
    acknowledged: list[int] = []
    problems: list[str] = []
    lock = threading.Lock()
    try:
        with run_server(first, tmp_path / "s1.log", "--workers", "2") as one, \
                run_server(second, tmp_path / "s2.log", "--workers", "2") as two:
            urls = [one.url, two.url]

            def client(n: int) -> None:
                for i in range(60):
                    number = n * 1000 + i
                    body = {"push_source_name": "transactions_push", "df": event(FIRST + number)}
                    key = f"push-{number}" if i % 2 else None
                    for attempt in range(2 if key else 1):  # a retry goes to the other server, with the same key
                        url = urls[(n + i + attempt) % 2]
                        headers = {"Idempotency-Key": key} if key else {}
                        response = httpx.post(f"{url}/push", json=body, headers=headers, timeout=30)
                        if response.status_code != 200:
                            problems.append(f"{number}: {response.status_code} {response.text[:200]}")
                            return
                    with lock:
                        acknowledged.append(FIRST + number)

            threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
            for thread in threads:
                thread.start()
            with FeatureStore(first) as compactor:  # a third process's compaction while both servers push
                for _ in range(3):
                    time.sleep(0.5)
                    compactor.compact()
            for thread in threads:
                thread.join(timeout=120)
        assert not problems, problems[:5]
        assert len(acknowledged) == 240
        customers = sorted(acknowledged)
        with FeatureStore(second) as store:
            assert counts(store, customers) == ([1] * 240, [1] * 240)
            store.push_log.settle_seconds = 0.0
            store.materialize()  # compacts what is left first
            assert not store.push_log.snapshot("transactions_push").jsonl
            assert counts(store, customers) == ([1] * 240, [1] * 240)
    finally:
        delete_keys(first)
