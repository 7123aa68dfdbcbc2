"""SparkSource: a table of the Spark session's catalog, or a Spark SQL query over it, gives the same features as
the same rows in parquet files; a query that is not one SELECT never runs; DuckDB refuses it with the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from feature_store import (
    Count,
    Entity,
    FeatureStore,
    FeatureView,
    Field,
    FileSource,
    Last,
    PushSource,
    SparkSource,
    Sum,
)
from feature_store.config import RepoConfig, SparkOfflineConfig, load_config
from feature_store.definitions import from_spec, to_spec
from feature_store.errors import DefinitionError, FeatureStoreError, InvalidIdentifierError
from tests.spark_fixtures import spark_session

pytestmark = pytest.mark.spark
REFS = ["buys:spent", "buys:n", "buys:last", "latest:label"]
START = pd.Timestamp("2026-03-01", tz="UTC")


def events_frame() -> pd.DataFrame:
    rng = np.random.default_rng(4)
    return pd.DataFrame({
        "user_id": rng.integers(0, 25, 800).astype("int64"),
        "ts": START + pd.to_timedelta(rng.integers(0, 20 * 86400, 800), "s"),
        "price": np.round(rng.uniform(1, 100, 800), 2),
        "label": rng.choice(["x", "y", "z"], 800),
    })


def queries() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    return pd.DataFrame({"user_id": rng.integers(0, 27, 300).astype("int64"),
                         "event_timestamp": START + pd.to_timedelta(rng.integers(0, 22 * 86400, 300), "s")})


def features_for(source: Any) -> list[object]:
    user = Entity(name="user", join_keys=["user_id"])
    view = FeatureView(name="buys", entities=[user], source=source, features=[
        Sum("price", window="3d", name="spent"), Count(window="1d", name="n"), Last("label", window="7d", name="last"),
    ])
    latest = FeatureView(name="latest", entities=[user], source=source, features=[Field("label", "string")])
    return [user, view, latest]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repo with the events as parquet, and the same rows as the session's temporary view ``fs_events`` and
    global temporary view ``global_temp.fs_events`` (a dotted catalog name)."""
    root = tmp_path_factory.mktemp("spark_sources")
    (root / "feature_store.yaml").write_text("project: spark_sources\n")
    (root / "data").mkdir()
    frame = events_frame()
    frame.to_parquet(root / "data" / "events.parquet", index=False)
    spark = spark_session()
    rows = spark.read.parquet(str(root / "data" / "events.parquet"))
    rows.createOrReplaceTempView("fs_events")
    rows.createOrReplaceGlobalTempView("fs_events")
    return root


def spark_store(repo: Path) -> FeatureStore:
    config = load_config(repo)
    spark = RepoConfig(**{**config.model_dump(), "offline_store": SparkOfflineConfig(type="spark")})
    return FeatureStore(repo, spark, spark=spark_session())


def run(repo: Path, source: Any) -> pd.DataFrame:
    with spark_store(repo) as store:
        store.apply(features_for(source))
        return store.get_historical_features(queries(), REFS).to_df()


def test_catalog_tables_and_queries_give_the_features_of_the_files(repo: Path) -> None:
    with FeatureStore(repo) as duck:
        duck.apply(features_for(FileSource(name="s", path="data/events.parquet", timestamp_field="ts")))
        expected = duck.get_historical_features(queries(), REFS).to_df()
    assert expected["n"].sum() > 0
    for source in [SparkSource(name="s", table="fs_events", timestamp_field="ts"),
                   SparkSource(name="s", table="global_temp.fs_events", timestamp_field="ts"),
                   SparkSource(name="s", query="SELECT * FROM fs_events WHERE price > 0;", timestamp_field="ts"),
                   SparkSource(name="s", query="WITH e AS (SELECT * FROM fs_events)\nSELECT * FROM e -- all",
                               timestamp_field="ts")]:
        got = run(repo, source)
        pd.testing.assert_frame_equal(got, expected, check_dtype=False, rtol=1e-9, obj=repr(source))


