"""Online materialization from Spark's executors (offline/spark/online_writes.py): values the executors write into
Redis and a Redis Cluster serve exactly what DuckDB's materialization serves, for every function (LastK and the
sketches included), full and incremental; no tile reaches the driver; an SQLite store is still written by the
driver."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyspark.sql import DataFrame

from feature_store import FeatureStore
from feature_store.config import RedisOnlineConfig, RepoConfig, SparkOfflineConfig, SqliteOnlineConfig, load_config
from feature_store.errors import FeatureStoreError, OnlineStoreUnavailable
from feature_store.offline.engine import to_us
from feature_store.offline.spark.kernel import CHUNK_CONF
from feature_store.offline.spark.online_tiles import SparkOnlineTiles
from feature_store.offline.spark.online_writes import BATCH_CONF, key_chunks
from feature_store.online.keys import key_prefix
from feature_store.online.materialize import runner
from tests.conftest import _free_port, delete_under, own_database
from tests.server_fixtures import make_repo
from tests.spark_fixtures import spark_available, spark_session
from tests.spark_standalone import standalone
from tests.test_spark_engine import EXTRA_PY, VIEWS

pytestmark = pytest.mark.spark
FEATURES = [f"{view}:{feature}" for view, names in VIEWS.items() for feature in names]
CUSTOMERS = {"customer_id": list(range(1, 45))}
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = make_repo(tmp_path_factory.mktemp("spark_writes") / "repo", "", "", customers=40,
                     online_store={"type": "sqlite", "path": "data/online.db"})
    (path / "extra.py").write_text(EXTRA_PY)
    return path


def copy_store(repo: Path, to: Path, engine: str, online: dict[str, Any] | None = None) -> FeatureStore:
    """A copy of the repo with a fresh online store (``online``, default its SQLite file), applied, on ``engine``."""
    shutil.copytree(repo, to)
    (to / "data" / "online.db").unlink(missing_ok=True)
    config = load_config(to).model_dump()
    if online is not None:
        config["online_store"] = online
    if engine == "spark":
        config["offline_store"] = SparkOfflineConfig(type="spark", master="local[2]", warehouse="data/spark")
    store = FeatureStore(to, RepoConfig(**config), spark=spark_session() if engine == "spark" else None)
    store.push_log.settle_seconds = 0.0  # the copy's online store is new: a materialization passes every push
    store.push_log.bucket_seconds = 1e-6
    store.apply()
    return store


def assert_same_values(expected: dict[str, list[Any]], got: dict[str, list[Any]]) -> None:
    for name, values in expected.items():
        for a, b in zip(values, got[name], strict=True):
            close = isinstance(a, float) and isinstance(b, float) and math.isclose(a, b, rel_tol=1e-12)
            assert a == b or close, (name, values, got[name])


def stored(store: FeatureStore) -> dict[tuple[str, bytes], bytes]:
    """Every value the store holds of its live generations, by (view, packed entity key), as stored."""
    values = {}
    for view, generation in store.online.state().live.items():
        prefix = store.online.prefix(view, generation.signature)
        for batch in store.online.store.scan(prefix):
            values.update({(view, key[len(prefix):]): value for key, value in batch})
    return values


@pytest.fixture
def small_chunks() -> Iterator[None]:
    """Partitions cut into chunks of ~50 rows (between entities) and written 7 entities per pipelined write."""
    session = spark_session()
    session.conf.set(CHUNK_CONF, "50")
    session.conf.set(BATCH_CONF, "7")
    yield
    session.conf.unset(CHUNK_CONF)
    session.conf.unset(BATCH_CONF)


def materialize(store: FeatureStore, end: datetime, full: bool = False) -> dict[str, int]:
    return {r.view: r.rows_written for r in store.materialize(end=end, full=full) if r.part == "online"}


@pytest.mark.parametrize("online_store", ["redis", "redis-cluster"], indirect=True)
def test_values_written_by_executors_equal_duckdbs(repo: Path, tmp_path: Path, online_store: dict[str, Any],
                                                   monkeypatch: pytest.MonkeyPatch, small_chunks: None) -> None:
    """Spark's executors write into Redis (one server, a cluster) what DuckDB's driver pipeline writes, counted the
    same, at a first end and after an incremental run to a later one, and again after --full; the tiles never come
    to the driver."""
    now = datetime.now(UTC).replace(microsecond=0)
    first, second = now - timedelta(days=3), now
    with copy_store(repo, tmp_path / "duck", "duckdb") as duck, \
            copy_store(repo, tmp_path / "spark", "spark", online_store) as spark:
        assert type(spark.online.store).remote_writes and spark.offline.capabilities.writes_online
        for end, full in ((first, False), (second, False), (second, True)):
            expected_counts = materialize(duck, end, full)
            with monkeypatch.context() as patch:
                refuse_driver_tiles(patch)
                counts = materialize(spark, end, full)
            assert counts == expected_counts and sum(counts.values()) > 0
            for read_at in (end, end + timedelta(hours=5)):
                assert_same_values(duck.get_online_features(FEATURES, CUSTOMERS, now=read_at).to_dict(),
                                   spark.get_online_features(FEATURES, CUSTOMERS, now=read_at).to_dict())
        report = spark.verify(sample=40)
        assert report.ok, ([c for c in report.checks if not c.ok], report.not_materialized)


def refuse_driver_tiles(patch: pytest.MonkeyPatch) -> None:
    """The seams through which tiles would come to the driver, each made to fail the test."""
    patch.setattr(runner, "materialize_views", refused)
    patch.setattr(SparkOnlineTiles, "buckets", refused)
    refuse_collecting(patch)


def refuse_collecting(patch: pytest.MonkeyPatch) -> None:
    """A DataFrame's rows brought to the driver as Arrow or pandas fail the test (on the class Spark's DataFrames
    are of: Spark Classic overrides the base class's methods)."""
    for cls in {DataFrame, type(spark_session().range(1))}:
        patch.setattr(cls, "toArrow", refused)
        patch.setattr(cls, "toPandas", refused)


