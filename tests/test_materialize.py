"""Offline materialization: incremental, idempotent, invalidated by definition or data changes."""

from __future__ import annotations

import itertools
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feature_store import Count, Entity, FeatureView, Field, FileSource, Last, Max, Mean, StdDev, Sum
from feature_store.store import FeatureStore

START = datetime(2026, 1, 1, tzinfo=UTC)


def write_events(path: Path, n: int = 3000, seed: int = 1, offset_days: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = pd.Timestamp(START + timedelta(days=offset_days)) + pd.to_timedelta(rng.integers(0, 30 * 86400, n), "s")
    df = pd.DataFrame({
        "customer_id": rng.integers(0, 40, n).astype("int64"),
        "event_timestamp": ts,
        "created": ts + pd.to_timedelta(rng.integers(0, 7200, n), "s"),
        "amount": np.round(rng.normal(50, 20, n), 2),
        "category": rng.choice(["a", "b", "c"], n),
    })
    df.to_parquet(path, index=False)
    return df


def definitions(window: str = "7d", path: str = "data/tx/*.parquet") -> list[object]:
    customer = Entity(name="customer", join_keys=["customer_id"])
    tx = FileSource(name="tx", path=path, created_timestamp_field="created")
    spend = FeatureView(name="spend", entities=[customer], source=tx, hop="1h", features=[
        Sum("amount", window=window, name="s"), Mean("amount", window="3d", name="m"), Count(window="1d", name="c"),
        Max("amount", window="2d", name="mx"), Last("category", window="2d", name="l"),
        StdDev("amount", window="5d", name="sd", hop="1d"),
    ])
    profile_src = FileSource(name="profiles", path="data/profiles.parquet", timestamp_field="updated_at")
    profile = FeatureView(name="profile", entities=[customer], source=profile_src,
                          features=[Field("tier", "string")], ttl="10d")
    return [customer, tx, spend, profile_src, profile]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "data" / "tx").mkdir(parents=True)
    (tmp_path / "feature_store.yaml").write_text("project: mat\n")
    write_events(tmp_path / "data" / "tx" / "part1.parquet")
    rng = np.random.default_rng(2)
    pd.DataFrame({
        "customer_id": rng.integers(0, 40, 200).astype("int64"),
        "updated_at": pd.Timestamp(START) + pd.to_timedelta(rng.integers(0, 40 * 86400, 200), "s"),
        "tier": rng.choice(["gold", "silver"], 200),
    }).to_parquet(tmp_path / "data" / "profiles.parquet", index=False)
    return tmp_path


def queries(n: int = 500, days: int = 45) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame({
        "customer_id": rng.integers(0, 45, n).astype("int64"),
        "event_timestamp": pd.Timestamp(START) + pd.to_timedelta(rng.integers(0, days * 86400, n), "s"),
    })


FEATURES = ["spend:s", "spend:m", "spend:c", "spend:mx", "spend:l", "spend:sd", "profile:tier"]


def training(store: FeatureStore) -> pd.DataFrame:
    return store.get_historical_features(queries(), FEATURES).to_df()


def meta(store: FeatureStore) -> list[tuple[object, ...]]:
    con = store.offline.con  # type: ignore[attr-defined]  # the DuckDB engine's own connection
    rows: list[tuple[object, ...]] = con.execute(
        "SELECT view, part, watermark FROM fs_materialized_v1 ORDER BY view, part").fetchall()
    return rows


def test_results_equal_with_and_without_materialization(repo: Path) -> None:
    store = FeatureStore(repo)
    store.apply(definitions())
    before = training(store)
    results = store.materialize(end=START + timedelta(days=20, hours=5, minutes=17))
    assert {r.part for r in results} == {"hop 1h", "hop 1d", "snapshot", "online"}
    assert all(r.rows_written > 0 for r in results)
    pd.testing.assert_frame_equal(training(store), before, rtol=1e-9)


def test_watermark_is_end_rounded_down_to_the_hop(repo: Path) -> None:
    store = FeatureStore(repo)
    store.apply(definitions())
    end = START + timedelta(days=20, hours=5, minutes=17)
    by_part = {r.part: r.watermark for r in store.materialize(end=end)}
    assert by_part["hop 1h"] == START + timedelta(days=20, hours=5)
    assert by_part["hop 1d"] == START + timedelta(days=20)
    assert by_part["snapshot"] == end


