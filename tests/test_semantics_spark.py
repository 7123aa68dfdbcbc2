"""The property suites on the Spark engine: random scenarios drawn by the strategies of
tests/test_semantics_property.py must agree with the slow reference and give exactly what the DuckDB engine gives
(floats to 1e-12), and tests/test_online_consistency.py's harness must find the online values Spark materializes
equal to Spark's training sets and to the reference.

Fewer examples than on DuckDB (a Spark query costs about half a second here). Sources drawn with nanosecond
timestamps are written so (Spark reads them as longs that the engine turns back into timestamps).
"""

import itertools
import os
import shutil
import sys
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference as ref
import test_online_consistency as online
from spark_fixtures import SPARK_YAML
from test_semantics_property import (
    SETTINGS,
    SharedRepo,
    assert_agrees_with_reference,
    assert_identical,
    scenarios,
)

from tests.conftest import delete_under, own_database

pytestmark = [pytest.mark.spark, pytest.mark.slow]
SPARK_SETTINGS = settings(SETTINGS, max_examples=int(os.environ.get("SPARK_EXAMPLES", "12")))
_projects = itertools.count()


@pytest.fixture(scope="module")
def spark_repo():
    shared = SharedRepo(engine="spark")
    yield shared
    shutil.rmtree(shared.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def duckdb_repo():
    shared = SharedRepo()
    yield shared
    shutil.rmtree(shared.dir, ignore_errors=True)


@SPARK_SETTINGS
@given(scenarios(aggregation=True))
def test_aggregations_on_spark_match_the_reference_and_duckdb(spark_repo, duckdb_repo, scenario):
    views, entity_df, refs = scenario
    [out], renamed, spark_refs = spark_repo.run(views, entity_df, refs)
    assert_agrees_with_reference(out, renamed, entity_df, spark_refs)
    [duck], _, _ = duckdb_repo.run(views, entity_df, refs)
    assert_identical(duck.set_axis(out.columns, axis=1), out)


@SPARK_SETTINGS
@given(scenarios(aggregation=True, snapshot=True))
def test_snapshots_and_aggregations_on_spark_match_the_reference(spark_repo, scenario):
    views, entity_df, refs = scenario
    [out], renamed, spark_refs = spark_repo.run(views, entity_df, refs)
    assert_agrees_with_reference(out, renamed, entity_df, spark_refs)


# --- online values materialized by Spark: the online consistency harness ---------------------------------------


@pytest.mark.parametrize("online_kind", ["redis", "sqlite"])
@settings(SETTINGS, max_examples=max(1, int(os.environ.get("SPARK_EXAMPLES", "12")) // 4))
@given(scenario=online.scenarios(), data=st.data())
def test_online_values_materialized_by_spark_equal_offline(online_kind, redis_url, scenario, data):
    """tests/test_online_consistency.py's harness with the Spark engine computing the online values: every online
    read at N after a materialization to E equals Spark's training set at N over the data available at E, and the
    reference; after a last materialization, the plain training set. Into Redis the executors encode and write the
    values (offline/spark/online_writes.py); into SQLite, a file of the driver's, the driver does."""
    spend, profile = scenario
    repo = online.scratch_dir("online_spark_")
    store = None
    project = f"s{next(_projects)}"
    key_prefix = f"fstest-{uuid.uuid4().hex[:12]}"
    url = own_database(redis_url)
    config = {"type": "sqlite", "path": "data/online.db"} if online_kind == "sqlite" else {
        "type": "redis", "url": url, "key_prefix": key_prefix}
    try:
        online.write_config(Path(repo), project, config)
        with open(Path(repo) / "feature_store.yaml", "a") as config:
            config.write(SPARK_YAML)
        store = ref.open_store(repo, [spend, profile], engine="spark")
        critical = online.critical_times(spend, profile)
        defined = {f"spend:{a.name}" for a in spend.features}
        refs = [r for r in data.draw(online.feature_refs(), label="features") if r in defined or
                r in online.SNAPSHOT_REFS] or online.SNAPSHOT_REFS
        ends: list[int] = []
        end = online.us(online.SPAN) - online.us(online.D)
        for _ in range(data.draw(st.integers(1, 2), label="materializations")):  # the second one is incremental
            end = online.draw_end(data, end, critical, profile)
            ends.append(end)
            store.materialize(end=online.dt(end))
            reads = [(online.draw_read_time(data, end, critical), *online.draw_keys(data))
                     for _ in range(data.draw(st.integers(1, 3), label="reads"))]
            online.check_phase(store, spend, profile, end, reads, refs, online.describe(spend, profile, ends), end)
        ends.append(online.us(online.LAST_END))
        store.materialize(end=online.LAST_END)
        keys = [*online.KNOWN_KEYS, online.UNKNOWN_KEY]
        reads = [(online.draw_read_time(data, online.us(online.LAST_END), critical), keys, keys) for _ in range(2)]
        online.check_phase(store, spend, profile, online.us(online.LAST_END), reads, refs,
                           online.describe(spend, profile, ends), None)
    finally:
        if store is not None:
            store.close()
        shutil.rmtree(repo, ignore_errors=True)
        if online_kind == "redis":
            delete_under(url, key_prefix)
