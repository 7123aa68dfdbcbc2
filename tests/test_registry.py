"""The SQL registry, on SQLite and on PostgreSQL.

Every test runs once per backend (the ``registry_url`` fixture). On PostgreSQL each test uses
its own project name and deletes only that project's rows afterwards, so tests never touch
tables or projects that other users of the database rely on. PostgreSQL tests are skipped only
when no server is reachable (set FEATURE_STORE_TEST_POSTGRES_URL to point them elsewhere).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest
import sqlalchemy as sa

from feature_store import (
    Aggregation,
    Count,
    CountDistinct,
    DuckDBSource,
    Entity,
    FeatureService,
    FeatureStore,
    FeatureView,
    Field,
    FileSource,
    Last,
    Max,
    Mean,
    Min,
    StdDev,
    Sum,
)
from feature_store.catalog import Catalog
from feature_store.config import RepoConfig
from feature_store.errors import (
    ConcurrentApplyError,
    DefinitionError,
    FeatureStoreError,
    RegistryError,
    SchemaError,
)
from feature_store.plan import Plan
from feature_store.registry import objects as objects_table
from feature_store.registry import projects as projects_table

POSTGRES_URLS = [
    url
    for url in (
        os.environ.get("FEATURE_STORE_TEST_POSTGRES_URL"),
        "postgresql+psycopg://postgres@127.0.0.1:5432/test",
        "postgresql+psycopg://root@127.0.0.1:5432/test",
    )
    if url
]


@functools.cache
def reachable_postgres() -> tuple[str | None, str]:
    """The first reachable PostgreSQL URL (2 s connect timeout), or None and why not."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return None, "psycopg is not installed (pip install 'psycopg[binary]')"
    reasons = []
    for url in POSTGRES_URLS:
        engine = sa.create_engine(url, connect_args={"connect_timeout": 2}, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            return url, ""
        except Exception as exc:  # any failure to connect means: not available here
            reasons.append(f"{url}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        finally:
            engine.dispose()
    return None, "no PostgreSQL reachable (" + "; ".join(reasons) + ")"


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    url, reason = reachable_postgres()
    if url is None:
        pytest.skip(reason)
    return url


def write_data(path: Path) -> None:
    (path / "data").mkdir()
    base = pd.Timestamp("2024-01-01", tz="UTC")
    ts = [base + pd.Timedelta(hours=h) for h in (1, 5, 2, 30, 4, 50)]
    tx = pd.DataFrame({
        "customer_id": pd.array([1, 1, 2, 2, 3, 1], dtype="int64"),
        "merchant_id": pd.array([7, 8, 7, 7, 9, 8], dtype="int64"),
        "event_timestamp": ts,
        "created": [t + pd.Timedelta(minutes=5) for t in ts],
        "amount": [10.0, 20.0, 5.0, 7.0, 1.0, 3.5],
        "category": ["a", "b", "a", "c", "a", "b"],
    })
    tx.to_parquet(path / "data" / "tx.parquet")
    shutil.copy(path / "data" / "tx.parquet", path / "data" / "tx_copy.parquet")
    profiles = pd.DataFrame({
        "customer_id": pd.array([1, 2, 3], dtype="int64"),
        "updated_at": [base, base + pd.Timedelta(hours=3), base + pd.Timedelta(days=1)],
        "age": pd.array([31, 45, 27], dtype="int64"),
        "segment": ["x", "y", "x"],
    })
    profiles.to_parquet(path / "data" / "profiles.parquet")
    profiles.to_csv(path / "data" / "profiles.csv", index=False)


@pytest.fixture(scope="module")
def repo_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One repo directory with data for the whole module: tests differ by registry and project.

    Nothing here writes to the data or the offline DuckDB (plan and apply only read sources), so
    sharing them is safe; one connection is held open so every store's connect is instant.
    """
    path = tmp_path_factory.mktemp("registry") / "repo"
    path.mkdir()
    (path / "feature_store.yaml").write_text("project: t\n")
    write_data(path)
    keep_open = duckdb.connect(str(path / "data" / "offline.duckdb"))
    yield path
    keep_open.close()


class Repo:
    """A feature repo whose registry is ``url``; ``store()`` opens one more FeatureStore on it.

    Projects made here get unique names; on teardown their rows, and only theirs, are deleted.
    """

    def __init__(self, path: Path, url: str) -> None:
        self.path, self.url = path, url
        self.projects: list[str] = []
        self.project = self.new_project()
        self._stores: list[FeatureStore] = []
        self.raw = sa.create_engine(url)  # for reading and tampering behind the library's back

    def new_project(self) -> str:
        self.projects.append(f"t_{uuid.uuid4().hex}")
        return self.projects[-1]

    def store(self, project: str | None = None) -> FeatureStore:
        config = RepoConfig(project=project or self.project, registry=self.url)
        store = FeatureStore(self.path, config=config)
        self._stores.append(store)
        return store

    def close(self) -> None:
        for store in self._stores:
            store.close()
        try:
            with self.raw.begin() as conn:
                if sa.inspect(conn).has_table("fs_projects"):
                    for name in self.projects:
                        conn.execute(sa.delete(objects_table).where(objects_table.c.project == name))
                        conn.execute(sa.delete(projects_table).where(projects_table.c.project == name))
        finally:
            self.raw.dispose()

    def rows(self, project: str | None = None) -> dict[str, Any]:
        """The raw registry rows of a project, read with SQLAlchemy (not through the library)."""
        project = project or self.project
        with self.raw.connect() as conn:
            objs = conn.execute(
                sa.select(objects_table.c.kind, objects_table.c.name, objects_table.c.spec,
                          objects_table.c.updated_at)
                .where(objects_table.c.project == project)
            ).all()
            proj = conn.execute(
                sa.select(projects_table.c.version, projects_table.c.updated_at)
                .where(projects_table.c.project == project)
            ).first()
        return {
            "objects": {(k, n): (s, u) for k, n, s, u in objs},
            "project": None if proj is None else tuple(proj),
        }


@pytest.fixture
def repo(repo_path: Path, registry_url: str) -> Iterator[Repo]:
    r = Repo(repo_path, registry_url)
    yield r
    r.close()


# --- definitions ------------------------------------------------------------------------------


def definitions(
    *,
    window: Any = "1d",
    view_hop: Any = "1h",
    feature_hop: Any = None,
    tx_path: str = "data/tx.parquet",
    created: str | None = "created",
    view_description: str = "",
    tags: dict[str, str] | None = None,
    source_description: str = "",
    entity_description: str = "",
    ttl: Any = "5d",
    with_profile: bool = True,
    with_service: bool = True,
    extra: tuple[Any, ...] = (),
) -> list[Any]:
    """A small consistent repo; each keyword changes one thing the tests look at."""
    customer = Entity(name="customer", join_keys=["customer_id"], description=entity_description)
    tx = FileSource(name="tx", path=tx_path, created_timestamp_field=created, description=source_description)
    spend = FeatureView(
        name="spend", entities=[customer], source=tx,
        features=[Sum("amount", window=window, name="total", hop=feature_hop), Count(window="2d", name="n")],
        hop=view_hop, description=view_description, tags=tags or {},
    )
    out: list[Any] = [customer, tx, spend]
    if with_profile:
        profiles = FileSource(name="profiles", path="data/profiles.parquet", timestamp_field="updated_at")
        profile = FeatureView(name="profile", entities=[customer], source=profiles,
                              features=[Field("age", "int64"), Field("segment")], ttl=ttl)
        out += [profiles, profile]
        if with_service:
            out.append(FeatureService(name="model_v1", features=[spend[["total"]], profile]))
    elif with_service:
        out.append(FeatureService(name="model_v1", features=[spend]))
    return out + list(extra)


def every_kind(repo: Repo) -> list[Any]:
    """Every kind of object and option the registry must store and give back unchanged."""
    customer = Entity(name="customer", join_keys=["customer_id"], description="a buyer")
    merchant = Entity(name="merchant", join_keys=("merchant_id",))
    tx = FileSource(name="tx", path="data/tx.parquet", created_timestamp_field="created", description="payments")
    profiles_csv = FileSource(name="profiles", path="data/profiles.csv", timestamp_field="updated_at")
    tx_sql = DuckDBSource(
        name="tx_sql", query=f"SELECT * FROM read_parquet('{repo.path / 'data' / 'tx.parquet'}')",
    )
    spend = FeatureView(
        name="spend", entities=[customer], source=tx,
        features=[
            Count(window="1d", name="n_1d"),
            Sum("amount", window="7d", name="sum_7d"),
            Mean("amount", window=timedelta(hours=36), name="mean_36h"),
            Min("amount", window="2w", name="min_2w"),
            Max("amount", window="90d", name="max_90d", hop="1d"),
            Last("category", window="1d", name="last_category"),
            StdDev("amount", window="3d", name="sd_3d"),
            CountDistinct("category", window="12h", name="categories_12h"),
            Sum("amount", window=None, name="lifetime_total"),
            Count("amount", window=timedelta(minutes=90)),  # default name, odd window
        ],
        hop="1h", description="spend of a customer", tags={"team": "risk", "tier": "1"},
    )
    pair = FeatureView(name="customer_merchant", entities=[customer, merchant], source=tx,
                       features=[Count(window="30m")])
    from_sql = FeatureView(name="spend_sql", entities=["customer"], source="tx_sql",
                           features=[Sum("amount", window="1d")])
    profile = FeatureView(name="profile", entities=[customer], source=profiles_csv,
                          features=[Field("age", "int64"), Field("segment")], ttl="5d",
                          description="latest profile")
    service = FeatureService(name="model_v1", features=[spend[["sum_7d", "mean_36h"]], profile],
                             description="inputs of model v1")
    everything = FeatureService(name="everything", features=[spend, pair, from_sql, profile])
    return [customer, merchant, tx, profiles_csv, tx_sql, spend, pair, from_sql, profile, service, everything]


def changes_of(plan: Plan) -> set[tuple[str, str, str, tuple[str, ...]]]:
    return {(c.kind, c.name, c.action, c.fields) for c in plan.changes}


def stored_specs(repo: Repo, project: str | None = None) -> dict[tuple[str, str], Any]:
    return {key: json.loads(spec) for key, (spec, _) in repo.rows(project)["objects"].items()}


# --- round trip -------------------------------------------------------------------------------


def test_round_trip_of_every_kind(repo: Repo) -> None:
    objs = every_kind(repo)
    expected = Catalog.build(objs)
    plan = repo.store().apply(objs)
    assert {c.action for c in plan.changes} == {"add"}
    assert len(plan.changes) == 11

    fresh = repo.store()  # no cache: reads the database
    got = fresh.catalog()
    assert got.specs() == expected.specs()
    assert dict(got.entities) == dict(expected.entities)
    assert dict(got.sources) == dict(expected.sources)
    assert set(got.views) == set(expected.views)
    for name, view in expected.views.items():
        back = got.views[name]
        assert back.features == view.features, name
        assert back.entity_names == view.entity_names
        assert back.source_name == view.source_name
        assert (back.hop, back.ttl, back.description, back.tags) == (view.hop, view.ttl, view.description, view.tags)
        assert back.is_aggregation == view.is_aggregation
    spend = {f.name: f for f in got.views["spend"].features if isinstance(f, Aggregation)}
    assert spend["mean_36h"].window == timedelta(hours=36)
    assert spend["max_90d"].hop == timedelta(days=1)
    assert spend["lifetime_total"].window is None
    assert spend["amount_count_90m"].window == timedelta(minutes=90)
    assert got.views["profile"].ttl == timedelta(days=5)
    assert got.views["profile"].features == (Field("age", "int64"), Field("segment", "string"))
    assert isinstance(got.sources["profiles"], FileSource) and got.sources["profiles"].file_format == "csv"
    assert isinstance(got.sources["tx_sql"], DuckDBSource)
    for name, service in expected.services.items():
        assert got.services[name].projections == service.projections
        assert got.services[name].description == service.description
    assert fresh.get_feature_service("model_v1").projections[0].features == ("sum_7d", "mean_36h")
    assert fresh.get_feature_view("customer_merchant").entity_names == ("customer", "merchant")
    assert sorted(v.name for v in fresh.list_feature_views()) == sorted(expected.views)

    # What was read back plans as "no change": the stored form is stable.
    assert fresh.plan(objs).is_empty
    assert fresh.plan(list(got.entities.values()) + list(got.sources.values()) + list(got.views.values())
                      + list(got.services.values())).is_empty


def test_specs_are_json_text_in_fs_objects(repo: Repo) -> None:
    objs = every_kind(repo)
    repo.store().apply(objs)
    expected = Catalog.build(objs).specs()

    columns = {c["name"]: c["type"] for c in sa.inspect(repo.raw).get_columns("fs_objects")}
    with repo.raw.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT kind, name, spec FROM fs_objects WHERE project = :p"), {"p": repo.project}
        ).all()
    assert isinstance(columns["spec"], sa.Text | sa.String), columns["spec"]  # text, not a binary blob
    assert len(rows) == len(expected)
    for kind, name, spec in rows:
        assert isinstance(spec, str), f"{kind} {name}: spec stored as {type(spec).__name__}, not text"
        assert json.loads(spec) == expected[(kind, name)]  # plain JSON: no pickle, nothing to execute
    specs = {(k, n): json.loads(s) for k, n, s in rows}
    spend = specs[("feature_view", "spend")]
    assert spend["entities"] == ["customer"] and spend["source"] == "tx"  # references by name
    assert spend["hop"] == "1h"
    assert [f["window"] for f in spend["features"]][:3] == ["1d", "7d", "36h"]
    assert specs[("feature_view", "profile")]["ttl"] == "5d"
    assert specs[("feature_service", "model_v1")]["features"] == [
        {"view": "spend", "features": ["sum_7d", "mean_36h"]},
        {"view": "profile", "features": ["age", "segment"]},
    ]
    assert repo.rows()["project"][0] == 1


def test_tampered_spec_is_validated_not_executed(repo: Repo) -> None:
    repo.store().apply(definitions())
    evil = {"name": "spend", "entities": ["customer"], "source": "tx",
            "features": [{"kind": "__import__('os').system('false')", "column": "amount", "window": "1d"}]}
    overwrite_spec(repo, "feature_view", "spend", json.dumps(evil))
    with pytest.raises(RegistryError, match=(
        rf"registry row for feature view 'spend' of project '{repo.project}' cannot be read \(DefinitionError: "
        r"unknown aggregation kind"
    )) as info:
        repo.store().catalog()
    assert isinstance(info.value.__cause__, DefinitionError)


def overwrite_spec(repo: Repo, kind: str, name: str, spec: str) -> None:
    """Replace one stored spec behind the library's back and move the version (no cache hit)."""
    with repo.raw.begin() as conn:
        conn.execute(
            sa.update(objects_table)
            .where((objects_table.c.project == repo.project) & (objects_table.c.kind == kind)
                   & (objects_table.c.name == name))
            .values(spec=spec)
        )
        conn.execute(sa.update(projects_table).where(projects_table.c.project == repo.project)
                     .values(version=projects_table.c.version + 1))


@pytest.mark.parametrize("spec", [
    "\x80\x04 not json",
    json.dumps({"name": "customer", "join_keys": ["customer_id"], "description": "", "added_later": 1}),
], ids=["not-json", "unknown-field"])
def test_unreadable_registry_row_is_a_registry_error(repo: Repo, spec: str) -> None:
    """Not JSON, or a field this version does not know (written by a newer client): named, with the fix."""
    repo.store().apply(definitions())
    overwrite_spec(repo, "entity", "customer", spec)
    with pytest.raises(RegistryError, match=(
        rf"the registry row for entity 'customer' of project '{repo.project}' cannot be read .*"
        r"Upgrade, or re-apply the repo with this version"
    )) as info:
        repo.store().catalog()
    assert info.value.details == {"kind": "entity", "name": "customer"}


# --- plans ------------------------------------------------------------------------------------


def test_plan_reports_add_change_remove_with_fields(repo: Repo) -> None:
    store = repo.store()
    first = store.plan(definitions())
    assert first.base_version == 0
    assert changes_of(first) == {
        ("entity", "customer", "add", ()), ("source", "tx", "add", ()), ("source", "profiles", "add", ()),
        ("feature_view", "spend", "add", ()), ("feature_view", "profile", "add", ()),
        ("feature_service", "model_v1", "add", ()),
    }
    store.apply(first)

    extra = FeatureView(name="spend2", entities=["customer"], source="tx", features=[Count(window="1d", name="n")])
    second = store.plan(definitions(view_description="new words", view_hop="2h", with_profile=False, extra=(extra,)))
    assert second.base_version == 1
    assert changes_of(second) == {
        ("feature_view", "spend", "change", ("description", "hop")),
        ("feature_view", "profile", "remove", ()),
        ("source", "profiles", "remove", ()),
        ("feature_service", "model_v1", "change", ("features",)),
        ("feature_view", "spend2", "add", ()),
    }
    assert second.invalidated_views == ("profile", "spend")
    text = str(second)
    assert "change feature view 'spend' (description, hop)" in text
    assert "remove feature view 'profile'" in text
    assert "add feature view 'spend2'" in text
    store.apply(second)
    assert set(repo.store().catalog().views) == {"spend", "spend2"}
    assert set(stored_specs(repo)) == {
        ("entity", "customer"), ("source", "tx"), ("feature_view", "spend"), ("feature_view", "spend2"),
        ("feature_service", "model_v1"),
    }


INVALIDATION_CASES: list[tuple[str, dict[str, Any], tuple[str, str], tuple[str, ...], tuple[str, ...]]] = [
    # (name, changed keyword arguments, (kind, name) of the change, fields, invalidated views)
    ("window", {"window": "2d"}, ("feature_view", "spend"), ("features",), ("spend",)),
    ("window as timedelta", {"window": timedelta(hours=12)}, ("feature_view", "spend"), ("features",), ("spend",)),
    ("view hop", {"view_hop": "2h"}, ("feature_view", "spend"), ("hop",), ("spend",)),
    ("feature hop", {"feature_hop": "30m"}, ("feature_view", "spend"), ("features",), ("spend",)),
    ("source path", {"tx_path": "data/tx_copy.parquet"}, ("source", "tx"), ("path",), ("spend",)),
    ("created field", {"created": None}, ("source", "tx"), ("created_timestamp_field",), ("spend",)),
    ("ttl", {"ttl": "7d"}, ("feature_view", "profile"), ("ttl",), ("profile",)),
    ("view description", {"view_description": "x"}, ("feature_view", "spend"), ("description",), ()),
    ("view tags", {"tags": {"team": "b"}}, ("feature_view", "spend"), ("tags",), ()),
    ("source description", {"source_description": "x"}, ("source", "tx"), ("description",), ()),
    ("entity description", {"entity_description": "x"}, ("entity", "customer"), ("description",), ()),
]


def test_change_invalidates_only_when_data_changes(repo: Repo) -> None:
    """Each case changes one thing against the same applied state (plans write nothing)."""
    store = repo.store()
    store.apply(definitions())
    for case, kwargs, key, fields, invalidates in INVALIDATION_CASES:
        plan = store.plan(definitions(**kwargs))
        assert len(plan.changes) == 1, (case, str(plan))
        change = plan.changes[0]
        assert ((change.kind, change.name), change.action, change.fields) == (key, "change", fields), case
        assert change.invalidates == invalidates, case
        assert plan.invalidated_views == invalidates, case
        assert ("rebuilds materialized data of" in change.describe()) == bool(invalidates), case
    assert store.registry.version() == 1


# --- apply: versions, atomicity, concurrency --------------------------------------------------


def test_versions_increase_by_one_per_apply(repo: Repo) -> None:
    store = repo.store()
    assert store.registry.version() == 0
    steps: list[dict[str, Any]] = [{}, {"window": "2d"}, {"with_profile": False}, {"view_description": "d"}]
    for i, kwargs in enumerate(steps, 1):
        plan = store.apply(definitions(**kwargs))
        assert plan.base_version == i - 1
        assert store.registry.version() == i
        assert repo.store().registry.version() == i  # another client sees it
        assert repo.rows()["project"][0] == i


def test_empty_plan_writes_nothing(repo: Repo) -> None:
    store = repo.store()
    store.apply(definitions())
    before = repo.rows()
    plan = repo.store().plan(definitions())
    assert plan.is_empty and plan.changes == ()
    assert str(plan) == f"project {repo.project!r}: no changes (registry version 1)."
    assert repo.store().apply(definitions()).is_empty
    assert store.apply(plan).is_empty
    assert repo.rows() == before  # same version, same specs, same updated_at


def test_apply_rewrites_only_changed_objects(repo: Repo) -> None:
    store = repo.store()
    store.apply(definitions())
    before = repo.rows()["objects"]
    store.apply(definitions(view_description="changed"))
    after = repo.rows()["objects"]
    assert set(before) == set(after)
    for key in before:
        if key == ("feature_view", "spend"):
            assert json.loads(after[key][0])["description"] == "changed"
        else:
            assert after[key] == before[key], key


def test_registry_apply_of_empty_plan_writes_nothing(repo: Repo) -> None:
    """Registry.apply itself (not only FeatureStore.apply) keeps the version for an empty plan."""
    store = repo.store()
    store.apply(definitions())
    before = repo.rows()
    plan = store.plan(definitions())
    assert plan.is_empty
    assert store.registry.apply(plan) == 1
    assert repo.rows() == before


def test_stale_plan_fails_and_leaves_registry_unchanged(repo: Repo) -> None:
    store = repo.store()
    store.apply(definitions())
    stale = store.plan(definitions(window="2d", with_profile=False))
    store.apply(definitions(view_description="someone else"))
    before = repo.rows()
    with pytest.raises(ConcurrentApplyError, match=(
        rf"registry of project '{repo.project}' changed since this plan was made \(plan was against version 1, "
        r"registry is now at version 2\); nothing was written\. Run plan/apply again"
    )) as info:
        store.apply(stale)
    assert info.value.http_status == 409
    assert repo.rows() == before
    assert repo.store().catalog().specs() == Catalog.build(definitions(view_description="someone else")).specs()


def test_failure_inside_apply_rolls_back_every_write(repo: Repo) -> None:
    """The version bump, deletes and inserts before a failing write are all undone."""
    store = repo.store()
    store.apply(definitions())
    before = repo.rows()
    extra = FeatureView(name="spend2", entities=["customer"], source="tx", features=[Count(window="1d", name="n")])
    good = store.plan(definitions(view_hop="2h", with_profile=False, extra=(extra,)))
    keys = [(c.kind, c.name) for c in good.changes]
    # the poisoned spec is written after a service change, a view removal and a view change
    assert keys.index(("feature_view", "spend2")) > keys.index(("feature_view", "profile"))
    assert keys.index(("feature_view", "spend2")) > keys.index(("feature_view", "spend"))
    desired = dict(good.desired)
    desired[("feature_view", "spend2")] = {"not json": {1, 2}}
    poisoned = dataclasses.replace(good, desired=desired)
    with pytest.raises(Exception):  # noqa: B017 - any failure; what matters is what is left behind
        store.registry.apply(poisoned)
    assert repo.rows() == before
    assert repo.store().catalog().specs() == Catalog.build(definitions()).specs()
    store.apply(good)  # nothing half-written blocks the real plan
    assert repo.rows()["project"][0] == 2


@pytest.mark.parametrize("base_applied", [False, True], ids=["from-empty", "from-version-1"])
def test_two_clients_apply_from_same_base_one_wins(repo: Repo, base_applied: bool) -> None:
    a, b = repo.store(), repo.store()
    if base_applied:
        a.apply(definitions())
    base = a.registry.version()
    plan_a = a.plan(definitions(view_description="from a"))
    plan_b = b.plan(definitions(view_description="from b", window="3d"))
    assert plan_a.base_version == plan_b.base_version == base

    a.apply(plan_a)
    after_a = repo.rows()
    with pytest.raises(ConcurrentApplyError, match=rf"project '{repo.project}' changed.*nothing was written") as info:
        b.apply(plan_b)
    assert isinstance(info.value, FeatureStoreError) and info.value.http_status == 409
    assert repo.rows() == after_a
    assert b.catalog().views["spend"].description == "from a"
    assert b.registry.version() == base + 1

    b.apply(definitions(view_description="from b", window="3d"))  # re-planned: applies on top
    assert a.catalog().views["spend"].description == "from b"
    assert a.registry.version() == base + 2


@pytest.mark.parametrize("base_applied", [False, True], ids=["from-empty", "from-version-1"])
def test_concurrent_applies_in_threads_exactly_one_wins(repo: Repo, base_applied: bool) -> None:
    writers = 4
    stores = [repo.store() for _ in range(writers)]
    if base_applied:
        stores[0].apply(definitions())
    base = stores[0].registry.version()
    plans = [s.plan(definitions(view_description=f"writer {i}")) for i, s in enumerate(stores)]
    barrier = threading.Barrier(writers)

    def apply(i: int) -> str:
        barrier.wait(timeout=10)
        try:
            stores[i].apply(plans[i])
            return "ok"
        except ConcurrentApplyError:
            return "conflict"
        except Exception as exc:  # reported, so the assertion shows what went wrong
            return f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(writers) as pool:
        results = list(pool.map(apply, range(writers)))
    assert sorted(results) == ["conflict"] * (writers - 1) + ["ok"], results
    winner = results.index("ok")
    assert repo.store().registry.version() == base + 1
    assert repo.store().catalog().views["spend"].description == f"writer {winner}"
    assert json.loads(repo.rows()["objects"][("feature_view", "spend")][0])["description"] == f"writer {winner}"


def test_failed_validation_writes_nothing(repo: Repo) -> None:
    store = repo.store()
    store.apply(definitions())
    before = repo.rows()
    bad = FeatureView(name="bad", entities=["customer"], source="tx", features=[Sum("category", window="1d")])
    with pytest.raises(SchemaError):
        store.apply(definitions(extra=(bad,)))
    assert repo.rows() == before


def test_projects_are_isolated(repo: Repo) -> None:
    other = repo.new_project()
    mine, theirs = repo.store(), repo.store(project=other)
    mine.apply(definitions())
    theirs.apply(definitions(with_profile=False))
    theirs.apply(definitions(with_profile=False, view_description="v2"))
    assert mine.registry.version() == 1 and theirs.registry.version() == 2
    mine.apply(definitions(with_profile=False, with_service=False))  # removes profile + service in mine only
    assert set(stored_specs(repo)) == {("entity", "customer"), ("source", "tx"), ("feature_view", "spend")}
    assert set(stored_specs(repo, other)) == {
        ("entity", "customer"), ("source", "tx"), ("feature_view", "spend"), ("feature_service", "model_v1"),
    }
    assert theirs.catalog().views["spend"].description == "v2"
    assert mine.catalog().views["spend"].description == ""
