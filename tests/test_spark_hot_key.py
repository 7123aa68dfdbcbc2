"""A hot key: one entity holding 30 % of all events. Each Spark partition hands the numpy kernel chunks of about
``spark.featurestore.kernel.chunkRows`` rows cut only between keys, so the hot key is gathered whole across many
Arrow batches while the other keys are cut into chunks around it; values equal DuckDB's. (Memory per task stays
bounded by the chunk plus the largest key: docs/spark.md.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from feature_store import Count, Entity, FeatureStore, FeatureView, Field, FileSource, Last, Max, Sum
from feature_store.config import RepoConfig, SparkOfflineConfig, load_config
from feature_store.offline.spark.kernel import CHUNK_CONF
from tests.spark_fixtures import spark_session

pytestmark = pytest.mark.spark
START = pd.Timestamp("2026-03-01", tz="UTC")
EVENTS = 6_000
HOT = 0
REFS = ["buys:spent", "buys:n", "buys:last", "buys:biggest", "buys:total", "latest:label"]


def events_frame() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    users = rng.integers(1, 200, EVENTS)
    users[rng.random(EVENTS) < 0.3] = HOT
    return pd.DataFrame({
        "user_id": users.astype("int64"),
        "ts": START + pd.to_timedelta(rng.integers(0, 30 * 86400, EVENTS), "s"),
        "price": np.round(rng.uniform(1, 100, EVENTS), 2),
        "label": rng.choice(["x", "y", "z"], EVENTS),
    })


def queries() -> pd.DataFrame:
    rng = np.random.default_rng(12)
    users = rng.integers(0, 205, 1_500)
    users[:300] = HOT
    return pd.DataFrame({"user_id": users.astype("int64"),
                         "event_timestamp": START + pd.to_timedelta(rng.integers(0, 32 * 86400, 1_500), "s")})


def definitions() -> list[object]:
    user = Entity(name="user", join_keys=["user_id"])
    source = FileSource(name="s", path="data/events.parquet", timestamp_field="ts")
    view = FeatureView(name="buys", entities=[user], source=source, features=[
        Sum("price", window="3d", name="spent"), Count(window="1d", name="n"), Last("label", window="7d", name="last"),
        Max("price", window="2h", name="biggest"), Sum("price", window=None, name="total"),
    ])
    latest = FeatureView(name="latest", entities=[user], source=source, features=[Field("label", "string")])
    return [user, source, view, latest]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hot_key")
    (root / "feature_store.yaml").write_text("project: hot_key\n")
    (root / "data").mkdir()
    events_frame().to_parquet(root / "data" / "events.parquet", index=False)
    return root


@pytest.fixture
def small_chunks() -> Iterator[None]:
    """Chunks of 150 rows from Arrow batches of 64: the hot key (~1,800 events) spans many batches and chunks."""
    spark = spark_session()
    spark.conf.set(CHUNK_CONF, "150")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "64")
    try:
        yield
    finally:
        spark.conf.unset(CHUNK_CONF)
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")


def test_a_hot_key_with_30_percent_of_events_equals_duckdb(repo: Path, small_chunks: None) -> None:
    frame = events_frame()
    assert 0.28 < (frame["user_id"] == HOT).mean() < 0.32
    with FeatureStore(repo) as duck:
        duck.apply(definitions())
        expected = duck.get_historical_features(queries(), REFS).to_df()
    config = load_config(repo)
    spark_config = RepoConfig(**{**config.model_dump(), "offline_store": SparkOfflineConfig(type="spark")})
    with FeatureStore(repo, spark_config, spark=spark_session()) as store:
        got = store.get_historical_features(queries(), REFS).to_df()
    hot = expected["user_id"] == HOT
    assert expected.loc[hot, "total"].gt(0).mean() > 0.9 and expected["n"].sum() > 0
    pd.testing.assert_frame_equal(got, expected, check_dtype=False, rtol=1e-9)


def test_with_offline_tiles_the_hot_keys_old_events_come_as_tiles(repo: Path, small_chunks: None) -> None:
    """Materialized tiles (offline/spark/tiles.py): below the watermark the hot key's partition gets one row per
    tile and only the events of the tiles its queries fall in; values still equal DuckDB's."""
    from feature_store.offline.spark.retrieval import _events_needed, entity_frame
    from feature_store.references import resolve_features

    with FeatureStore(repo) as duck:
        duck.apply(definitions())
        expected = duck.get_historical_features(queries(), REFS).to_df()
    config = load_config(repo)
    spark_config = RepoConfig(**{**config.model_dump(), "offline_store": SparkOfflineConfig(type="spark")})
    with FeatureStore(repo, spark_config, spark=spark_session()) as store:
        store.materialize(end=(START + pd.Timedelta(days=20)).to_pydatetime(), online=False)
        got = store.get_historical_features(queries(), REFS).to_df()
        engine: Any = store.offline
        catalog = store.offline_catalog()
        # the windows of hop 5 min and 1 h (a daily hop's current tile is a whole day: all of a queried day's
        # events are read one by one), for 30 of the hot key's queries
        plan = engine.plan(catalog, "buys", resolve_features(catalog, REFS[:4], False))
        stored = [tiles for tiles, _ in engine.stored_tiles(catalog, plan)]
        rows = entity_frame(spark_session(), queries()[:30], ["user_id"])[0].select("user_id", "__t").distinct()
        events = engine.events(plan).where("user_id = 0")
        needed = _events_needed(events, rows, plan, stored).count()
        assert len(stored) == 2 and needed < 0.5 * events.count(), (needed, events.count())
    pd.testing.assert_frame_equal(got, expected, check_dtype=False, rtol=1e-9)
