"""Bad input: each mistake gets its own error class and a message that names the object and the fix.

Every error is a FeatureStoreError subclass from feature_store.errors with an HTTP status; the
``match=`` patterns pin the parts of each message a user needs (what, where, how to fix it).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from feature_store import (
    Count,
    DuckDBSource,
    Entity,
    FeatureService,
    FeatureStore,
    FeatureView,
    FeatureViewProjection,
    Field,
    FileSource,
    Mean,
    StdDev,
    Sum,
)
from feature_store.definitions import Definition
from feature_store.errors import (
    DefinitionError,
    DuplicateObjectError,
    EntityDataFrameError,
    FeatureNameCollisionError,
    FeatureNotFoundError,
    FeatureStoreError,
    InvalidIdentifierError,
    RepoLoadError,
    SchemaError,
    SourceNotFoundError,
    UnknownReferenceError,
)

BASE = pd.Timestamp("2024-01-01", tz="UTC")


@contextlib.contextmanager
def raises(cls: type[FeatureStoreError], match: str) -> Iterator[pytest.ExceptionInfo[FeatureStoreError]]:
    """pytest.raises, then check that the error is exactly ``cls`` (not a parent) and has an HTTP status."""
    with pytest.raises(cls, match=match) as info:
        yield info
    check(info, cls)


def check(info: pytest.ExceptionInfo[FeatureStoreError], cls: type[FeatureStoreError]) -> FeatureStoreError:
    err = info.value
    assert type(err) is cls, f"expected exactly {cls.__name__}, got {type(err).__name__}: {err}"
    assert isinstance(err.http_status, int) and 400 <= err.http_status < 600
    assert err.to_dict()["type"] == cls.__name__
    return err


# --- a repo with data -------------------------------------------------------------------------


def write_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "feature_store.yaml").write_text("project: t\n")
    (path / "data").mkdir()
    ts = [BASE + pd.Timedelta(hours=h) for h in (1, 5, 2, 30, 4)]
    pd.DataFrame({
        "customer_id": pd.array([1, 1, 2, 2, 3], dtype="int64"),
        "event_timestamp": ts,
        "created": [t + pd.Timedelta(minutes=1) for t in ts],
        "ts_str": [t.isoformat() for t in ts],
        "amount": [10.0, 20.0, 5.0, 7.0, 1.0],
        "category": ["a", "b", "a", "c", "a"],
    }).to_parquet(path / "data" / "tx.parquet")
    pd.DataFrame({
        "customer_id": pd.array([1, 2], dtype="int64"),
        "updated_at": [BASE, BASE + pd.Timedelta(hours=3)],
        "age": pd.array([31, 45], dtype="int64"),
        "segment": ["x", "y"],
    }).to_parquet(path / "data" / "profiles.parquet")
    return path


customer = Entity(name="customer", join_keys=["customer_id"])
tx = FileSource(name="tx", path="data/tx.parquet", created_timestamp_field="created")
profiles = FileSource(name="profiles", path="data/profiles.parquet", timestamp_field="updated_at")
customer_spend = FeatureView(
    name="customer_spend", entities=[customer], source=tx,
    features=[Mean("amount", window="90d", name="avg_spend_90d"), Sum("amount", window="7d", name="total"),
              Count(window="7d", name="n")],
)
customer_refunds = FeatureView(name="customer_refunds", entities=[customer], source=tx,
                               features=[Sum("amount", window="30d", name="total")])
profile = FeatureView(name="profile", entities=[customer], source=profiles,
                      features=[Field("age", "int64"), Field("segment")], ttl="30d")
GOOD: list[Definition] = [customer, tx, profiles, customer_spend, customer_refunds, profile]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FeatureStore]:
    """An applied store shared by the tests that only read (plan, get_historical_features)."""
    s = FeatureStore(write_repo(tmp_path_factory.mktemp("bad_input") / "repo"))
    s.apply(GOOD)
    yield s
    s.close()


@pytest.fixture
def fresh_repo(tmp_path: Path) -> Path:
    return write_repo(tmp_path / "repo")


def entity_rows(**columns: Any) -> pd.DataFrame:
    data = {"customer_id": pd.array([1, 2, 3], dtype="int64"), "event_timestamp": [BASE + pd.Timedelta(days=2)] * 3}
    data.update(columns)
    return pd.DataFrame({k: v for k, v in data.items() if v is not None})


def view(name: str = "v", **kwargs: Any) -> FeatureView:
    kwargs.setdefault("entities", ["customer"])
    kwargs.setdefault("source", "tx")
    kwargs.setdefault("features", [Count(window="1d")])
    return FeatureView(name=name, **kwargs)


# --- repo files -------------------------------------------------------------------------------

HEADER = "from feature_store import *\n"


@pytest.mark.parametrize(("first", "second", "label"), [
    ('customer = Entity(name="customer", join_keys=["customer_id"])',
     'customer = Entity(name="customer", join_keys=["customer_id"], description="other")', "entities"),
    ('tx = FileSource(name="tx", path="data/tx.parquet")',
     'tx = FileSource(name="tx", path="data/tx.parquet", created_timestamp_field="created")', "sources"),
    ('c = Entity(name="customer", join_keys=["customer_id"])\n'
     'v = FeatureView(name="spend", entities=[c], source=FileSource(name="tx", path="data/tx.parquet"), '
     'features=[Count(window="1d")])',
     'v2 = FeatureView(name="spend", entities=["customer"], source="tx", features=[Count(window="2d")])',
     "feature views"),
], ids=["entity", "source", "feature-view"])
def test_duplicate_names_across_repo_files(fresh_repo: Path, first: str, second: str, label: str) -> None:
    (fresh_repo / "a.py").write_text(HEADER + first + "\n")
    (fresh_repo / "b.py").write_text(HEADER + second + "\n")
    with raises(DuplicateObjectError, match=(
        rf"two different {label} are named '(customer|tx|spend)' \(in a\.py and in b\.py; "
        r"they differ in [a-z_, ]+\); rename one of them"
    )) as info:
        FeatureStore(fresh_repo).plan()
    err = check(info, DuplicateObjectError)
    assert err.details["files"] == ["a.py", "b.py"]
    assert err.http_status == 422


def test_identical_definitions_in_two_files_are_one_object(fresh_repo: Path) -> None:
    entity = 'customer = Entity(name="customer", join_keys=["customer_id"])\n'
    (fresh_repo / "a.py").write_text(HEADER + entity)
    (fresh_repo / "b.py").write_text(HEADER + entity + 'v = FeatureView(name="v", entities=[customer], '
                                     'source=FileSource(name="tx", path="data/tx.parquet"), '
                                     'features=[Count(window="1d")])\n')
    plan = FeatureStore(fresh_repo).plan()
    assert {(c.kind, c.name) for c in plan.changes} == {("entity", "customer"), ("source", "tx"),
                                                        ("feature_view", "v")}


def test_duplicate_in_given_objects(store: FeatureStore) -> None:
    with raises(DuplicateObjectError, match=r"are named 'customer'.*rename one of them") as info:
        store.plan([*GOOD, Entity(name="customer", join_keys=["id"])])
    check(info, DuplicateObjectError)


def test_duplicate_in_given_objects_message_says_what_differs(store: FeatureStore) -> None:
    with raises(DuplicateObjectError, match=r"join_keys"):
        store.plan([*GOOD, Entity(name="customer", join_keys=["id"])])


@pytest.mark.parametrize(("body", "cls", "pattern"), [
    ('raise RuntimeError("boom")', RepoLoadError, r"importing broken\.py failed: RuntimeError: boom"),
    ("def f(:\n    pass", RepoLoadError, r"importing broken\.py failed: SyntaxError"),
    ("import no_such_module_xyz", RepoLoadError,
     r"importing broken\.py failed: ModuleNotFoundError: No module named 'no_such_module_xyz'"),
    ('s = Sum("amount", window="0d")', DefinitionError,
     r"^broken\.py: Sum\('amount'\) window: must be positive, got '0d'"),
    ('c = Entity(name="customer")', DefinitionError, r"^broken\.py: invalid Entity: join_keys: Field required"),
    ('c = Entity(name="my customer", join_keys=["id"])', InvalidIdentifierError,
     r"^broken\.py: entity name 'my customer' is not a valid name"),
], ids=["runtime-error", "syntax-error", "import-error", "definition-error", "validation-error", "identifier"])
def test_repo_file_that_fails_on_import_is_named(
    fresh_repo: Path, body: str, cls: type[FeatureStoreError], pattern: str
) -> None:
    (fresh_repo / "good.py").write_text(HEADER + 'customer = Entity(name="customer", join_keys=["customer_id"])\n')
    (fresh_repo / "broken.py").write_text(HEADER + body + "\n")
    with raises(cls, match=pattern) as info:
        FeatureStore(fresh_repo).plan()
    err = check(info, cls)
    assert err.details["file"] == "broken.py"
    assert err.__cause__ is not None  # the original error is kept


# --- references -------------------------------------------------------------------------------


def test_view_with_unknown_entity_by_name(store: FeatureStore) -> None:
    with raises(UnknownReferenceError, match=(
        r"feature view 'v' refers to entity 'custmer', which is not defined\. Did you mean 'customer'\? "
        r"Define Entity\(name='custmer', join_keys=\[\.\.\.\]\) in the repo\."
    )) as info:
        store.plan([*GOOD, view(entities=["custmer"])])
    assert check(info, UnknownReferenceError).http_status == 404


def test_view_with_unknown_source_by_name(store: FeatureStore) -> None:
    with raises(UnknownReferenceError, match=(
        r"feature view 'v' refers to source 'txx', which is not defined\. Did you mean 'tx'\? "
        r"Define FileSource\(name='txx', path=\.\.\.\) in the repo, or pass the source object itself as source="
    )) as info:
        store.plan([*GOOD, view(source="txx")])
    check(info, UnknownReferenceError)


def test_view_with_unknown_source_message_says_how_to_fix(store: FeatureStore) -> None:
    """No close name to suggest: the message still says how to fix it."""
    with raises(UnknownReferenceError, match=(
        r"refers to source 'payments', which is not defined\. Define FileSource\(name='payments', path=\.\.\.\)"
    )) as info:
        store.plan([*GOOD, view(source="payments")])
    check(info, UnknownReferenceError)


def test_service_with_unknown_view(store: FeatureStore) -> None:
    service = FeatureService(name="model", features=[FeatureViewProjection(view="customer_spnd", features=("n",))])
    with raises(UnknownReferenceError, match=(
        r"feature service 'model' refers to feature view 'customer_spnd', which is not defined\. "
        r"Did you mean 'customer_spend'\?"
    )) as info:
        store.plan([*GOOD, service])
    check(info, UnknownReferenceError)


def test_projection_of_unknown_feature(store: FeatureStore) -> None:
    with raises(FeatureNotFoundError, match=(
        r"feature view 'customer_spend' has no feature 'avg_spend_90'\. Did you mean 'avg_spend_90d'\?"
    )) as info:
        customer_spend[["avg_spend_90"]]
    check(info, FeatureNotFoundError)


# --- sources and schemas ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["data/nope.parquet", "data/*.csv", "/no/such/dir/x.parquet"])
def test_source_path_matching_no_file(store: FeatureStore, path: str) -> None:
    missing = FileSource(name="missing", path=path)
    with raises(SourceNotFoundError, match=(
        rf"source 'missing': path '{re.escape(path)}' matches no file \(looked for .*\)\. Check the path "
        r"\(relative paths are relative to the repo\)"
    )) as info:
        store.plan([*GOOD, view(source=missing)])
    err = check(info, SourceNotFoundError)
    assert err.details == {"source": "missing", "path": path}


def test_missing_timestamp_column(store: FeatureStore) -> None:
    src = FileSource(name="tx2", path="data/tx.parquet", timestamp_field="ts")
    with raises(SchemaError, match=(
        r"source 'tx2' \(used by feature view 'v'\) has no column 'ts'\..* Columns: \[.*'event_timestamp'.*\]"
    )) as info:
        store.plan([*GOOD, view(source=src)])
    check(info, SchemaError)


@pytest.mark.parametrize("which", ["timestamp_field", "created_timestamp_field"])
def test_timestamp_column_that_is_a_string(store: FeatureStore, which: str) -> None:
    src = FileSource(name="tx2", path="data/tx.parquet", **{which: "ts_str"})
    with raises(SchemaError, match=(
        r"source 'tx2' \(used by feature view 'v'\): column 'ts_str' has type VARCHAR, not a timestamp; "
        r"convert it when writing the data, or name the right column in timestamp_field/created_timestamp_field"
    )) as info:
        store.plan([*GOOD, view(source=src)])
    check(info, SchemaError)


@pytest.mark.parametrize(("features", "wrong", "right"), [
    ([Sum("amout", window="1d")], "amout", "amount"),
    ([Count("categry", window="1d")], "categry", "category"),
    ([Field("agee", "int64")], "agee", "age"),
], ids=["sum", "count", "snapshot-field"])
def test_feature_column_absent_from_source_suggests_closest(
    store: FeatureStore, features: list[Any], wrong: str, right: str
) -> None:
    source = "profiles" if isinstance(features[0], Field) else "tx"
    with raises(SchemaError, match=(
        rf"source '{source}' \(used by feature view 'v'\) has no column '{wrong}'\. Did you mean '{right}'\? "
        r"Columns: \["
    )) as info:
        store.plan([*GOOD, view(source=source, features=features)])
    assert check(info, SchemaError).details["column"] == wrong


def test_join_key_absent_from_source(store: FeatureStore) -> None:
    cust = Entity(name="cust", join_keys=["cust_id"])
    with raises(SchemaError, match=r"has no column 'cust_id'\. Did you mean 'customer_id'\?") as info:
        store.plan([*GOOD, cust, view(entities=[cust])])
    check(info, SchemaError)


@pytest.mark.parametrize("agg", [Sum, Mean, StdDev])
def test_numeric_aggregation_of_a_string_column(store: FeatureStore, agg: type) -> None:
    feature = agg("category", window="1d", name="bad")
    with raises(SchemaError, match=(
        rf"feature 'bad' of view 'v': {agg.__name__} needs a numeric column, but 'category' in source 'tx' "
        r"\(used by feature view 'v'\) is VARCHAR\. Use Count, Last or CountDistinct"
    )) as info:
        store.plan([*GOOD, view(features=[feature])])
    assert check(info, SchemaError).details == {"view": "v", "feature": "bad", "column": "category"}


# --- windows, hops, ttl -----------------------------------------------------------------------

NON_POSITIVE = [timedelta(0), "0d", "0s", timedelta(days=-1), timedelta(microseconds=-1)]


@pytest.mark.parametrize("value", NON_POSITIVE, ids=str)
@pytest.mark.parametrize(("what", "make"), [
    ("Sum('amount') window", lambda v: Sum("amount", window=v)),
    ("Count() window", lambda v: Count(window=v)),
    ("Sum('amount') hop", lambda v: Sum("amount", window="7d", hop=v)),
    ("feature view 'v' hop", lambda v: view(hop=v)),
    ("feature view 'v' ttl", lambda v: view(source="profiles", features=[Field("age", "int64")], ttl=v)),
], ids=["window", "count-window", "feature-hop", "view-hop", "ttl"])
def test_non_positive_durations(what: str, make: Callable[[Any], Any], value: Any) -> None:
    """The message names the feature or view and which duration, echoes the input, and shows a valid one."""
    with raises(DefinitionError, match=(
        rf"^{re.escape(what)}: must be positive, got {re.escape(repr(value))}; use e\.g\. '7d' or "
        r"timedelta\(days=7\)\.$"
    )) as info:
        make(value)
    check(info, DefinitionError)


def test_negative_duration_string() -> None:
    with raises(DefinitionError, match=(
        r"^Sum\('amount'\) window: (must be positive, got '-1d'|cannot read duration '-1d'; write a number and a "
        r"unit, e\.g\. '90d')"
    )) as info:
        Sum("amount", window="-1d")
    check(info, DefinitionError)


@pytest.mark.parametrize("value", ["90 days", "1.5d", "d", "90", "", "7 D", "1y", "P7D"])
@pytest.mark.parametrize(("what", "make"), [
    ("Mean('amount') window", lambda v: Mean("amount", window=v)),
    ("feature view 'v' hop", lambda v: view(hop=v)),
], ids=["window", "view-hop"])
def test_unparseable_durations(what: str, make: Callable[[Any], Any], value: str) -> None:
    with raises(DefinitionError, match=(
        rf"^{re.escape(what)}: cannot read duration {re.escape(repr(value))}; write a number and a unit, "
        r"e\.g\. '90d', '12h', '30m', '45s' or '2w', or pass a datetime\.timedelta\."
    )) as info:
        make(value)
    check(info, DefinitionError)


@pytest.mark.parametrize("value", [90, 1.5, [1]])
def test_duration_of_wrong_type(value: Any) -> None:
    with raises(DefinitionError, match=rf"^Sum\('amount'\) window: expected a timedelta or a string like '7d', got "
                                       rf"{re.escape(repr(value))}") as info:
        Sum("amount", window=value)
    check(info, DefinitionError)


# --- invalid identifiers ----------------------------------------------------------------------

BAD_NAMES = ["my name", "my-name", 'my"name', "my'name", 'x"; DROP TABLE y; --', "1st", "__private", "café",
             "a" * 64, ""]
PLACES: list[tuple[str, str, Callable[[str], Any]]] = [
    ("entity-name", "entity name", lambda n: Entity(name=n, join_keys=["id"])),
    ("join-key", "join key of entity 'e'", lambda n: Entity(name="e", join_keys=[n])),
    ("view-name", "feature view name", lambda n: view(name=n)),
    ("aggregation-name", "feature name", lambda n: Count(window="1d", name=n)),
    ("aggregation-column", "Sum column", lambda n: Sum(n, window="1d")),
    ("field-name", "field name", lambda n: Field(n, "int64")),
    ("source-name", "source name", lambda n: FileSource(name=n, path="data/tx.parquet")),
    ("timestamp-field", "timestamp_field of source 's'",
     lambda n: FileSource(name="s", path="data/tx.parquet", timestamp_field=n)),
    ("created-field", "created_timestamp_field of source 's'",
     lambda n: FileSource(name="s", path="data/tx.parquet", created_timestamp_field=n)),
    ("duckdb-table", "table of source 's'", lambda n: DuckDBSource(name="s", table=n)),
    ("service-name", "feature service name",
     lambda n: FeatureService(name=n, features=[FeatureViewProjection(view="v", features=("a",))])),
]
# an empty aggregation name means "use the default name"; an empty column is "Sum needs a column"
IDENTIFIER_CASES = [
    pytest.param(what, make, bad, id=f"{place}-{bad[:12]!r}")
    for place, what, make in PLACES
    for bad in BAD_NAMES
    if not (bad == "" and place in ("aggregation-name", "aggregation-column"))
]


@pytest.mark.parametrize(("what", "make", "bad"), IDENTIFIER_CASES)
def test_invalid_identifiers(what: str, make: Callable[[str], Any], bad: str) -> None:
    if bad.startswith("__"):
        fix = r": names starting with '__' are reserved for the feature store's own columns\."
    else:
        fix = (r" is not a valid name: use letters, digits and underscores, starting with a letter or underscore, "
               r"at most 63 characters \(e\.g\. 'customer_id'\)\.")
    with raises(InvalidIdentifierError, match=f"^{re.escape(what)} {re.escape(repr(bad))}{fix}$") as info:
        make(bad)
    err = check(info, InvalidIdentifierError)
    assert err.details["name"] == bad
    assert err.http_status == 422


def test_empty_aggregation_column() -> None:
    with raises(DefinitionError, match=r'Sum needs a column: write Sum\("amount", window=\.\.\.\)') as info:
        Sum("", window="1d")
    check(info, DefinitionError)


def test_invalid_project_name(tmp_path: Path) -> None:
    repo = write_repo(tmp_path / "repo")
    (repo / "feature_store.yaml").write_text("project: my project\n")
    with raises(InvalidIdentifierError, match=r"project in .*feature_store\.yaml 'my project' is not a valid name"):
        FeatureStore(repo)


def test_online_key_prefix_with_nul_is_refused(tmp_path: Path) -> None:
    """NUL separates the parts of an online key (online/keys.py): a key_prefix holding one could blur them."""
    from feature_store.errors import ConfigError

    repo = write_repo(tmp_path / "repo")
    (repo / "feature_store.yaml").write_text('project: t\nonline_store: {type: redis, key_prefix: "fs\\0x"}\n')
    with raises(ConfigError, match=r"key_prefix must not contain the NUL character") as info:
        FeatureStore(repo)
    check(info, ConfigError)


def test_valid_identifiers_are_accepted() -> None:
    for name in ("a", "_a", "A1_b2", "x" * 63, "customer_id"):
        Entity(name=name, join_keys=[name])
        Field(name, "int64")


# --- entity rows ------------------------------------------------------------------------------


def test_entity_df_without_join_keys(store: FeatureStore) -> None:
    with raises(EntityDataFrameError, match=(
        r"the entity rows lack column\(s\) \['customer_id'\]; they need the join keys \['customer_id'\] of the "
        r"requested views and an 'event_timestamp' column .*Columns present: \['event_timestamp', 'id'\]"
    )) as info:
        store.get_historical_features(entity_rows(customer_id=None, id=[1, 2, 3]), ["customer_spend:n"]).to_df()
    assert check(info, EntityDataFrameError).http_status == 400


def test_entity_df_without_event_timestamp(store: FeatureStore) -> None:
    rows = entity_rows().rename(columns={"event_timestamp": "ts"})
    with raises(EntityDataFrameError, match=(
        r"lack column\(s\) \['event_timestamp'\].*an 'event_timestamp' column \(the time each training row is "
        r"'as of'\)\. Columns present: \['customer_id', 'ts'\]"
    )) as info:
        store.get_historical_features(rows, ["customer_spend:n"]).to_df()
    check(info, EntityDataFrameError)


def test_entity_df_with_null_timestamps(store: FeatureStore) -> None:
    rows = entity_rows(event_timestamp=[BASE, pd.NaT, pd.NaT])
    with raises(EntityDataFrameError, match=(
        r"2 entity row\(s\) have a null 'event_timestamp' \(first at row 1\); every training row needs the time "
        r"it is as of\. Drop or fill those rows\."
    )) as info:
        store.get_historical_features(rows, ["customer_spend:n"]).to_df()
    assert check(info, EntityDataFrameError).details == {"null_rows": 2, "first_row": 1}


def test_entity_df_with_string_timestamps(store: FeatureStore) -> None:
    rows = entity_rows(event_timestamp=["2024-01-03", "2024-01-03", "2024-01-03"])
    with raises(EntityDataFrameError, match=(
        r"entity column 'event_timestamp' has type (large_)?string, not a timestamp; convert it, e\.g\. "
        r"df\['event_timestamp'\] = pd\.to_datetime\(df\['event_timestamp'\], utc=True\)"
    )) as info:
        store.get_historical_features(rows, ["customer_spend:n"]).to_df()
    check(info, EntityDataFrameError)


def test_join_key_type_mismatch(store: FeatureStore) -> None:
    rows = entity_rows(customer_id=["1", "2", "3"])
    with raises(EntityDataFrameError, match=(
        r"join key 'customer_id' is (large_)?string in the entity rows but BIGINT in source 'tx' "
        r"\(view 'customer_spend'\), so no row could match; convert the entity column to the source's type"
    )) as info:
        store.get_historical_features(rows, ["customer_spend:n"]).to_df()
    check(info, EntityDataFrameError)


def test_entity_column_named_like_a_feature(store: FeatureStore) -> None:
    with raises(EntityDataFrameError, match=(
        r"entity columns \['n'\] have the same names as requested features; rename those columns or use "
        r"full_feature_names=True"
    )) as info:
        store.get_historical_features(entity_rows(n=[1, 2, 3]), ["customer_spend:n"]).to_df()
    check(info, EntityDataFrameError)


def test_entity_column_with_reserved_name(store: FeatureStore) -> None:
    with raises(EntityDataFrameError, match=r"entity columns \['__row_id'\]: names starting with '__' are reserved"):
        store.get_historical_features(entity_rows(__row_id=[0, 0, 0]), ["customer_spend:n"]).to_df()


@pytest.mark.parametrize(("entity_df", "pattern"), [
    ("/no/such/rows.parquet", r"entity rows file '/no/such/rows\.parquet' does not exist"),
    ("SELECT * FROM no_such_table", r"the entity SQL query failed in the offline DuckDB: .*no_such_table"),
    ([{"customer_id": 1}], r"entity rows must be a pandas or polars DataFrame, a pyarrow Table, a parquet path or "
                           r"a SQL query; got list"),
], ids=["missing-parquet", "bad-sql", "wrong-type"])
def test_unusable_entity_input(store: FeatureStore, entity_df: Any, pattern: str) -> None:
    with raises(EntityDataFrameError, match=pattern) as info:
        store.get_historical_features(entity_df, ["customer_spend:n"]).to_df()
    check(info, EntityDataFrameError)


# --- feature references -----------------------------------------------------------------------


@pytest.mark.parametrize(("ref", "pattern"), [
    ("customer_spend:avg_spend_90",
     r"unknown feature 'customer_spend:avg_spend_90'\. Did you mean 'customer_spend:avg_spend_90d'\?"),
    ("custmer_spend:avg_spend_90d",
     r"unknown feature 'custmer_spend:avg_spend_90d'\. Did you mean 'customer_spend:avg_spend_90d'\?"),
    ("customer_spend.avg_spend_90d",
     r"feature reference 'customer_spend\.avg_spend_90d' is not of the form 'view:feature'\. "
     r"Did you mean 'customer_spend:avg_spend_90d'\?"),
    ("a:b:c", r"feature reference 'a:b:c' is not of the form 'view:feature'"),
], ids=["feature", "view", "no-colon", "two-colons"])
def test_unknown_feature_reference_suggests_closest(store: FeatureStore, ref: str, pattern: str) -> None:
    rows = entity_rows()
    with raises(FeatureNotFoundError, match=pattern) as info:
        store.get_historical_features(rows, ["customer_spend:n", ref])
    err = check(info, FeatureNotFoundError)
    assert err.http_status == 404
    assert err.details["reference"] == ref


def test_no_features_requested(store: FeatureStore) -> None:
    with raises(FeatureNotFoundError, match=r"no features requested; pass 'view:feature' references or a "
                                            r"FeatureService"):
        store.get_historical_features(entity_rows(), [])


def test_unknown_view_and_service_names(store: FeatureStore) -> None:
    with raises(FeatureNotFoundError, match=r"no feature view named 'customer_spnd'\. Did you mean "
                                            r"'customer_spend'\?"):
        store.get_feature_view("customer_spnd")
    with raises(FeatureNotFoundError, match=r"no feature service named 'model'"):
        store.get_feature_service("model")


def test_short_feature_names_clash(store: FeatureStore) -> None:
    refs = ["customer_spend:total", "customer_refunds:total"]
    with raises(FeatureNameCollisionError, match=(
        r"features 'customer_spend:total' and 'customer_refunds:total' would both be returned as column 'total'; "
        r"pass full_feature_names=True \(CLI: --full-feature-names\) to get 'view__feature' names"
    )) as info:
        store.get_historical_features(entity_rows(), refs)
    err = check(info, FeatureNameCollisionError)
    assert err.http_status == 400
    assert err.details == {"column": "total", "features": refs}
    # the fix the message names works, and asking for one feature twice is not a clash
    out = store.get_historical_features(entity_rows(), refs, full_feature_names=True).to_df()
    assert list(out.columns[-2:]) == ["customer_spend__total", "customer_refunds__total"]
    out = store.get_historical_features(entity_rows(), ["customer_spend:total", "customer_spend:total"]).to_df()
    assert list(out.columns) == ["customer_id", "event_timestamp", "total"]


# --- a failed apply changes nothing -----------------------------------------------------------


def registry_rows(repo: Path) -> Any:
    engine = sa.create_engine(f"sqlite:///{repo / 'data' / 'registry.db'}", poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return (conn.execute(sa.text("SELECT * FROM fs_projects ORDER BY project")).all(),
                    conn.execute(sa.text("SELECT * FROM fs_objects ORDER BY project, kind, name")).all())
    finally:
        engine.dispose()


FAILING_APPLIES: list[tuple[str, type[FeatureStoreError], Callable[[Path], Any]]] = [
    ("schema", SchemaError,
     lambda repo: [*GOOD, view(features=[Sum("category", window="1d")])]),
    ("unknown-entity", UnknownReferenceError, lambda repo: [*GOOD, view(entities=["custmer"])]),
    ("missing-file", SourceNotFoundError,
     lambda repo: [*GOOD, view(source=FileSource(name="gone", path="data/gone.parquet"))]),
    ("duplicate", DuplicateObjectError,
     lambda repo: [*GOOD, Entity(name="customer", join_keys=["id"])]),
    ("broken-repo-file", RepoLoadError,
     lambda repo: (repo / "features.py").write_text('raise ValueError("half-edited file")\n') and None),
]


@pytest.mark.parametrize(("cls", "desired"), [pytest.param(c, d, id=i) for i, c, d in FAILING_APPLIES])
def test_failed_apply_leaves_registry_as_it_was(
    fresh_repo: Path, cls: type[FeatureStoreError], desired: Callable[[Path], Any]
) -> None:
    with FeatureStore(fresh_repo) as store:
        store.apply(GOOD)
        before = registry_rows(fresh_repo)
        specs = store.catalog().specs()
        objects = desired(fresh_repo)
        with raises(cls, match=".") as info:
            store.apply(objects)
        check(info, cls)
        assert store.registry.version() == 1
    assert registry_rows(fresh_repo) == before
    with FeatureStore(fresh_repo) as again:
        assert again.catalog().specs() == specs
        assert again.plan(GOOD).is_empty
    assert all(json.loads(row.spec) for row in before[1])  # sanity: the rows compared are the JSON specs
