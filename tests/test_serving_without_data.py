"""A serving host holds the repo files, the registry and the online store, and no offline data: reads (SDK and
HTTP, blocking and on an event loop), the feature server's start-up and registry description, and pushes to the
online store all work; nothing on the serving path imports DuckDB or runs registry SQL."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from feature_store import FeatureStore
from tests.server_fixtures import delete_keys, make_repo, run_server, unique_prefix

REFS = ["customer_spend:spend_7d", "customer_spend:txn_count_30d", "customer_profile:age",
        "customer_habits:spend_stddev_30d"]


def _strip(repo: Path) -> None:
    """What a serving host lacks: every source file and the offline database (the registry stays)."""
    for name in ("transactions.parquet", "profiles.parquet", "entity_rows.parquet", "offline.duckdb"):
        (repo / "data" / name).unlink()
    shutil.rmtree(repo / "data" / "push_log", ignore_errors=True)


def _event(customer: int) -> dict[str, list[object]]:
    stamp = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    return {"transaction_id": [None], "customer_id": [customer], "event_timestamp": [stamp], "created": [stamp],
            "amount": [7.5], "category": ["books"]}


def test_sdk_reads_and_pushes_without_offline_data(example_repo: Path) -> None:
    with FeatureStore(example_repo) as store:
        store.apply()
        store.materialize()
        rows = {"customer_id": [1, 2, 3, 10**6]}
        expected = store.get_online_features(REFS, rows).to_dict()
    _strip(example_repo)
    with FeatureStore(example_repo) as store:
        assert store.get_online_features(REFS, rows).to_dict() == expected
        assert asyncio.run(store.get_online_features_async(REFS, rows)).to_dict() == expected
        before = store.get_online_features(["customer_spend:txn_count_30d"], {"customer_id": [4]}).values
        store.push("transactions_push", _event(4), to="online")
        store.push("transactions_push", _event(4))  # logged too: the log starts again on this host
        after = store.get_online_features(["customer_spend:txn_count_30d"], {"customer_id": [4]}).values
        assert after["txn_count_30d"] == [before["txn_count_30d"][0] + 2]
        assert store._offline is None  # the offline engine was never built


def test_reading_imports_no_duckdb(example_repo: Path) -> None:
    """In a process that reads and pushes online, DuckDB is never imported (sys.modules tells)."""
    with FeatureStore(example_repo) as store:
        store.apply()
        store.materialize()
    code = (
        "import sys\nfrom feature_store import FeatureStore\n"
        f"store = FeatureStore({str(example_repo)!r})\n"
        f"store.get_online_features({REFS!r}, {{'customer_id': [1, 2]}})\n"
        f"store.push('transactions_push', {_event(5)!r}, to='online')\n"
        "import feature_store.online.read\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'duckdb'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow  # a real server process: make test, not make test-fast
def test_feature_server_serves_without_offline_data(tmp_path: Path, redis_url: str) -> None:
    repo = make_repo(tmp_path / "repo", redis_url, unique_prefix(), customers=40)
    try:
        with FeatureStore(repo) as store:
            expected = store.get_online_features(REFS, {"customer_id": [1, 2]}).to_dict()
        _strip(repo)
        with run_server(repo, tmp_path / "server.log") as server, server.client() as client:
            assert client.get("/ready").status_code == 200
            described = client.get("/features").json()
            assert {v["name"] for v in described["feature_views"]} >= {"customer_spend", "customer_profile"}
            body = client.post("/get-online-features", json={"features": REFS, "entities": {"customer_id": [1, 2]}})
            assert body.status_code == 200, body.text
            values = {name: result["values"] for name, result in zip(
                body.json()["metadata"]["feature_names"], body.json()["results"], strict=True)}
            for name, column in expected.items():
                assert values[name.split(":")[-1]] == column, name
            pushed = client.post("/push", json={"push_source_name": "transactions_push", "df": _event(3),
                                                "to": "online"})
            assert pushed.status_code == 200, pushed.text
        assert "duckdb" not in server.output().lower()
    finally:
        delete_keys(repo)


SIGNUPS_PY = '''
from feature_store import DuckDBSource, Entity, FeatureView, Field

signups = FeatureView(
    name="signups",
    entities=[Entity(name="customer", join_keys=["customer_id"], description="A card holder.")],
    source=DuckDBSource(name="signups_table", table="signups", timestamp_field="ts"),
    features=[Field("plan", "string")],
)
'''
@pytest.mark.slow  # a real server process and a wait for its lock: make test, not make test-fast

@pytest.mark.slow  # waits on purpose (timers, switch intervals): make test, not make test-fast
def test_a_running_server_never_holds_the_offline_database(tmp_path: Path, redis_url: str) -> None:
    """With a view over a table of the offline DuckDB database, a running feature server must not keep that file
    open (DuckDB locks it per process): materialize, training sets and writers in other processes still work."""
    import duckdb

    repo = make_repo(tmp_path / "repo", redis_url, unique_prefix(), customers=40)
    database = repo / "data" / "offline.duckdb"
    with duckdb.connect(str(database)) as con:
        con.execute("CREATE TABLE signups AS SELECT 1::BIGINT AS customer_id, now()::TIMESTAMPTZ - INTERVAL 1 "
                    "HOUR AS ts, 'gold' AS plan")
    (repo / "signups.py").write_text(SIGNUPS_PY)
    cli = [sys.executable, "-m", "feature_store", "--repo", str(repo)]
    try:
        subprocess.run([*cli, "apply"], check=True, capture_output=True)
        subprocess.run([*cli, "materialize"], check=True, capture_output=True)
        with run_server(repo, tmp_path / "server.log") as server, server.client() as client:
            def plan_of(customer: int) -> object:
                body = client.post("/get-online-features",
                                   json={"features": ["signups:plan"], "entities": {"customer_id": [customer]}})
                assert body.status_code == 200, body.text
                names = body.json()["metadata"]["feature_names"]
                return body.json()["results"][names.index("plan")]["values"][0]

            assert plan_of(1) == "gold"
            with duckdb.connect(str(database)) as con:  # a writer in another process than the server
                # appended after the watermark, as incremental materialization expects
                con.execute("INSERT INTO signups VALUES (2, now()::TIMESTAMPTZ, 'silver')")
            for command in (["materialize"], ["training-set", "--entities", "SELECT 2 AS customer_id, now() AS "
                                              "event_timestamp", "--features", "signups:plan"]):
                done = subprocess.run([*cli, *command], capture_output=True, text=True)
                assert done.returncode == 0, done.stderr
            assert "silver" in done.stdout
            assert plan_of(2) == "silver"
    finally:
        delete_keys(repo)