def refused(*_args: Any, **_kwargs: Any) -> Any:
    raise AssertionError("tiles were brought to the driver")


def test_an_sqlite_store_is_written_by_the_driver(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite is a file of the driver's (remote_writes is false): Spark hands the tiles to the driver's pipeline
    (which the collecting seam of the tests above catches)."""
    called: list[int] = []
    pipeline = runner.materialize_views

    def counted(*args: Any, **kwargs: Any) -> Any:
        called.append(1)
        return pipeline(*args, **kwargs)

    monkeypatch.setattr(runner, "materialize_views", counted)
    with copy_store(repo, tmp_path / "spark", "spark") as spark:
        assert not type(spark.online.store).remote_writes
        with monkeypatch.context() as patch:  # the seam the executor tests rely on sees the driver path collect
            refuse_collecting(patch)
            with pytest.raises(AssertionError, match="brought to the driver"):
                materialize(spark, datetime.now(UTC))
        counts = materialize(spark, datetime.now(UTC), full=True)
        assert called and sum(counts.values()) > 0
        assert spark.get_online_features(FEATURES, CUSTOMERS).to_dict()["txn_count_30d"][0] is not None


@pytest.mark.parametrize("online_store", ["redis"], indirect=True)
def test_executors_store_the_bytes_the_driver_pipeline_stores(repo: Path, tmp_path: Path,
                                                              online_store: dict[str, Any]) -> None:
    """The same Spark tiles, encoded and written by the driver's pipeline (SQLite) or by the executors (Redis, in
    small chunks and batches), are stored as the same bytes, entity by entity."""
    end = datetime.now(UTC).replace(microsecond=0)
    with copy_store(repo, tmp_path / "driver", "spark") as driver, \
            copy_store(repo, tmp_path / "executors", "spark", online_store) as executors:
        materialize(driver, end)
        session = spark_session()
        session.conf.set(CHUNK_CONF, "30")
        session.conf.set(BATCH_CONF, "4")
        try:
            materialize(executors, end)
        finally:
            session.conf.unset(CHUNK_CONF)
            session.conf.unset(BATCH_CONF)
        want, got = stored(driver), stored(executors)
        assert len(want) > 100 and {view for view, _ in want} == set(VIEWS)
        assert got == want


def test_chunks_are_cut_between_keys_only() -> None:
    """key_chunks: about chunk_rows rows a chunk, never a key cut in two (a hot key gathered whole), nothing lost."""
    keys = [1] * 3 + [2] * 40 + [3] + [4] * 7 + [5] * 2 + [6] * 25
    names = [f"k{k % 2}" for k in keys]
    table = pa.table({"a": keys, "b": names, "row": list(range(len(keys)))})
    for size in (1, 4, 10):
        for chunk_rows in (1, 5, 12, 1000):
            chunks = list(key_chunks(iter(table.to_batches(max_chunksize=size)), ["a", "b"], chunk_rows))
            assert pa.concat_tables(chunks).column("row").to_pylist() == list(range(len(keys)))
            ends = [chunk.column("a")[-1].as_py() for chunk in chunks]
            starts = [chunk.column("a")[0].as_py() for chunk in chunks]
            assert all(a != b for a, b in zip(ends, starts[1:], strict=False)), (size, chunk_rows, ends, starts)
            if chunk_rows == 1 and size == 1:
                assert len(chunks) == 6  # one per key


def test_executors_that_cannot_reach_the_store_fail_the_write(repo: Path, tmp_path: Path) -> None:
    """A store the executors cannot reach fails the write with OnlineStoreUnavailable (the runner then moves no
    watermark); an SQLite store, a file of the driver's, is refused."""
    with copy_store(repo, tmp_path / "spark", "spark") as spark:
        catalog = spark.offline_catalog()
        end = to_us(datetime.now(UTC))
        prefix = key_prefix("fstest-unreachable", "p", "customer_profile", "x")
        closed = RedisOnlineConfig(url=f"redis://127.0.0.1:{_free_port()}/0", timeout_seconds=0.5)
        with pytest.raises(OnlineStoreUnavailable, match="executors"):
            spark.offline.write_online(catalog, "customer_profile", end, None, closed, prefix)
        with pytest.raises(FeatureStoreError, match="SQLite"):
            spark.offline.write_online(catalog, "customer_profile", end, None, SqliteOnlineConfig(), prefix)


