"""Teardown removes one project's online values, materialized tables, push log and registry rows, and nothing else:
another project sharing the Redis (same key prefix) and the registry keeps everything; the user's own data
stays; an interrupted or killed teardown finishes when run again; the CLI asks before it removes anything."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest

import feature_store as fs
from feature_store.errors import NotAppliedError
from feature_store.online.keys import namespaces
from feature_store.store import FeatureStore

REFS = ["spend:spend_30d", "spend:n"]


def definitions() -> list[Any]:
    customer = fs.Entity(name="customer", join_keys=["customer_id"])
    batch = fs.FileSource(name="tx", path="data/tx.parquet", timestamp_field="ts")
    push = fs.PushSource(name="tx_push", batch_source=batch)
    return [customer, batch, push, fs.FeatureView(name="spend", entities=[customer], source=push, features=[
        fs.Sum("amount", window="30d", name="spend_30d"), fs.Count(window="7d", name="n")])]


def make_project(root: Path, name: str, online: dict[str, str]) -> Path:
    """A repo of its own (own data folder) whose registry is shared with the other projects under ``root``."""
    repo = root / name
    (repo / "data").mkdir(parents=True)
    inner = ", ".join(f"{k}: {v!r}" if k == "url" else f"{k}: {v}" for k, v in online.items())
    (repo / "feature_store.yaml").write_text(
        f"project: {name}\nregistry: {root / 'registry.db'}\nonline_store: {{{inner}}}\n")
    now = datetime.now(UTC)
    pd.DataFrame({"customer_id": list(range(50)), "ts": [now - timedelta(hours=i) for i in range(50)],
                  "amount": [float(i) for i in range(50)]}).to_parquet(repo / "data" / "tx.parquet")
    with duckdb.connect(str(repo / "data" / "offline.duckdb")) as con:  # a table of the user's own
        con.execute("CREATE TABLE mine AS SELECT 42 AS answer")
    with FeatureStore(repo) as store:
        store.push_log.settle_seconds = 0.0
        store.apply(definitions())
        store.materialize()
        store.push("tx_push", [{"customer_id": 1, "ts": now, "amount": 5.0}])
    return repo


def online_objects(store: FeatureStore) -> int:
    """How many keys (SQLite) or hashes (Redis) the project holds online, in any layout."""
    online = store.online.store
    total = 0
    for namespace in namespaces(getattr(store.config.online_store, "key_prefix", "fs"), store.project):
        if hasattr(online, "client"):
            total += sum(1 for _ in online.client.scan_iter(match=namespace + b"*", count=1000))
        else:  # the file's rows whose entity (or, in the legacy table, key) starts with the namespace
            with sqlite3.connect(online.path) as con:
                for table, column in (("fs_online_by_entity", "entity"), ("fs_online", "key")):
                    if con.execute("SELECT 1 FROM sqlite_master WHERE name = ?", [table]).fetchone():
                        total += con.execute(f"SELECT count(*) FROM {table} WHERE substr({column}, 1, ?) = ?",
                                             [len(namespace), namespace]).fetchone()[0]
    return total


def tables(repo: Path) -> set[str]:
    with duckdb.connect(str(repo / "data" / "offline.duckdb")) as con:
        return {str(name) for (name,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}


def assert_gone(repo: Path) -> None:
    with FeatureStore(repo) as store:
        assert online_objects(store) == 0
        with pytest.raises(NotAppliedError):
            store.get_online_features(REFS, {"customer_id": [1]})
    assert tables(repo) == {"mine"}  # the user's table stays
    assert not list((repo / "data" / "push_log").glob("*/*.jsonl"))
    assert (repo / "data" / "tx.parquet").exists()


@pytest.fixture
def projects(tmp_path: Path, online_store: dict[str, str]) -> tuple[Path, Path, dict[str, list[Any]]]:
    gone, kept = make_project(tmp_path, "gone", online_store), make_project(tmp_path, "kept", online_store)
    with FeatureStore(kept) as store:
        values = store.get_online_features(REFS, {"customer_id": [0, 1, 2]}).to_dict()
    return gone, kept, values


def test_teardown_removes_one_project_and_nothing_else(projects: tuple[Path, Path, dict[str, list[Any]]]) -> None:
    gone, kept, values = projects
    with FeatureStore(gone) as store:
        assert online_objects(store) > 0
        report = store.teardown()
    assert report.online_keys > 0 and report.registry_rows > 0 and report.push_log_files == 1
    assert report.offline_tables and all(name.startswith("fs_") for name in report.offline_tables)
    assert_gone(gone)
    with FeatureStore(kept) as store:  # same Redis prefix, same registry: untouched
        assert store.get_online_features(REFS, {"customer_id": [0, 1, 2]}).to_dict() == values
        assert store.verify().ok
    with FeatureStore(gone) as store:  # a second teardown finds nothing left
        again = store.teardown()
        assert (again.online_keys, again.offline_tables, again.push_log_files, again.registry_rows) == (0, (), 0, 0)
        store.apply(definitions())  # and the project starts over cleanly
        store.materialize()
        assert store.get_online_features(REFS, {"customer_id": [1]}).to_dict()["spend_30d"] == [1.0]
        assert store.verify().ok


@pytest.mark.parametrize("step", ["online", "offline", "push_log"])
def test_an_interrupted_teardown_finishes_when_run_again(projects: tuple[Path, Path, dict[str, list[Any]]],
                                                         step: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut short right after each step (the registry rows, which tell what to remove, go last)."""
    gone, _, _ = projects
    with FeatureStore(gone) as store:
        after = {"online": (type(store.online), "teardown"), "offline": (type(store.offline), "drop_materialized"),
                 "push_log": (type(store.push_log), "remove")}[step]
        original = getattr(*after)

        def then_die(self: Any, *args: Any) -> Any:
            original(self, *args)
            raise KeyboardInterrupt

        monkeypatch.setattr(*after, then_die)
        with pytest.raises(KeyboardInterrupt):
            store.teardown()
        monkeypatch.undo()
        store.teardown()
    assert_gone(gone)


@pytest.mark.slow
def test_a_killed_teardown_finishes_when_run_again(projects: tuple[Path, Path, dict[str, list[Any]]]) -> None:
    """kill -9 of the CLI at random moments of teardowns, then a rerun: the project is gone, the other intact."""
    gone, kept, values = projects
    cli = [sys.executable, "-m", "feature_store", "--repo", str(gone), "teardown", "--yes"]
    rng = random.Random(7)
    for _ in range(3):
        process = subprocess.Popen(cli, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(rng.uniform(0.3, 1.5))  # start-up is ~0.5 s: before, during or after the removals
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    done = subprocess.run(cli, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert_gone(gone)
    with FeatureStore(kept) as store:
        assert store.get_online_features(REFS, {"customer_id": [0, 1, 2]}).to_dict() == values


@pytest.mark.slow  # CLI processes: make test, not make test-fast
def test_the_cli_asks_before_removing(projects: tuple[Path, Path, dict[str, list[Any]]]) -> None:
    gone, _, _ = projects
    cli = [sys.executable, "-m", "feature_store", "--repo", str(gone), "teardown"]
    refused = subprocess.run(cli, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert "online values" in refused.stdout  # it said what it would remove
    with FeatureStore(gone) as store:
        assert store.get_online_features(REFS, {"customer_id": [1]}).statuses["n"] == ["PRESENT"]
    done = subprocess.run([*cli, "--yes"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Removed project 'gone'" in done.stdout
    assert_gone(gone)
