"""The property suite (tests/test_semantics_property.py) on the Spark engine: random scenarios drawn by the same
strategies must agree with the slow reference, and give exactly what the DuckDB engine gives (floats to 1e-12).

Fewer examples than on DuckDB (a Spark query costs about half a second here), and one declared gap: Spark reads no
nanosecond parquet timestamps, so sources drawn with them are written in microseconds (the drawn times are whole
microseconds, so the scenario is the same).
"""

import os
import shutil
import sys
from dataclasses import replace

import pytest
from hypothesis import given, settings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference as ref
from test_semantics_property import (
    SETTINGS,
    SharedRepo,
    assert_agrees_with_reference,
    assert_identical,
    scenarios,
)

pytestmark = [pytest.mark.spark, pytest.mark.slow]
SPARK_SETTINGS = settings(SETTINGS, max_examples=int(os.environ.get("SPARK_EXAMPLES", "12")))


def in_microseconds(views):
    return [replace(v, schema=tuple((c, t.replace("[ns", "[us")) for c, t in v.schema)) for v in views]


class SparkRepo(SharedRepo):
    def run(self, views, entity_df, refs, materialize_ends=()):
        self.examples += 1
        renamed = [replace(v, name=f"{v.name}_{self.examples}") for v in in_microseconds(views)]
        names = {v.name: r.name for v, r in zip(views, renamed, strict=True)}
        refs = [f"{names[r.split(':')[0]]}:{r.split(':')[1]}" for r in refs]
        self.store = ref.open_store(self.dir, renamed, store=self.store, engine="spark")
        return [ref.engine_query(self.store, entity_df, refs)], renamed, refs


@pytest.fixture(scope="module")
def spark_repo():
    shared = SparkRepo()
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
    [duck], _, _ = duckdb_repo.run(in_microseconds(views), entity_df, refs)
    assert_identical(duck.set_axis(out.columns, axis=1), out)


@SPARK_SETTINGS
@given(scenarios(aggregation=True, snapshot=True))
def test_snapshots_and_aggregations_on_spark_match_the_reference(spark_repo, scenario):
    views, entity_df, refs = scenario
    [out], renamed, spark_refs = spark_repo.run(views, entity_df, refs)
    assert_agrees_with_reference(out, renamed, entity_df, spark_refs)
