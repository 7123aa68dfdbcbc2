"""The Spark engine (offline/spark) beyond the semantic suites: the example repo's training set equals DuckDB's,
pushed events count once (retries, compaction), every form of entity rows and of results, online values Spark
materializes equal DuckDB's, and a missing Java is a clear error."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from feature_store import FeatureStore
from feature_store.config import RepoConfig, SparkOfflineConfig, load_config
from tests.server_fixtures import make_repo
from tests.spark_fixtures import spark_session

pytestmark = pytest.mark.spark
FEATURES = ["customer_spend:avg_spend_90d", "customer_spend:txn_count_30d", "customer_spend:last_category",
            "customer_live:spend_1d", "customer_live:txn_count_1h_live", "customer_profile:segment"]
FIRST = 40_000_000
VIEWS = {"customer_spend": ["avg_spend_90d", "spend_7d", "txn_count_30d", "max_spend_30d", "last_category",
                            "lifetime_spend"],
         "customer_habits": ["spend_stddev_30d", "categories_30d", "txn_count_1h"],
         "customer_profile": ["age", "segment"],
         "customer_live": ["spend_1d", "txn_count_1h_live"],
         "customer_extra": ["last_3", "approx_categories", "p90", "smallest"]}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("spark") / "repo", "", "", customers=40,
                     online_store={"type": "sqlite", "path": "data/online.db"})


def spark_store(repo: Path) -> FeatureStore:
    config = load_config(repo)
    spark = RepoConfig(**{**config.model_dump(), "offline_store": SparkOfflineConfig(
        type="spark", master="local[2]", warehouse="data/spark")})
    return FeatureStore(repo, spark, spark=spark_session())


def entity_rows(customers: list[int]) -> pd.DataFrame:
    now = datetime.now(UTC)
    return pd.DataFrame({"customer_id": customers * 2,
                         "event_timestamp": [now] * len(customers) + [now - timedelta(days=20)] * len(customers)})


def same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_dtype=False,
                                  check_exact=False, rtol=1e-12)


def test_the_example_training_set_and_pushes_equal_duckdbs(repo: Path) -> None:
    pushed = [FIRST, FIRST + 1, 3]
    with FeatureStore(repo) as duck, spark_store(repo) as spark:
        duck.push_log.settle_seconds = 0.0
        stamp = (datetime.now(UTC) - timedelta(seconds=2)).isoformat()
        body: dict[str, Any] = {"transaction_id": pushed, "customer_id": pushed, "event_timestamp": [stamp] * 3,
                                "created": [stamp] * 3, "amount": [1.5, 2.0, 7.25], "category": ["travel"] * 3}
        duck.push("transactions_push", body)
        duck.push("transactions_push", body, push_id="once")
        duck.push("transactions_push", body, push_id="once")  # a retry: counts once
        rows = entity_rows([1, 2, 3, 17, FIRST, FIRST + 1, 999_999])
        expected = duck.get_historical_features(rows, FEATURES).to_df()
        assert list(expected["txn_count_1h_live"][4:6]) == [2, 2]
        same(expected, spark.get_historical_features(rows, FEATURES).to_df())
        log: Any = duck.push_log
        log.rotate_seconds = log.seal_margin_seconds = log.delete_grace_seconds = 0.0
        duck.compact()
        duck.compact()
        assert not log.snapshot("transactions_push").jsonl, "the log is all parquet now"
        same(expected, spark.get_historical_features(rows, FEATURES).to_df())


def test_entity_rows_and_results_in_every_form(repo: Path, tmp_path: Path) -> None:
    with FeatureStore(repo) as duck, spark_store(repo) as store:
        rows = entity_rows([1, 2, 5])
        expected = duck.get_historical_features(rows, FEATURES).to_df()
        session = spark_session()
        frame = session.createDataFrame(rows)
        assert store.get_historical_features(frame, FEATURES).to_spark().count() == len(rows)
        frame.createOrReplaceTempView("fs_test_entities")
        by_sql = store.get_historical_features("SELECT * FROM fs_test_entities", FEATURES).to_df()
        assert sorted(by_sql["txn_count_30d"]) == sorted(expected["txn_count_30d"])
        rows.to_parquet(tmp_path / "rows.parquet")
        same(expected, store.get_historical_features(str(tmp_path / "rows.parquet"), FEATURES).to_df())
        job = store.get_historical_features(rows, FEATURES)
        assert job.to_arrow().num_rows == len(rows)
        job.to_parquet(tmp_path / "out")  # a folder of part files, written by the executors
        written = pq.read_table(tmp_path / "out").to_pandas()
        assert sorted(written["txn_count_30d"]) == sorted(expected["txn_count_30d"])


EXTRA_PY = """
from feature_store import ApproxCountDistinct, ApproxPercentile, Entity, FeatureView, FileSource, LastK, Min

