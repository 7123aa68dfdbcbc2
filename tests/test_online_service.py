"""The online service: its caches (compiled read plans are bounded, whatever feature lists clients send, oldest
out first), and its asyncio reads."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from feature_store.online import service
from feature_store.store import FeatureStore


def test_plan_cache_is_bounded_and_a_plan_in_use_stays_served(example_repo: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "PLAN_CACHE_SIZE", 3)
    with FeatureStore(example_repo) as store:
        store.apply()
        store.materialize()
        lists = [["customer_spend:spend_7d"], ["customer_profile:age"], ["customer_habits:txn_count_1h"],
                 ["customer_spend:spend_7d", "customer_profile:age"], ["customer_spend:lifetime_spend"]]
        first = store.get_online_features(lists[0], {"customer_id": [1]}).to_dict()
        for features in lists[1:]:
            store.get_online_features(features, {"customer_id": [1]})
            store.get_online_features(lists[0], {"customer_id": [1]})  # used again: stays
        assert len(store.online._plans) == 3
        assert any(key[2] == tuple(lists[0]) for key in store.online._plans)
        assert store.get_online_features(lists[0], {"customer_id": [1]}).to_dict() == first


def test_integer_keys_numpy_ints_and_digit_strings_are_coerced_the_rest_is_an_error(example_repo: Path) -> None:
    import numpy as np

    from feature_store.errors import EntityDataFrameError

    with FeatureStore(example_repo) as store:
        store.apply()
        store.materialize()
        refs = ["customer_spend:txn_count_30d"]
        want = store.get_online_features(refs, {"customer_id": [1, 2]}).values
        assert store.get_online_features(refs, {"customer_id": np.array([1, 2], dtype="int64")}).values == want
        assert store.get_online_features(refs, {"customer_id": ["1", "+2"]}).values == want
        for bad in [2**64, "1" * 30, 1.5, True, "1_0", " 1"]:
            with pytest.raises(EntityDataFrameError, match="customer_id"):
                store.get_online_features(refs, {"customer_id": [bad]})


def test_only_a_rebuild_in_place_walks_the_store(example_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A view's first run writes fresh values and walks nothing (a shared Redis would be walked whole for nothing);
    a rebuild in place (--full) writes every value over the old one, then deletes those it did not write."""
    with FeatureStore(example_repo) as store:
        store.apply()
        scanned: list[bytes] = []
        original = store.online.store.scan
        monkeypatch.setattr(store.online.store, "scan", lambda prefix: scanned.append(prefix) or original(prefix))
        store.materialize(views=["customer_profile"])
        assert scanned == []
        signature = store.online.state().live["customer_profile"].signature
        stale = store.online.prefix("customer_profile", signature) + b"\x91\xcd\x03\xe7"  # customer 999, no rows
        store.online.store.write([(stale, b"\x93\x00\x00\x00", None)])  # as written by an older run (end 0)
        refs = ["customer_profile:age"]
        assert store.get_online_features(refs, {"customer_id": [999]}).values["age"] == [None]  # too old a row
        store.materialize(views=["customer_profile"], full=True)
        assert scanned == [store.online.prefix("customer_profile", signature)]
        assert store.online.store.read([stale]) == [None]
        assert store.get_online_features(refs, {"customer_id": [1]}).statuses["age"] == ["PRESENT"]