CLUSTER_DRIVER = """
import json, sys
from feature_store import FeatureStore
from feature_store.online.materialize import runner
from feature_store.offline.spark.online_tiles import SparkOnlineTiles

def refused(*args, **kwargs):
    raise AssertionError("tiles were brought to the driver")

runner.materialize_views = refused
SparkOnlineTiles.buckets = refused
with FeatureStore(sys.argv[1]) as store:
    counts = {r.view: r.rows_written for r in store.materialize() if r.part == "online"}
    values = store.get_online_features(json.loads(sys.argv[3]), {"customer_id": list(range(1, 31))}).to_dict()
    executors = store.offline.spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size()
    json.dump({"counts": counts, "values": values, "executors": executors}, open(sys.argv[2], "w"), default=str)
"""


@pytest.mark.slow
def test_the_executors_of_a_standalone_cluster_write_redis(tmp_path: Path, redis_url: str, key_prefix: str) -> None:
    """Two worker processes of a standalone cluster (tests/spark_standalone.py) write Redis what DuckDB's driver
    pipeline writes; the driver never gets the tiles."""
    reason = spark_available()
    if reason:
        pytest.skip(reason)
    duck_repo = make_repo(tmp_path / "duck", "", "", customers=30, push=False,
                          online_store={"type": "sqlite", "path": "data/online.db"})
    (duck_repo / "extra.py").write_text(EXTRA_PY)
    features = [f"{view}:{feature}" for view, names in VIEWS.items() if view != "customer_live" for feature in names]
    url = own_database(redis_url)
    with FeatureStore(duck_repo) as duck:
        duck.apply()
        expected_counts = {r.view: r.rows_written for r in duck.materialize(full=True) if r.part == "online"}
        expected = duck.get_online_features(features, {"customer_id": list(range(1, 31))}).to_dict()
    spark_repo = tmp_path / "spark"
    shutil.copytree(duck_repo, spark_repo)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    with standalone(2, tmp_path) as master:
        config = spark_repo / "feature_store.yaml"
        config.write_text(config.read_text().replace(
            "offline_store: {type: duckdb, path: data/offline.duckdb}",
            f'offline_store: {{type: spark, master: "{master}", conf: {{spark.cores.max: "2", '
            f'spark.executor.cores: "1", spark.executor.memory: 512m, spark.driver.host: 127.0.0.1, '
            f'spark.sql.shuffle.partitions: "4"}}}}').replace(
            'online_store: {"type": "sqlite", "path": "data/online.db"}',
            f'online_store: {{type: redis, url: "{url}", key_prefix: {key_prefix}}}'))
        assert "type: spark" in config.read_text() and "type: redis" in config.read_text()
        try:
            run = subprocess.run([sys.executable, "-c", CLUSTER_DRIVER, str(spark_repo), str(tmp_path / "out.json"),
                                  json.dumps(features)], env=env, capture_output=True, text=True, timeout=600)
            assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        finally:
            delete_under(url, key_prefix)
    got = json.loads((tmp_path / "out.json").read_text())
    assert got["executors"] == 3, "the driver and two executors"
    assert got["counts"] == expected_counts
    for name, values in expected.items():
        assert [v if not isinstance(v, float) else round(v, 9) for v in values] == \
            [v if not isinstance(v, float) else round(v, 9) for v in got["values"][name]], name