def test_incremental_runs_continue_from_the_watermark(repo: Path) -> None:
    store = FeatureStore(repo)
    store.apply(definitions())
    first = {r.part: r for r in store.materialize(end=START + timedelta(days=10))}
    second = {r.part: r for r in store.materialize(end=START + timedelta(days=25))}
    assert not second["hop 1h"].rebuilt
    assert second["hop 1h"].previous_watermark == first["hop 1h"].watermark
    full = {r.part: r for r in FeatureStore(repo).materialize(end=START + timedelta(days=25), full=True)}
    # the two increments wrote exactly the rows one full run writes: nothing twice, nothing lost
    for part in ("hop 1h", "hop 1d", "snapshot"):  # offline parts; online values are overwritten, not added
        assert first[part].rows_written + second[part].rows_written == full[part].rows_written, part


def test_rerun_writes_nothing_and_keeps_results(repo: Path) -> None:
    store = FeatureStore(repo)
    store.apply(definitions())
    store.materialize(end=START + timedelta(days=15))
    before, state = training(store), meta(store)
    again = store.materialize(end=START + timedelta(days=15))
    assert all(r.rows_written == 0 and not r.rebuilt for r in again)
    assert meta(store) == state
    pd.testing.assert_frame_equal(training(store), before)


def test_watermark_never_moves_back(repo: Path) -> None:
    store = FeatureStore(repo)
    store.apply(definitions())
    store.materialize(end=START + timedelta(days=15))
    state = meta(store)
    store.materialize(end=START + timedelta(days=5))
    assert meta(store) == state


def test_end_in_the_future_is_clamped_to_now(repo: Path) -> None:
    store = FeatureStore(repo)
    store.apply(definitions())
    results = store.materialize(end=datetime.now(UTC) + timedelta(days=365))
    assert all(r.watermark <= datetime.now(UTC) for r in results)


def test_changed_definition_rebuilds_that_view_only(repo: Path) -> None:
    store = FeatureStore(repo)
    store.apply(definitions())
    store.materialize(end=START + timedelta(days=15))
    plan = store.plan(definitions(window="14d"))
    assert plan.invalidated_views == ("spend",)
    store.apply(plan)
    expected = training(FeatureStore(repo))  # stale tiles of the old definition are not used
    results = {(r.view, r.part): r for r in store.materialize(end=START + timedelta(days=15))}
    assert results[("spend", "hop 1h")].rebuilt and results[("spend", "online")].rebuilt
    assert not results[("profile", "snapshot")].rebuilt and not results[("profile", "online")].rebuilt
    pd.testing.assert_frame_equal(training(store), expected, rtol=1e-9)


def test_modified_source_file_makes_materialized_data_stale(repo: Path) -> None:
    store = FeatureStore(repo)
    store.apply(definitions())
    store.materialize(end=START + timedelta(days=20))
    path = repo / "data" / "tx" / "part1.parquet"
    write_events(path, seed=99)  # the data is rewritten in place
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    fresh = FeatureStore(repo)
    expected_store = repo.parent / "fresh"
    shutil.copytree(repo, expected_store)
    (expected_store / "data" / "offline.duckdb").unlink()
    expected = training(FeatureStore(expected_store))
    pd.testing.assert_frame_equal(training(fresh), expected, rtol=1e-9)
    assert all(r.rebuilt for r in fresh.materialize(end=START + timedelta(days=20)) if r.view == "spend")


def test_new_files_are_picked_up_incrementally(repo: Path) -> None:
    store = FeatureStore(repo)
    store.apply(definitions())
    store.materialize(end=START + timedelta(days=29))
    write_events(repo / "data" / "tx" / "part2.parquet", seed=5, offset_days=30)  # newer data lands
    results = {r.part: r for r in store.materialize(end=START + timedelta(days=61))}
    assert not results["hop 1h"].rebuilt and results["hop 1h"].rows_written > 0
    fresh_copy = repo.parent / "copy"
    shutil.copytree(repo, fresh_copy)
    (fresh_copy / "data" / "offline.duckdb").unlink()
    rows = queries(days=60)
    pd.testing.assert_frame_equal(
        store.get_historical_features(rows, FEATURES).to_df(),
        FeatureStore(fresh_copy).get_historical_features(rows, FEATURES).to_df(), rtol=1e-9,
    )


def test_materialize_unknown_view_is_an_error(repo: Path) -> None:
    from feature_store.errors import FeatureNotFoundError

    store = FeatureStore(repo)
    store.apply(definitions())
    with pytest.raises(FeatureNotFoundError, match=r"spnd.*Did you mean 'spend'"):
        store.materialize(views=["spnd"])


