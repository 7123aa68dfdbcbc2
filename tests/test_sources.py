"""Every kind of source gives the same features: parquet, csv, globs, DuckDB tables and queries."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import sqlalchemy

from feature_store import Count, DuckDBSource, Entity, FeatureView, Field, FileSource, Last, Sum
from feature_store.errors import DefinitionError, SourceNotFoundError
from feature_store.store import FeatureStore


@pytest.fixture
def events() -> pd.DataFrame:
    rng = np.random.default_rng(4)
    ts = pd.Timestamp("2026-03-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 20 * 86400, 800), "s")
    return pd.DataFrame({
        "user_id": rng.integers(0, 25, 800).astype("int64"),
        "ts": ts,
        "price": np.round(rng.uniform(1, 100, 800), 2),
        "label": rng.choice(["x", "y", "z"], 800),
    })


@pytest.fixture
def queries() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    return pd.DataFrame({
        "user_id": rng.integers(0, 27, 300).astype("int64"),
        "event_timestamp": pd.Timestamp("2026-03-01", tz="UTC")
        + pd.to_timedelta(rng.integers(0, 22 * 86400, 300), "s"),
    })


def features_for(source: FileSource | DuckDBSource) -> list[object]:
    user = Entity(name="user", join_keys=["user_id"])
    view = FeatureView(name="buys", entities=[user], source=source, features=[
        Sum("price", window="3d", name="spent"), Count(window="1d", name="n"), Last("label", window="7d", name="last"),
    ])
    latest = FeatureView(name="latest", entities=[user], source=source, features=[Field("label", "string")])
    return [user, view, latest]


REFS = ["buys:spent", "buys:n", "buys:last", "latest:label"]


def run(repo: Path, source: FileSource | DuckDBSource, queries: pd.DataFrame) -> pd.DataFrame:
    store = FeatureStore(repo)
    store.apply(features_for(source))
    return store.get_historical_features(queries, REFS).to_df()


@pytest.fixture
def repo(tmp_path: Path, events: pd.DataFrame) -> Path:
    (tmp_path / "feature_store.yaml").write_text("project: src\n")
    data = tmp_path / "data"
    (data / "parts").mkdir(parents=True)
    events.to_parquet(data / "events.parquet", index=False)
    events.to_csv(data / "events.csv", index=False)
    for i in range(3):
        events.iloc[i::3].to_parquet(data / "parts" / f"p{i}.parquet", index=False)
    with duckdb.connect(str(data / "offline.duckdb")) as con:
        con.register("events_df", events)
        con.execute("CREATE TABLE events AS SELECT * FROM events_df")
    return tmp_path


def test_all_source_kinds_agree(repo: Path, queries: pd.DataFrame) -> None:
    expected = run(repo, FileSource(name="s", path="data/events.parquet", timestamp_field="ts"), queries)
    variants = [
        FileSource(name="s", path="data/events.csv", timestamp_field="ts"),
        FileSource(name="s", path="data/parts/*.parquet", timestamp_field="ts"),
        FileSource(name="s", path=str(repo / "data" / "events.parquet"), timestamp_field="ts"),
        DuckDBSource(name="s", table="events", timestamp_field="ts"),
        DuckDBSource(name="s", query="SELECT * FROM events WHERE price > 0", timestamp_field="ts"),
    ]
    assert expected["n"].sum() > 0
    for source in variants:
        got = run(repo, source, queries)
        pd.testing.assert_frame_equal(got, expected, rtol=1e-9, obj=repr(source))


def test_missing_file_is_reported_with_the_path(repo: Path, queries: pd.DataFrame) -> None:
    with pytest.raises(SourceNotFoundError, match=r"source 's': path 'data/nope/\*.parquet' matches no file"):
        run(repo, FileSource(name="s", path="data/nope/*.parquet", timestamp_field="ts"), queries)


def test_duckdb_source_needs_table_or_query() -> None:
    with pytest.raises(DefinitionError, match="exactly one of table= or query="):
        DuckDBSource(name="s", timestamp_field="ts")
    with pytest.raises(DefinitionError, match="exactly one of table= or query="):
        DuckDBSource(name="s", table="t", query="SELECT 1", timestamp_field="ts")


REFUSED = r"exactly one SELECT|not valid SQL"
INJECTIONS = [
    "SELECT * FROM events; COPY (SELECT 42) TO '{pwned}'",
    "SELECT * FROM events) AS t; COPY (SELECT 42) TO '{pwned}'; SELECT * FROM (SELECT * FROM events",
    "COPY (SELECT 42) TO '{pwned}'",
    "ATTACH '{pwned}' AS other",
]


@pytest.mark.parametrize("query", INJECTIONS)
def test_a_query_that_is_not_one_select_is_refused_at_apply(repo: Path, query: str) -> None:
    pwned = repo / "pwned.csv"
    store = FeatureStore(repo)
    with pytest.raises(DefinitionError, match=REFUSED):
        store.apply(features_for(DuckDBSource(name="s", query=query.format(pwned=pwned), timestamp_field="ts")))
    assert not pwned.exists()
    assert store.registry.version() == 0


@pytest.mark.parametrize("query", INJECTIONS)
def test_a_crafted_query_in_the_registry_is_never_run(repo: Path, queries: pd.DataFrame, query: str) -> None:
    """A registry row is data: a query edited there to run more than one SELECT fails before DuckDB runs any of it,
    for training sets and materialization; online reads never run registry SQL at all (they need no data)."""
    pwned = repo / "pwned.csv"
    store = FeatureStore(repo)
    store.apply(features_for(DuckDBSource(name="s", query="SELECT * FROM events", timestamp_field="ts")))
    store.close()
    engine = sqlalchemy.create_engine(store.config.registry_url(repo))
    with engine.begin() as conn:
        spec = json.loads(conn.execute(sqlalchemy.text(
            "SELECT spec FROM fs_objects WHERE kind = 'source' AND name = 's'")).scalar_one())
        spec["query"] = query.format(pwned=pwned)
        conn.execute(sqlalchemy.text("UPDATE fs_objects SET spec = :spec WHERE kind = 'source' AND name = 's'"),
                     {"spec": json.dumps(spec)})
    engine.dispose()
    store = FeatureStore(repo)
    with pytest.raises(DefinitionError, match=REFUSED):
        store.get_historical_features(queries, REFS).to_df()
    with pytest.raises(DefinitionError, match=REFUSED):
        store.materialize()
    assert store.get_online_features(REFS, {"user_id": [1]}).statuses["spent"] == ["NOT_MATERIALIZED"]
    store.close()
    assert not pwned.exists()


def test_a_select_with_comments_and_a_semicolon_still_reads(repo: Path, queries: pd.DataFrame) -> None:
    expected = run(repo, DuckDBSource(name="s", table="events", timestamp_field="ts"), queries)
    query = "/* paid */ SELECT * FROM events -- every row\nWHERE price > 0;"
    got = run(repo, DuckDBSource(name="s", query=query, timestamp_field="ts"), queries)
    pd.testing.assert_frame_equal(got, expected, rtol=1e-9)


def test_a_file_rewritten_in_place_is_read_anew_by_the_next_store(repo: Path, events: pd.DataFrame,
                                                                   queries: pd.DataFrame) -> None:
    """File sources are described and read in one scratch database per process (offline/duckdb/scratch.py): what
    it read of a file before must not be served after the file changed."""
    source = FileSource(name="s", path="data/events.parquet", timestamp_field="ts")
    before = run(repo, source, queries)
    changed = events.assign(price=events["price"] * 2, label="w")
    changed.to_parquet(repo / "data" / "events.parquet", index=False)
    after = run(repo, source, queries)
    assert after["spent"].sum() == pytest.approx(2 * before["spent"].sum())
    assert set(after["label"].dropna()) == {"w"}


def test_a_forked_child_reads_file_sources(repo: Path, queries: pd.DataFrame) -> None:
    """A process forked after its parent read sources (a pre-forking server) reads them itself: the parent's
    scratch database, whose threads did not survive the fork, is not used in the child."""
    import multiprocessing

    source = FileSource(name="s", path="data/events.parquet", timestamp_field="ts")
    expected = run(repo, source, queries)
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        got = pool.apply_async(run, (repo, source, queries)).get(timeout=120)
    pd.testing.assert_frame_equal(got, expected)
