"""Entity rows in every accepted form give the same training set, in input order, with extra columns kept."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feature_store import Count, Entity, FeatureStore, FeatureView, Field, FileSource, Last, Sum
from feature_store.errors import EntityDataFrameError
from feature_store.offline.duckdb.engine import DuckDBOfflineEngine

T0 = pd.Timestamp("2024-01-01", tz="UTC")


def at(days: int = 0, hours: int = 0, minutes: int = 0, seconds: int = 0) -> pd.Timestamp:
    return T0 + pd.Timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


FEATURES = ["spend:sum_1d", "spend:n_7d", "spend:last_cat", "profile:age", "profile:segment"]

# (customer_id, event_timestamp, expected sum_1d, n_7d, last_cat, age, segment); rows 4 and 7 repeat rows 0 and 1
ROWS = [
    (2, at(2), 7.0, 2, "c", 45, "y"),
    (1, at(0, 6), 30.0, 2, "b", 31, "x"),
    (1, at(2), 3.5, 3, "b", 32, "y"),
    (9, at(1), 0.0, 0, None, None, None),  # a key with no data at all
    (2, at(2), 7.0, 2, "c", 45, "y"),
    (1, at(0, 5), 10.0, 1, "a", 31, "x"),  # the 05:00 event is not strictly before t
    (3, at(0, 4, 0, 30), 0.0, 0, None, None, None),  # the 04:00 event is created at 04:01, after t
    (1, at(0, 6), 30.0, 2, "b", 31, "x"),
]


def entity_df() -> pd.DataFrame:
    n = len(ROWS)
    return pd.DataFrame({
        "customer_id": pd.array([r[0] for r in ROWS], dtype="int64"),
        "event_timestamp": pd.DatetimeIndex([r[1] for r in ROWS]).as_unit("us"),
        "row_no": np.arange(n, dtype="int64")[::-1].copy(),  # not sorted, to see the order kept
        "label": pd.array([1, 0, 1, 0, 1, 1, 0, 0], dtype="int64"),
        "weight": [0.5, np.nan, 1.5, 2.0, 0.5, np.nan, 3.0, 1.0],
        "note": ["a", None, "c", "d", "a", "f", None, "h"],
        "flag": [True, False, True, True, True, False, False, True],
        "other_time": pd.DatetimeIndex([at(d) for d in range(n)]).as_unit("us"),
    })


PASSTHROUGH = ["customer_id", "event_timestamp", "row_no", "label", "weight", "note", "flag", "other_time"]
OUTPUT = [*PASSTHROUGH, "sum_1d", "n_7d", "last_cat", "age", "segment"]


def expected_features() -> pd.DataFrame:
    return pd.DataFrame({
        "sum_1d": [r[2] for r in ROWS],
        "n_7d": [r[3] for r in ROWS],
        "last_cat": [r[4] for r in ROWS],
        "age": [r[5] for r in ROWS],
        "segment": [r[6] for r in ROWS],
    })


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("entity_input") / "repo"
    (path / "data").mkdir(parents=True)
    (path / "feature_store.yaml").write_text("project: t\n")
    events = [(1, at(0, 1), 10.0, "a"), (1, at(0, 5), 20.0, "b"), (1, at(1, 2), 3.5, "b"),
              (2, at(0, 2), 5.0, "a"), (2, at(1, 6), 7.0, "c"), (3, at(0, 4), 1.0, "a")]
    pd.DataFrame({
        "customer_id": pd.array([e[0] for e in events], dtype="int64"),
        "event_timestamp": [e[1] for e in events],
        "created": [e[1] + pd.Timedelta(minutes=1) for e in events],
        "amount": [e[2] for e in events],
        "category": [e[3] for e in events],
    }).to_parquet(path / "data" / "tx.parquet")
    pd.DataFrame({
        "customer_id": pd.array([1, 1, 2], dtype="int64"),
        "updated_at": [at(0), at(1, 12), at(0, 3)],
        "age": pd.array([31, 32, 45], dtype="int64"),
        "segment": ["x", "y", "y"],
    }).to_parquet(path / "data" / "profiles.parquet")
    entity_df().to_parquet(path / "data" / "entities.parquet")
    pd.DataFrame({
        "device_id": ["d1", "d1", "d2"],
        "event_timestamp": [at(0, 1), at(0, 2), at(0, 3)],
        "amount": [1.0, 2.0, 4.0],
    }).to_parquet(path / "data" / "devices.parquet")
    return path


@pytest.fixture(scope="module")
def store(repo: Path) -> Iterator[FeatureStore]:
    customer = Entity(name="customer", join_keys=["customer_id"])
    tx = FileSource(name="tx", path="data/tx.parquet", created_timestamp_field="created")
    profiles = FileSource(name="profiles", path="data/profiles.parquet", timestamp_field="updated_at")
    spend = FeatureView(
        name="spend", entities=[customer], source=tx, hop="1h",
        features=[Sum("amount", window="1d", name="sum_1d"), Count(window="7d", name="n_7d"),
                  Last("category", window="7d", name="last_cat")],
    )
    profile = FeatureView(name="profile", entities=[customer], source=profiles,
                          features=[Field("age", "int64"), Field("segment")], ttl="30d")
    device = Entity(name="device", join_keys=["device_id"])
    device_spend = FeatureView(name="device_spend", entities=[device],
                               source=FileSource(name="devices", path="data/devices.parquet"),
                               features=[Sum("amount", window="1d", name="device_total")])
    s = FeatureStore(repo)
    s.apply([customer, tx, profiles, spend, profile, device, device_spend])
    assert isinstance(s.offline, DuckDBOfflineEngine)
    s.offline.con.execute(
        f"CREATE OR REPLACE TABLE entity_rows AS SELECT * FROM read_parquet('{repo / 'data' / 'entities.parquet'}')"
    )
    yield s
    s.close()


INPUTS: dict[str, Callable[[Path], Any]] = {
    "dataframe": lambda repo: entity_df(),
    "arrow": lambda repo: pa.Table.from_pandas(entity_df(), preserve_index=False),
    "parquet-str": lambda repo: str(repo / "data" / "entities.parquet"),
    "parquet-path": lambda repo: repo / "data" / "entities.parquet",
    "sql-read-parquet": lambda repo: f"SELECT * FROM read_parquet('{repo / 'data' / 'entities.parquet'}')",
    "sql-table": lambda repo: "SELECT * FROM entity_rows",
}


def as_plain(df: pd.DataFrame) -> pd.DataFrame:
    """Nullable dtypes to plain object values, so comparisons look at values only."""
    return df.astype(object).where(df.notna(), None)


@pytest.fixture(scope="module")
def reference(store: FeatureStore) -> pd.DataFrame:
    """The training set for the DataFrame input, that every other input form must reproduce."""
    return store.get_historical_features(entity_df(), FEATURES).to_df()


@pytest.mark.parametrize("kind", list(INPUTS))
def test_every_input_form_gives_the_same_result(
    store: FeatureStore, repo: Path, reference: pd.DataFrame, kind: str
) -> None:
    out = store.get_historical_features(INPUTS[kind](repo), FEATURES).to_df()
    pd.testing.assert_frame_equal(out, reference)
    # and the result is right, not only equal
    assert list(out.columns) == OUTPUT
    pd.testing.assert_frame_equal(as_plain(out[expected_features().columns]), as_plain(expected_features()),
                                  check_dtype=False)


def test_extra_columns_are_passed_through_unchanged(store: FeatureStore) -> None:
    rows = entity_df()
    out = store.get_historical_features(rows, FEATURES).to_df()
    assert len(out) == len(rows)
    pd.testing.assert_frame_equal(as_plain(out[PASSTHROUGH]), as_plain(rows[PASSTHROUGH]))
    arrow = store.get_historical_features(rows, FEATURES).to_arrow()
    given = pa.Table.from_pandas(rows, preserve_index=False)
    for name in PASSTHROUGH:
        assert arrow.column(name).to_pylist() == given.column(name).to_pylist(), name
    assert arrow.schema.field("other_time").type == pa.timestamp("us", tz="UTC")
    assert pa.types.is_floating(arrow.schema.field("weight").type)
    assert pa.types.is_boolean(arrow.schema.field("flag").type)


def test_output_order_is_input_order_with_duplicates(store: FeatureStore) -> None:
    rng = np.random.default_rng(7)
    picks = rng.integers(0, len(ROWS), 300)  # many repeats, in random order
    base = entity_df()
    rows = base.iloc[picks].reset_index(drop=True)
    rows["row_no"] = np.arange(len(rows))[::-1]
    out = store.get_historical_features(rows, FEATURES).to_df()
    assert out["row_no"].tolist() == rows["row_no"].tolist()
    assert out["customer_id"].tolist() == rows["customer_id"].tolist()
    assert out["event_timestamp"].tolist() == rows["event_timestamp"].tolist()
    expected = as_plain(expected_features().iloc[picks].reset_index(drop=True))
    pd.testing.assert_frame_equal(as_plain(out[expected.columns]), expected, check_dtype=False)


def test_duplicate_rows_get_identical_values(store: FeatureStore) -> None:
    rows = pd.concat([entity_df().iloc[[1]]] * 5, ignore_index=True)
    out = store.get_historical_features(rows, FEATURES).to_df()
    assert len(out) == 5
    assert as_plain(out.drop_duplicates()).shape[0] == 1


@pytest.mark.parametrize("as_path", [False, True], ids=["str", "Path"])
def test_to_parquet_writes_what_to_df_returns(store: FeatureStore, tmp_path: Path, as_path: bool) -> None:
    job = store.get_historical_features(entity_df(), FEATURES)
    target = tmp_path / "training set's.parquet"  # a quote in the path
    job.to_parquet(target if as_path else str(target))
    written = pq.read_table(target)
    arrow = job.to_arrow()
    assert written.column_names == arrow.column_names
    assert written.num_rows == arrow.num_rows == len(ROWS)
    for name in arrow.column_names:
        assert written.column(name).to_pylist() == arrow.column(name).to_pylist(), name
    pd.testing.assert_frame_equal(as_plain(pd.read_parquet(target)), as_plain(job.to_df()))


def test_to_arrow(store: FeatureStore) -> None:
    job = store.get_historical_features(entity_df(), FEATURES)
    table = job.to_arrow()
    assert isinstance(table, pa.Table)
    assert table.num_rows == len(ROWS)
    assert table.column_names == OUTPUT
    assert table.column("sum_1d").to_pylist() == [r[2] for r in ROWS]
    assert table.column("n_7d").to_pylist() == [r[3] for r in ROWS]
    assert table.column("last_cat").to_pylist() == [r[4] for r in ROWS]
    assert table.column("age").to_pylist() == [r[5] for r in ROWS]
    assert pa.types.is_integer(table.schema.field("age").type)
    assert pa.types.is_integer(table.schema.field("n_7d").type)
    # the job is lazy and repeatable: running it twice gives the same table
    assert job.to_arrow().equals(table)
    assert "ORDER BY" in job.sql()


def test_nanosecond_and_microsecond_timestamps_agree(store: FeatureStore) -> None:
    us = entity_df()
    ns = us.assign(event_timestamp=us["event_timestamp"].dt.as_unit("ns"))
    a = store.get_historical_features(us, FEATURES).to_df()
    b = store.get_historical_features(ns, FEATURES).to_df()
    pd.testing.assert_frame_equal(as_plain(a), as_plain(b))


def test_full_feature_names_keep_request_order(store: FeatureStore) -> None:
    out = store.get_historical_features(entity_df(), ["profile:age", "spend:sum_1d"], full_feature_names=True).to_df()
    assert list(out.columns[-2:]) == ["profile__age", "spend__sum_1d"]  # request order, not view order
    assert out["spend__sum_1d"].tolist() == [r[2] for r in ROWS]


def test_empty_entity_rows_give_an_empty_result_with_all_columns(store: FeatureStore) -> None:
    out = store.get_historical_features(entity_df().iloc[:0], FEATURES).to_df()
    assert len(out) == 0
    assert list(out.columns) == OUTPUT


def test_parquet_path_without_parquet_suffix(
    store: FeatureStore, repo: Path, reference: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory
) -> None:
    target = tmp_path_factory.mktemp("rows") / "entities.pq"  # no 'parquet' anywhere in the path
    target.write_bytes((repo / "data" / "entities.parquet").read_bytes())
    try:
        out = store.get_historical_features(str(target), FEATURES).to_df()
    except EntityDataFrameError as exc:  # acceptable too, when the message explains the path rule
        assert "parquet" in str(exc).lower(), str(exc)
    else:
        pd.testing.assert_frame_equal(out, reference)


def test_categorical_integer_join_keys(store: FeatureStore, reference: pd.DataFrame) -> None:
    rows = entity_df()
    rows["customer_id"] = rows["customer_id"].astype("category")
    out = store.get_historical_features(rows, FEATURES).to_df()
    pd.testing.assert_frame_equal(as_plain(out), as_plain(reference))


def device_rows() -> pd.DataFrame:
    return pd.DataFrame({"device_id": ["d1", "d2", "d3", "d1"], "event_timestamp": [at(0, 12)] * 4})


def test_string_join_keys(store: FeatureStore) -> None:
    out = store.get_historical_features(device_rows(), ["device_spend:device_total"]).to_df()
    assert out["device_total"].tolist() == [3.0, 4.0, 0.0, 3.0]


def test_categorical_string_join_keys(store: FeatureStore) -> None:
    rows = device_rows()
    rows["device_id"] = rows["device_id"].astype("category")
    out = store.get_historical_features(rows, ["device_spend:device_total"]).to_df()
    assert out["device_total"].tolist() == [3.0, 4.0, 0.0, 3.0]