def test_progress_is_reported(repo: Path) -> None:
    store = FeatureStore(repo)
    store.apply(definitions())
    seen: list[tuple[str, int, int]] = []
    store.materialize(end=START + timedelta(days=20),
                      progress=lambda what, done, total: seen.append((what, done, total)))
    assert {what for what, _, _ in seen} == {"spend hop 1h", "spend hop 1d", "profile snapshot", "spend online",
                                             "profile online"}
    last = {what: (done, total) for what, done, total in seen}
    assert all(done == total for done, total in last.values())
    assert all(0 <= done <= total for _, done, total in seen)


def test_compound_keys_online_in_several_buckets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A view keyed by two join keys (an int and a string), materialized online in several hash buckets (their
    sizes estimated): every entity is written once, and serves what get_historical_features computes."""
    from feature_store.offline.duckdb import online_tiles

    monkeypatch.setattr(online_tiles, "ENTITIES_PER_CHUNK", 7)
    (tmp_path / "data").mkdir()
    (tmp_path / "feature_store.yaml").write_text("project: compound\n")
    rng = np.random.default_rng(5)
    n = 600
    ts = pd.Timestamp(START) + pd.to_timedelta(rng.integers(0, 10 * 86400, n), "s")
    pd.DataFrame({"store_id": rng.integers(0, 6, n).astype("int64"), "sku": rng.choice(["x", "y", "z", "w"], n),
                  "event_timestamp": ts, "qty": rng.integers(1, 5, n).astype("int64")},
                 ).to_parquet(tmp_path / "data" / "sales.parquet", index=False)
    shelf = Entity(name="shelf", join_keys=["store_id", "sku"])
    sales = FileSource(name="sales", path="data/sales.parquet")
    view = FeatureView(name="sold", entities=[shelf], source=sales, hop="1h",
                       features=[Sum("qty", window="2d", name="q2d"), Count(window="1d", name="n1d")])
    end = START + timedelta(days=10)
    seen: list[tuple[str, int, int]] = []
    with FeatureStore(tmp_path) as store:
        store.apply([shelf, sales, view])
        results = store.materialize(end=end, progress=lambda what, done, total: seen.append((what, done, total)))
        online_rows = next(r.rows_written for r in results if r.part == "online")
        assert online_rows == 24  # 6 stores x 4 skus, each once
        assert [(d, t) for w, d, t in seen if w == "sold online"][-1] == (24, 24)
        keys = {"store_id": [s for s in range(7) for _ in "xyzw"], "sku": list("xyzw") * 7}  # store 6: unknown
        now = end + timedelta(minutes=30)
        online = store.get_online_features(["sold:q2d", "sold:n1d"], keys, now=now)
        rows = pd.DataFrame({**keys, "event_timestamp": [now] * len(keys["sku"])})
        offline = store.get_historical_features(rows, ["sold:q2d", "sold:n1d"]).to_df()
        assert online.values["q2d"] == [int(v) for v in offline["q2d"]]
        assert online.values["n1d"] == [int(v) for v in offline["n1d"]]
        assert online.statuses["q2d"][-4:] == ["NOT_FOUND"] * 4


def test_buckets_are_sized_by_tiles_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A few entities with many tiles each are computed in several buckets (a bucket's memory is its tiles), read
    from the offline tiles and the late events alike, and serve what get_historical_features computes."""
    from feature_store.offline.duckdb import online_tiles
    from feature_store.offline.duckdb.online_tiles import ViewCompute

    monkeypatch.setattr(online_tiles, "TILES_PER_CHUNK", 40)
    buckets: list[int] = []  # the bucket count of every bucket query
    queries = ViewCompute.queries

    def counted(self: ViewCompute, bucket: int, count: int, changed: bool) -> list[str]:
        buckets.append(count)
        return queries(self, bucket, count, changed)

    monkeypatch.setattr(ViewCompute, "queries", counted)
    (tmp_path / "data").mkdir()
    (tmp_path / "feature_store.yaml").write_text("project: tiles\n")
    rng = np.random.default_rng(8)
    n = 900
    ts = pd.Timestamp(START) + pd.to_timedelta(rng.integers(0, 5 * 86400, n), "s")  # all landed by the online end
    late = pd.to_timedelta(np.where(rng.random(n) < 0.2, 2 * 3600, 0), "s")  # some land after their tile ended
    pd.DataFrame({"customer_id": rng.integers(0, 3, n).astype("int64"), "event_timestamp": ts, "created": ts + late,
                  "amount": rng.integers(1, 50, n).astype("int64")}).to_parquet(tmp_path / "data" / "tx.parquet")
    customer = Entity(name="customer", join_keys=["customer_id"])
    tx = FileSource(name="tx", path="data/tx.parquet", created_timestamp_field="created")
    view = FeatureView(name="spend", entities=[customer], source=tx, hop="1h",
                       features=[Sum("amount", window="3d", name="s3d"), Count(window=None, name="n")])
    with FeatureStore(tmp_path) as store:
        store.apply([customer, tx, view])
        store.materialize(end=START + timedelta(days=4), online=False)  # the offline tiles end before the online
        end = START + timedelta(days=5, hours=7)
        results = store.materialize(end=end)
        assert next(r.rows_written for r in results if r.part == "online") == 3
        assert min(buckets) > 1  # by its 3 entities alone, the view would be one bucket
        keys = {"customer_id": [0, 1, 2, 3]}
        for now in (end, end + timedelta(hours=5, minutes=3)):
            online = store.get_online_features(["spend:s3d", "spend:n"], keys, now=now)
            rows = pd.DataFrame({**keys, "event_timestamp": [now] * 4})
            offline = store.get_historical_features(rows, ["spend:s3d", "spend:n"]).to_df()
            assert online.values["s3d"] == [int(v) for v in offline["s3d"]]
            assert online.values["n"] == [int(v) for v in offline["n"]]


