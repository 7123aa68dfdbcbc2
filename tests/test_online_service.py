"""The online service: its caches (compiled read plans are bounded, whatever feature lists clients send), and
its asyncio reads."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from feature_store.online import service
from feature_store.store import FeatureStore


def test_plan_cache_keeps_the_most_recently_used(example_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
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
        assert any(key[1] == tuple(lists[0]) for key in store.online._plans)
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


def test_old_keys_are_deleted_only_where_there_can_be_some(example_repo: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A view never materialized online has no keys: its first run deletes nothing (a shared Redis would be
    walked whole for nothing). A rebuild of a materialized view, and --full, delete what the view had."""
    with FeatureStore(example_repo) as store:
        store.apply()
        deleted: list[list[bytes]] = []
        original = store.online.store.delete_prefixes
        monkeypatch.setattr(store.online.store, "delete_prefixes",
                            lambda prefixes, keep=(): deleted.append(list(prefixes)) or original(prefixes, keep))
        store.materialize(views=["customer_profile"])
        assert deleted == [[]]
        stale = store.online.prefix("customer_profile", "an_older_definition") + b"stale"
        store.online.store.write([(stale, b"\x90", None)])
        store.materialize(views=["customer_profile", "customer_spend"], full=True)
        assert deleted[-1] == [store.online.every_prefix(view) for view in ("customer_profile", "customer_spend")]
        assert store.online.store.read([stale]) == [None]


def test_values_of_an_older_layout_are_rebuilt(example_repo: Path) -> None:
    """After an upgrade that changes the online layout, no read finds the values stored before: the registry
    records the layout with each view's online watermark, so the next materialize rebuilds the view instead of
    adding only what changed since."""
    from sqlalchemy import select, update

    from feature_store.online.keys import LAYOUT_VERSION, stored_as
    from feature_store.plan import view_signature
    from feature_store.registry import online_state

    with FeatureStore(example_repo) as store:
        store.apply()
        store.materialize(views=["customer_profile"])
        refs = ["customer_profile:age"]
        expected = store.get_online_features(refs, {"customer_id": [1, 2]}).to_dict()
        signature = view_signature(store.catalog(), "customer_profile")
        view = online_state.c.view == "customer_profile"
        with store.registry.engine.begin() as conn:
            assert conn.execute(select(online_state.c.signature).where(view)).scalar_one() == stored_as(signature)
            assert stored_as(signature) == f"{signature}/v{LAYOUT_VERSION}"
            # what a store of the older layout recorded, and its values, which no read finds
            conn.execute(update(online_state).where(view).values(signature=f"{signature}/v{LAYOUT_VERSION - 1}"))
        store.online.store.delete_prefix(store.online.every_prefix("customer_profile"))
        results = [r for r in store.materialize(views=["customer_profile"]) if r.part == "online"]
        assert [r.rebuilt for r in results] == [True]
        assert store.get_online_features(refs, {"customer_id": [1, 2]}).to_dict() == expected
        results = [r for r in store.materialize(views=["customer_profile"]) if r.part == "online"]
        assert [r.rebuilt for r in results] == [False]  # recorded with this layout now


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