customer_extra = FeatureView(
    name="customer_extra",
    entities=[Entity(name="customer", join_keys=["customer_id"], description="A card holder.")],
    source=FileSource(name="transactions", path="data/transactions.parquet", timestamp_field="event_timestamp",
                      created_timestamp_field="created"),
    features=[LastK("category", k=3, window="30d", name="last_3"),
              ApproxCountDistinct("category", window="30d", name="approx_categories"),
              ApproxPercentile("amount", q=0.9, window="30d", name="p90"),
              Min("amount", window=None, name="smallest")],
)
"""


def materialized_copy(repo: Path, to: Path, engine: str) -> FeatureStore:
    """A copy of the repo (with EXTRA_PY) applied and materialized into a fresh online store by ``engine``."""
    shutil.copytree(repo, to)
    (to / "data" / "online.db").unlink()
    (to / "extra.py").write_text(EXTRA_PY)
    store = spark_store(to) if engine == "spark" else FeatureStore(to)
    # The copy's online store is new: only a materialization that passes every push logged so far holds them all
    store.push_log.settle_seconds = 0.0
    store.push_log.bucket_seconds = 1e-6
    store.apply()
    store.materialize()
    return store


def test_online_values_materialized_by_spark_equal_duckdbs(repo: Path, tmp_path: Path) -> None:
    """The same repo materialized into fresh online stores by DuckDB and by Spark serves the same values (floats
    to 1e-12) for every function, sketches included; and Spark's verify finds its online values equal to its
    training sets."""
    features = [f"{view}:{feature}" for view, names in VIEWS.items() for feature in names]
    customers = {"customer_id": list(range(1, 45))}
    with materialized_copy(repo, tmp_path / "duck", "duckdb") as duck, \
            materialized_copy(repo, tmp_path / "spark", "spark") as spark:
        expected = duck.get_online_features(features, customers).to_dict()
        got = spark.get_online_features(features, customers).to_dict()
        for name, values in expected.items():
            for a, b in zip(values, got[name], strict=True):
                close = isinstance(a, float) and isinstance(b, float) and math.isclose(a, b, rel_tol=1e-12)
                assert a == b or close, (name, values, got[name])
        report = spark.verify(sample=40)
        assert report.ok, ([c for c in report.checks if not c.ok], report.not_materialized)


def test_without_java_the_error_names_the_fix(repo: Path) -> None:
    code = ("from feature_store import FeatureStore\n"
            "from feature_store.config import SparkOfflineConfig\n"
            "from feature_store.offline.spark.session import build_session\n"
            "try:\n"
            "    build_session(SparkOfflineConfig(type='spark'))\n"
            "except Exception as exc:\n"
            "    print(type(exc).__name__, exc)\n")
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = str(Path(sys.executable).parent)  # the interpreter, and no java
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("MissingDependencyError") and "Java 17" in out.stdout, out.stdout + out.stderr
    assert "Traceback" not in out.stdout
