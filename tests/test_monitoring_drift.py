"""Profiles and drift: statistics per feature, PSI on the reference's deciles and on categories, unseen
categories, null shares, per-feature thresholds from the repo, saved profiles in the registry (removed by
teardown), freshness per view."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import feature_store as fs
from feature_store.errors import DefinitionError, MonitoringError, ProfileNotFoundError
from feature_store.monitoring.drift import compare, psi, thresholds_of
from feature_store.monitoring.profiles import profile_table
from feature_store.store import FeatureStore


def frame(n: int, seed: int, shift: float = 0.0, categories: tuple[str, ...] = ("a", "b", "c"),
          null_every: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    amount = rng.normal(100 + shift, 15, n)
    if null_every:
        amount[::null_every] = np.nan
    return pd.DataFrame({"customer_id": np.arange(n), "amount": amount, "count": rng.integers(0, 5, n),
                         "category": rng.choice(list(categories), n), "flag": rng.random(n) < 0.3})


def test_profile_statistics_match_numpy() -> None:
    df = frame(5000, 1, null_every=10)
    profile = profile_table(df)
    amount = profile["features"]["amount"]
    values = df["amount"].dropna().to_numpy()
    assert amount["kind"] == "numeric" and amount["rows"] == 5000 and amount["count"] == values.size
    assert amount["null_share"] == pytest.approx(0.1)
    assert amount["min"] == values.min() and amount["max"] == values.max()
    assert amount["mean"] == pytest.approx(values.mean()) and amount["std"] == pytest.approx(values.std(ddof=1))
    assert amount["percentiles"][50] == pytest.approx(np.median(values))
    assert sum(amount["histogram"]["counts"]) == values.size
    category = profile["features"]["category"]
    assert category["kind"] == "categorical" and sum(category["frequencies"].values()) == 5000
    assert category["frequencies"] == df["category"].value_counts().to_dict()
    assert profile["features"]["flag"]["frequencies"] == {"true": int(df["flag"].sum()),
                                                          "false": int((~df["flag"]).sum())}


def test_profile_skips_timestamps_and_lists_and_reads_arrow_and_parquet(tmp_path: Path) -> None:
    table = pa.table({"ts": pa.array([datetime(2026, 1, 1, tzinfo=UTC)] * 3), "xs": [[1], [2], [3]],
                      "v": [1.0, None, float("nan")]})
    profile = profile_table(table)
    assert list(profile["features"]) == ["v"]
    assert profile["features"]["v"]["null_share"] == pytest.approx(2 / 3)  # NaN counts as missing
    path = tmp_path / "t.parquet"
    pd.DataFrame({"v": [1.0, 2.0]}).to_parquet(path)
    assert profile_table(str(path))["features"]["v"]["count"] == 2
    with pytest.raises(MonitoringError, match="cannot read the parquet file"):
        profile_table(str(tmp_path / "missing.parquet"))


def test_psi_formula() -> None:
    assert psi(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.0
    expected = (0.9 - 0.5) * np.log(0.9 / 0.5) + (0.1 - 0.5) * np.log(0.1 / 0.5)
    assert psi(np.array([0.5, 0.5]), np.array([0.9, 0.1])) == pytest.approx(expected)


def test_same_distribution_does_not_drift_and_shift_does() -> None:
    reference = profile_table(frame(20_000, 1))
    same = compare(reference, profile_table(frame(20_000, 2)))
    assert not same.drifted, {n: f.psi for n, f in same.features.items()}
    assert all(f.psi < 0.02 for f in same.features.values())
    shifted = compare(reference, profile_table(frame(20_000, 2, shift=15)))  # one standard deviation
    assert shifted.drifted == ["amount"] and shifted.features["amount"].psi > 0.5


def test_numeric_psi_agrees_with_exact_counts_on_decile_bins() -> None:
    ref, cur = frame(20_000, 1), frame(20_000, 2, shift=5)
    edges = np.unique(np.quantile(ref["amount"], np.linspace(0.1, 0.9, 9)))

    def shares(values: np.ndarray) -> np.ndarray:
        return np.bincount(np.searchsorted(edges, values, side="left"), minlength=edges.size + 1) / values.size

    exact = psi(shares(ref["amount"].to_numpy()), shares(cur["amount"].to_numpy()))
    got = compare(profile_table(ref), profile_table(cur)).features["amount"].psi
    assert got == pytest.approx(exact, rel=0.05)


def test_discrete_numbers_drift_by_their_values() -> None:
    ref = pd.DataFrame({"n": [0] * 500 + [1] * 300 + [2] * 200})
    same = pd.DataFrame({"n": [0] * 250 + [1] * 150 + [2] * 100})
    moved = pd.DataFrame({"n": [0] * 100 + [1] * 300 + [2] * 600})
    assert compare(profile_table(ref), profile_table(same)).features["n"].psi == pytest.approx(0.0, abs=1e-9)
    assert compare(profile_table(ref), profile_table(moved)).features["n"].drifted


def test_unseen_categories_with_their_share_and_null_share_change() -> None:
    reference = profile_table(frame(10_000, 1))
    current_df = frame(10_000, 2, categories=("a", "b", "c", "new_1", "new_2"), null_every=4)
    report = compare(reference, profile_table(current_df))
    category = report.features["category"]
    assert set(category.unseen) == {"new_1", "new_2"}
    assert category.unseen_share == pytest.approx(current_df["category"].isin(["new_1", "new_2"]).mean())
    assert category.drifted  # two fifths of the rows moved to values the reference never had
    amount = report.features["amount"]
    assert amount.null_share_reference == 0.0 and amount.null_share_current == pytest.approx(0.25)
    assert amount.null_share_change == pytest.approx(0.25)
    assert report.features["flag"].unseen == () and not report.features["flag"].drifted


def test_features_on_one_side_only_are_named() -> None:
    report = compare(profile_table(pd.DataFrame({"a": [1.0], "b": ["x"]})),
                     profile_table(pd.DataFrame({"a": ["1"], "c": [2.0]})))
    assert report.only_in_reference == ("b",) and report.only_in_current == ("c",)
    assert report.kind_changed == ("a",) and report.features == {}


def test_per_feature_threshold_from_the_repo(example_repo: Path) -> None:
    with FeatureStore(example_repo) as store:
        store.apply()
        features_py = example_repo / "features.py"
        text = features_py.read_text()
        marker = 'description="Latest known profile, at most a year old.",'
        assert marker in text
        features_py.write_text(text.replace(marker, marker + ' drift_thresholds={"age": 0.02},'))
        plan = store.plan()
        # a threshold is not part of the materialized data: only that view's spec changes
        assert [(c.kind, c.name) for c in plan.changes] == [("feature_view", "customer_profile")]
        store.apply(plan)
        thresholds = thresholds_of(store.catalog())
    assert thresholds == {"age": 0.02, "customer_profile__age": 0.02}
    reference = profile_table(pd.DataFrame({"age": list(range(20, 70)) * 20}))
    current = profile_table(pd.DataFrame({"age": list(range(22, 72)) * 20}))
    assert not compare(reference, current).features["age"].drifted
    assert compare(reference, current, thresholds).features["age"].drifted


def test_drift_threshold_must_name_a_feature_and_be_positive() -> None:
    customer = fs.Entity(name="customer", join_keys=["customer_id"])
    source = fs.FileSource(name="p", path="p.parquet")
    with pytest.raises(DefinitionError, match=r"drift_thresholds names 'agee'.*Did you mean 'age'"):
        fs.FeatureView(name="v", entities=[customer], source=source, features=[fs.Field("age", "int64")],
                       drift_thresholds={"agee": 0.1})
    with pytest.raises(DefinitionError, match="must be a PSI above 0"):
        fs.FeatureView(name="v", entities=[customer], source=source, features=[fs.Field("age", "int64")],
                       drift_thresholds={"age": 0})


def test_views_without_thresholds_keep_their_spec(example_repo: Path) -> None:
    with FeatureStore(example_repo) as store:
        view = store.load_definitions().views["customer_profile"]
    assert "drift_thresholds" not in view.to_spec()


def test_saved_profile_round_trips_through_a_shared_registry_and_teardown_removes_it(example_repo: Path,
                                                                                     tmp_path: Path) -> None:
    df = frame(1000, 1)
    with FeatureStore(example_repo) as store:
        store.apply()
        saved = store.save_profile("train_v1", df)
        assert "customer_id" not in saved["features"]  # an entity key, not a feature
    other = tmp_path / "other_host"  # another checkout of the repo, on the same registry
    other.mkdir()
    (other / "feature_store.yaml").write_text(
        f"project: demo\nregistry: {example_repo / 'data' / 'registry.db'}\n")
    with FeatureStore(other) as store:
        assert store.load_profile("train_v1") == saved
        with pytest.raises(ProfileNotFoundError, match=r"no saved profile 'train_v2'.*Did you mean 'train_v1'"):
            store.load_profile("train_v2")
    with FeatureStore(example_repo) as store:
        store.teardown()
        with pytest.raises(ProfileNotFoundError):
            store.load_profile("train_v1")


def test_freshness_per_view(example_repo: Path) -> None:
    with FeatureStore(example_repo) as store:
        store.apply()
        before = {f.view: f for f in store.freshness()}
        assert before["customer_profile"].watermark is None  # not materialized yet
        newest = pd.read_parquet(example_repo / "data" / "profiles.parquet")["updated_at"].max()
        assert before["customer_profile"].newest_event == newest.to_pydatetime()
        end = datetime.now(UTC) - timedelta(minutes=1)
        store.materialize(end=end)
        store.push("transactions_push", pd.read_parquet(example_repo / "data" / "transactions.parquet").head(1))
        after = {f.view: f for f in store.freshness()}
    assert after["customer_profile"].watermark is not None and after["customer_profile"].watermark <= end
    assert after["customer_spend"].last_push is not None and after["customer_profile"].last_push is None
    age = after["customer_spend"].to_dict()["last_push_age_seconds"]
    assert age is not None and 0 <= age < 60


# --- properties ---------------------------------------------------------------------------------


CATEGORIES = st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=1, max_size=200)
NUMBERS = st.lists(st.floats(-1e6, 1e6, allow_nan=False) | st.integers(-50, 50).map(float), min_size=1,
                   max_size=300)


@settings(max_examples=60, deadline=None)
@given(CATEGORIES, CATEGORIES)
def test_categorical_psi_is_the_formula_over_the_reference_values_and_the_rest(ref: list[str],
                                                                                cur: list[str]) -> None:
    got = compare(profile_table(pd.DataFrame({"c": ref})), profile_table(pd.DataFrame({"c": cur}))).features["c"]
    values = sorted(set(ref))
    expected = np.array([ref.count(v) / len(ref) for v in values] + [0.0])
    actual = np.array([cur.count(v) / len(cur) for v in values] + [sum(v not in values for v in cur) / len(cur)])
    assert got.psi == pytest.approx(psi(expected, actual), abs=1e-12)
    assert set(got.unseen) == set(cur) - set(ref)
    assert got.unseen_share == pytest.approx(sum(v not in values for v in cur) / len(cur))


@settings(max_examples=60, deadline=None)
@given(NUMBERS, NUMBERS)
def test_numeric_psi_is_zero_against_itself_and_never_negative(ref: list[float], cur: list[float]) -> None:
    reference = profile_table(pd.DataFrame({"x": ref}))
    assert compare(reference, reference).features["x"].psi == pytest.approx(0.0, abs=1e-12)
    assert compare(reference, profile_table(pd.DataFrame({"x": cur}))).features["x"].psi >= 0.0