MULTI_KEY_PY = """
from feature_store import ApproxCountDistinct, Count, Entity, FeatureView, FileSource, Last, Sum

shop = Entity(name="shop", join_keys=["country", "shop_id"], description="A shop in a country.")
sales = FeatureView(
    name="sales",
    entities=[shop],
    source=FileSource(name="sales", path="data/sales.parquet", timestamp_field="ts"),
    features=[Sum("amount", window="1d", name="amount_1d"), Count(window=None, name="sales"),
              ApproxCountDistinct("item", window="7d", name="items_7d"), Last("item", window="3d", name="last_item")],
)
"""


@pytest.mark.parametrize("online_store", ["redis"], indirect=True)
def test_entities_of_several_keys(tmp_path: Path, online_store: dict[str, Any], small_chunks: None) -> None:
    """A view keyed by (country, shop_id), a string and an integer, with a sketch: the executors write what DuckDB
    writes, entity for entity."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(7)
    now = datetime.now(UTC).replace(microsecond=0)
    rows = 3000
    frame = pd.DataFrame({
        "country": rng.choice(["fr", "de", "it", "es"], rows), "shop_id": rng.integers(1, 40, rows),
        "ts": [now - timedelta(seconds=int(s)) for s in rng.integers(60, 10 * 86400, rows)],
        "amount": rng.integers(-400, 4000, rows) / 4, "item": rng.choice(list("abcdefghij"), rows)})
    stores = []
    for name, engine, online in (("duck", "duckdb", None), ("spark", "spark", online_store)):
        repo = tmp_path / name
        (repo / "data").mkdir(parents=True)
        frame.to_parquet(repo / "data" / "sales.parquet")
        (repo / "features.py").write_text(MULTI_KEY_PY)
        (repo / "feature_store.yaml").write_text("project: multikey\nregistry: data/registry.db\n"
                                                 "online_store: {type: sqlite, path: data/online.db}\n")
        stores.append(copy_store(repo, tmp_path / f"{name}_copy", engine, online))
    duck, spark = stores
    try:
        counts = materialize(duck, now)
        with pytest.MonkeyPatch.context() as patch:
            refuse_driver_tiles(patch)
            assert materialize(spark, now) == counts
        keys = {"country": [c for c in ("fr", "de", "it", "es", "nl") for _ in range(41)],
                "shop_id": [i for _ in range(5) for i in range(41)]}
        features = ["sales:amount_1d", "sales:sales", "sales:items_7d", "sales:last_item"]
        for read_at in (now, now + timedelta(hours=30)):
            assert_same_values(duck.get_online_features(features, keys, now=read_at).to_dict(),
                               spark.get_online_features(features, keys, now=read_at).to_dict())
    finally:
        duck.close()
        spark.close()