def test_a_query_filters_rows(repo: Path) -> None:
    got = run(repo, SparkSource(name="s", query="SELECT * FROM fs_events WHERE label = 'x'", timestamp_field="ts"))
    assert set(got["label"].dropna()) == {"x"}


INJECTIONS = [
    "DROP VIEW fs_victim",
    "SELECT * FROM fs_events; DROP VIEW fs_victim",
    "SELECT * FROM fs_events) AS t; DROP VIEW fs_victim; SELECT * FROM (SELECT * FROM fs_events",
    "CREATE OR REPLACE TEMPORARY VIEW fs_victim AS SELECT 1 AS x",
]


@pytest.mark.parametrize("query", INJECTIONS)
def test_a_query_that_is_not_one_select_never_runs(repo: Path, query: str) -> None:
    spark = spark_session()
    spark.sql("CREATE OR REPLACE TEMPORARY VIEW fs_victim AS SELECT 7 AS kept")
    with pytest.raises(FeatureStoreError, match="cannot be read by Spark"):
        run(repo, SparkSource(name="s", query=query, timestamp_field="ts"))
    assert spark.table("fs_victim").columns == ["kept"], "the statement ran"


def test_a_push_source_over_a_catalog_table_reads_its_pushes(repo: Path) -> None:
    user = Entity(name="user", join_keys=["user_id"])
    batch = SparkSource(name="s", table="fs_events", timestamp_field="ts")
    push = PushSource(name="s_push", batch_source=batch)
    view = FeatureView(name="pushed", entities=[user], source=push, features=[
        Count(window=None, name="n"), Sum("price", window=None, name="spent")])
    now = pd.Timestamp.now(tz="UTC")
    with spark_store(repo) as store:
        store.apply([user, batch, push, view])
        store.push_log.settle_seconds = 0.0  # type: ignore[attr-defined]
        body = {"user_id": [7, 999], "ts": [(now - pd.Timedelta(seconds=5)).isoformat()] * 2, "price": [1.5, 2.5],
                "label": ["x", "y"]}
        store.push("s_push", body, push_id="p1")
        store.push("s_push", body, push_id="p1")  # a retry: counted once
        rows = pd.DataFrame({"user_id": [7, 999], "event_timestamp": [now + pd.Timedelta(seconds=1)] * 2})
        got = store.get_historical_features(rows, ["pushed:n", "pushed:spent"]).to_df()
    frame = events_frame()
    mine = frame[frame["user_id"] == 7]
    assert got["n"].tolist() == [len(mine) + 1, 1]
    assert got["spent"].tolist() == pytest.approx([mine["price"].sum() + 1.5, 2.5], rel=1e-12)


def test_a_missing_table_names_the_source(repo: Path) -> None:
    with pytest.raises(FeatureStoreError, match=r"source 's' cannot be read by Spark: .*nope"):
        run(repo, SparkSource(name="s", table="nope", timestamp_field="ts"))


def test_definition_checks_and_registry_specs() -> None:
    with pytest.raises(DefinitionError, match="exactly one of table= or query="):
        SparkSource(name="s", timestamp_field="ts")
    with pytest.raises(DefinitionError, match="exactly one of table= or query="):
        SparkSource(name="s", table="t", query="SELECT 1", timestamp_field="ts")
    with pytest.raises(DefinitionError, match="query= is empty"):
        SparkSource(name="s", query="  ", timestamp_field="ts")
    with pytest.raises(InvalidIdentifierError):
        SparkSource(name="s", table="db.t; DROP TABLE x", timestamp_field="ts")
    source = SparkSource(name="s", table="lake.db.events", timestamp_field="ts", created_timestamp_field="cr")
    assert from_spec("source", to_spec(source)) == source
    query = SparkSource(name="q", query="SELECT 1 AS x", timestamp_field="ts")
    assert from_spec("source", to_spec(query)) == query


def test_the_duckdb_engine_refuses_it_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "feature_store.yaml").write_text("project: duck\n")
    with FeatureStore(tmp_path) as store, pytest.raises(DefinitionError, match="offline_store type spark"):
        store.apply(features_for(SparkSource(name="s", table="fs_events", timestamp_field="ts")))
