"""polars DataFrames in and out: entity rows of training sets, online entity rows, pushed rows, to_polars()."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from feature_store import FeatureStore
from feature_store.errors import EntityDataFrameError

pl = pytest.importorskip("polars")  # a dev extra; the extra feature-store[polars] for users

ROOT = Path(__file__).resolve().parent.parent
FEATURES = ["customer_spend:avg_spend_90d", "customer_spend:txn_count_30d", "customer_spend:last_category",
            "customer_profile:age"]


@pytest.fixture
def store(example_repo: Path) -> FeatureStore:
    s = FeatureStore(example_repo)
    s.apply()
    return s


def test_entity_rows_as_polars_give_the_pandas_result(store: FeatureStore, example_repo: Path) -> None:
    path = example_repo / "data" / "entity_rows.parquet"
    want = store.get_historical_features(pd.read_parquet(path), FEATURES).to_df()
    eager = pl.read_parquet(path)
    assert eager.schema["event_timestamp"] == pl.Datetime("us", "UTC")
    pd.testing.assert_frame_equal(store.get_historical_features(eager, FEATURES).to_df(), want)
    lazy = pl.scan_parquet(path)
    pd.testing.assert_frame_equal(store.get_historical_features(lazy, FEATURES).to_df(), want)


def test_polars_string_and_categorical_keys(tmp_path: Path) -> None:
    """Strings arrive as large_string, categoricals dictionary-encoded: both join on their values."""
    from feature_store import Entity, FeatureView, FileSource, Sum

    events = pd.DataFrame({"user": ["a", "b", "a"], "amount": [1.0, 2.0, 4.0],
                           "ts": pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03"], utc=True)})
    (tmp_path / "data").mkdir()
    events.to_parquet(tmp_path / "data" / "events.parquet")
    (tmp_path / "feature_store.yaml").write_text("project: p\n")
    user = Entity(name="user", join_keys=["user"])
    view = FeatureView(name="spend", entities=[user], source=FileSource(name="events", path="data/events.parquet",
                                                                         timestamp_field="ts"),
                       features=[Sum("amount", window="30d", name="total")])
    with FeatureStore(tmp_path) as s:
        s.apply([user, view])
        stamps = [datetime(2026, 1, 10, tzinfo=UTC)] * 3
        for key_type in (pl.String, pl.Categorical):
            rows = pl.DataFrame({"user": ["a", "b", "zz"], "event_timestamp": stamps},
                                schema_overrides={"user": key_type})
            got = s.get_historical_features(rows, ["spend:total"]).to_polars()
            assert got["total"].to_list() == [5.0, 2.0, 0.0], key_type


def test_to_polars_equals_to_arrow_and_keeps_integer_nulls(store: FeatureStore) -> None:
    rows = pd.DataFrame({"customer_id": [1, 2, 999_999], "event_timestamp": [pd.Timestamp.now(tz="UTC")] * 3})
    job = store.get_historical_features(rows, FEATURES)
    frame = job.to_polars()
    assert isinstance(frame, pl.DataFrame)
    assert frame.equals(pl.from_arrow(job.to_arrow()))
    assert frame.schema["age"] == pl.Int64 and frame["age"].to_list()[2] is None  # not a float NaN
    assert frame.columns == list(job.to_df().columns)


def test_online_entity_rows_as_polars(store: FeatureStore) -> None:
    store.materialize()
    ids = [1, 2, 999_999]
    want = store.get_online_features(FEATURES, {"customer_id": ids})
    got = store.get_online_features(FEATURES, pl.DataFrame({"customer_id": ids}))
    assert got.to_dict() == want.to_dict() and got.statuses == want.statuses
    got_async = asyncio.run(store.get_online_features_async(FEATURES, pl.DataFrame({"customer_id": ids}).lazy()))
    assert got_async.to_dict() == want.to_dict()


def test_push_a_polars_frame(store: FeatureStore) -> None:
    store.materialize()
    refs = ["customer_spend:txn_count_30d", "customer_spend:spend_7d"]
    now = datetime.now(UTC)
    rows = pl.DataFrame({"transaction_id": [9_000_001, 9_000_002], "customer_id": [424242, 424242],
                         "event_timestamp": [now, now],
                         "amount": [10.0, 2.5], "category": ["food", "travel"]})
    result = store.push("transactions_push", rows)
    assert result.rows == 2
    online = store.get_online_features(refs, pl.DataFrame({"customer_id": [424242]}))
    assert online.values == {"txn_count_30d": [2], "spend_7d": [12.5]}
    assert store.verify(sample=50).ok


def test_other_frames_are_named_in_the_error(store: FeatureStore) -> None:
    with pytest.raises(EntityDataFrameError, match=r"pandas or polars DataFrame.*got polars\.series\.series\.Series"):
        store.get_historical_features(pl.Series("customer_id", [1]), FEATURES)


def test_to_polars_without_polars_names_the_extra(store: FeatureStore, example_repo: Path) -> None:
    """In a process where polars cannot be imported (as when it is not installed)."""
    code = f"""
import sys
sys.modules["polars"] = None  # what Python does for a module that is not there: import raises ImportError
import pandas as pd
from feature_store import FeatureStore
from feature_store.errors import MissingDependencyError
store = FeatureStore({str(example_repo)!r})
rows = pd.DataFrame({{"customer_id": [1], "event_timestamp": pd.to_datetime(["2026-01-01"], utc=True)}})
job = store.get_historical_features(rows, ["customer_spend:spend_7d"])
assert len(job.to_df()) == 1
try:
    job.to_polars()
except MissingDependencyError as exc:
    print(exc.message)
    print(exc.details)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    message, details = done.stdout.strip().splitlines()
    assert "to_polars() needs polars" in message and "pip install 'feature-store[polars]'" in message
    assert details == "{'package': 'polars', 'extra': 'polars'}"