def test_a_store_that_lost_its_data_is_rebuilt(example_repo: Path) -> None:
    """The store keeps its own identity beside the values (a random id): after it loses its data (a restarted
    Redis without persistence, a flush, an upgrade to another key layout) the next plain materialize finds no
    id, so no generation, and rebuilds every view; before, it restored 1 entity of 2,000."""
    from feature_store.online.keys import store_id_key

    with FeatureStore(example_repo) as store:
        store.apply()
        store.materialize()
        refs = ["customer_spend:txn_count_30d", "customer_profile:age", "customer_habits:txn_count_1h"]
        ids = {"customer_id": list(range(1, 151))}
        expected = store.get_online_features(refs, ids).to_dict()
        online = store.online
        online.store.delete_prefixes([online.every_prefix(v) for v in store.catalog().views])
        online.store.delete([store_id_key("fs", store.project)])
        store.refresh_serving()  # what a reader does within registry_refresh_seconds
        lost = store.get_online_features(refs, ids)
        assert set(lost.statuses["age"]) == {"NOT_MATERIALIZED"}
        results = [r for r in store.materialize() if r.part == "online"]
        assert all(r.rebuilt for r in results) and len(results) == 3
        assert store.get_online_features(refs, ids).to_dict() == expected


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_async_reads_equal_sync_reads(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """get_online_features_async (the feature server's path) gives what get_online_features gives: values,
    statuses and timestamps, for found and unknown entities, and the same errors."""
    import asyncio

    from feature_store.errors import EntityDataFrameError, FeatureNotFoundError
    from tests.server_fixtures import delete_keys, make_repo, unique_prefix

    if kind == "redis":
        repo = make_repo(tmp_path / "repo", request.getfixturevalue("redis_url"), unique_prefix(), push=False)
    else:
        repo = request.getfixturevalue("example_repo")
    try:
        with FeatureStore(repo) as store:
            if kind == "sqlite":
                store.apply()
                store.materialize()
            refs = ["customer_spend:avg_spend_90d", "customer_spend:last_category", "customer_profile:age",
                    "customer_habits:txn_count_1h"]
            rows = {"customer_id": [1, 2, 10**9, 3, 1]}
            for now in (None, datetime(2026, 1, 1, tzinfo=UTC)):
                want = store.get_online_features(refs, rows, now=now)
                got = asyncio.run(store.get_online_features_async(refs, rows, now=now))
                assert (got.values, got.statuses, got.stamps_us) == (want.values, want.statuses, want.stamps_us)
            with pytest.raises(EntityDataFrameError, match="customer_id"):
                asyncio.run(store.get_online_features_async(refs, {"id": [1]}))
            with pytest.raises(FeatureNotFoundError):
                asyncio.run(store.get_online_features_async(["customer_spend:nope"], rows))
    finally:
        if kind == "redis":
            delete_keys(repo)


def test_switching_online_stores_rebuilds_the_new_one_and_keeps_the_old_one_right(
        example_repo: Path, redis_url: str, key_prefix: str) -> None:
    """The registry keeps each store's generations by the store's identity: switching from SQLite to Redis
    writes every entity into Redis (before, 0 rows: the watermark did not know its store), and switching back
    continues SQLite from its own watermark."""
    from tests.conftest import delete_under, own_database

    config = example_repo / "feature_store.yaml"
    sqlite_config = config.read_text()
    refs = ["customer_spend:txn_count_30d", "customer_profile:age", "customer_habits:txn_count_1h"]
    ids = {"customer_id": list(range(1, 151))}
    url = own_database(redis_url)
    try:
        with FeatureStore(example_repo) as store:
            store.apply()
            store.materialize()
            expected = store.get_online_features(refs, ids).to_dict()
        redis_line = f"online_store: {{type: redis, url: {url!r}, key_prefix: {key_prefix}}}"
        config.write_text(re.sub(r"(?m)^online_store:.*$", redis_line, sqlite_config))
        with FeatureStore(example_repo) as store:
            assert set(store.get_online_features(refs, ids).statuses["age"]) == {"NOT_MATERIALIZED"}
            results = [r for r in store.materialize() if r.part == "online"]
            assert all(r.rebuilt for r in results) and len(results) == 3
            assert store.get_online_features(refs, ids).to_dict() == expected
            assert store.verify().ok
        config.write_text(sqlite_config)
        with FeatureStore(example_repo) as store:
            results = [r for r in store.materialize() if r.part == "online"]
            assert not any(r.rebuilt for r in results)  # its own generations are still there
            assert store.get_online_features(refs, ids).to_dict() == expected
            assert store.verify().ok
    finally:
        delete_under(url, key_prefix)


def test_a_naive_now_is_utc_whatever_the_hosts_time_zone(example_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A naive ``now`` means UTC, as everywhere in the store: not the serving host's local time, which would
    move every window by the host's offset. The response carries the instant its values are for."""
    import time

    with FeatureStore(example_repo) as store:
        import pandas as pd

        store.apply()

        events = pd.read_parquet(example_repo / "data" / "transactions.parquet")
        last = events.sort_values("created").iloc[-1]  # read a minute after it landed: its 1-hour count is >= 1
        aware = (last["created"].to_pydatetime() + timedelta(minutes=1)).replace(microsecond=0)
        customers = {"customer_id": [int(last["customer_id"]), 1, 2]}
        store.materialize(end=aware)  # the 1-hour window's tiles kept for reads at `aware`
        refs = ["customer_habits:txn_count_1h", "customer_spend:spend_7d", "customer_profile:age"]
        want = store.get_online_features(refs, customers, now=aware)
        assert want.values["txn_count_1h"][0] >= 1  # five hours later (New York's reading) it would be 0
        monkeypatch.setenv("TZ", "America/New_York")
        time.tzset()
        try:
            got = store.get_online_features(refs, customers, now=aware.replace(tzinfo=None))
        finally:
            monkeypatch.delenv("TZ")
            time.tzset()
        assert got.values == want.values and got.statuses == want.statuses
        assert got.request_us == want.request_us == int(aware.timestamp()) * 1_000_000