@pytest.mark.parametrize("buckets", [1, 2, 3, 5, 7, 1000, 4095, 4096])
def test_every_hash_part_is_in_exactly_one_bucket(buckets: int) -> None:
    from feature_store.offline.duckdb.online_tiles import PARTS, parts

    ranges = [parts(bucket, buckets) for bucket in range(buckets)]
    assert ranges[0][0] == 0 and ranges[-1][1] == PARTS
    assert all(stop == first for (_, stop), (first, _) in itertools.pairwise(ranges))  # back to back
    assert all(first < stop for first, stop in ranges)  # none empty


def test_tile_tables_of_an_earlier_version_are_rebuilt(repo: Path) -> None:
    """A tile table whose columns are not those this version computes (here: one without ``maxts__``, as
    before online values were built on the offline tiles) is computed again, not appended to."""
    store = FeatureStore(repo)
    store.apply(definitions())
    expected = training(store)  # from raw events alone
    store.materialize(end=START + timedelta(days=10))
    con = store.offline.con  # type: ignore[attr-defined]  # the DuckDB engine's own connection
    con.execute('ALTER TABLE "fs_tiles__spend__3600000000" DROP COLUMN maxts__')
    results = {r.part: r for r in store.materialize(end=START + timedelta(days=25))}
    assert results["hop 1h"].rebuilt and not results["hop 1d"].rebuilt
    columns = {row[0] for row in con.execute('DESCRIBE "fs_tiles__spend__3600000000"').fetchall()}
    assert "maxts__" in columns
    pd.testing.assert_frame_equal(training(store), expected, rtol=1e-9)
    fresh = {r.part: r for r in FeatureStore(repo).materialize(end=START + timedelta(days=25), full=True)}
    assert results["hop 1h"].rows_written == fresh["hop 1h"].rows_written


def test_online_values_reuse_the_offline_tiles_they_can(repo: Path) -> None:
    """Groups whose partials the offline tile table holds read it; a group with a standard deviation (mean and
    M2 are not kept offline) reads raw events; without materialized tables every group reads raw events."""
    from feature_store.offline.duckdb.materialize import table_columns
    from feature_store.offline.duckdb.online_tiles import ViewCompute
    from feature_store.offline.engine import to_us
    from feature_store.references import ResolvedFeature

    store = FeatureStore(repo)
    store.apply(definitions())
    end = START + timedelta(days=20)
    catalog = store.catalog()
    view = catalog.view("spend")
    items = [ResolvedFeature(view, f, f) for f in view.feature_names]
    con = store.offline.con  # type: ignore[attr-defined]

    def reuse(materialized: bool) -> list[bool]:
        query = store.offline.compiled(catalog, view, items, materialized=materialized)  # type: ignore[attr-defined]
        compute = ViewCompute.of(query, to_us(end), lambda table: table_columns(con, table))
        return [(g.group.hop, g.reuse is not None) for g in compute.groups]

    hour, day = 3_600_000_000, 86_400_000_000
    assert reuse(True) == [(hour, False), (day, False)]  # nothing materialized yet
    store.materialize(end=end)
    assert reuse(True) == [(hour, True), (day, False)]
    assert reuse(False) == [(hour, False), (day, False)]
