"""The registry: definitions as JSON specs in a SQL database (SQLite file or PostgreSQL).

Nothing read from it is executed: specs are validated back into pydantic models. Every apply
is one transaction guarded by a per-project version number, so of two concurrent applies made
from the same base, the second fails with ConcurrentApplyError instead of losing an update.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from feature_store.catalog import Catalog
from feature_store.definitions import from_spec
from feature_store.errors import ConcurrentApplyError, FeatureStoreError, RegistryError
from feature_store.plan import Plan

metadata = MetaData()

projects = Table(
    "fs_projects",
    metadata,
    Column("project", String(128), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

objects = Table(
    "fs_objects",
    metadata,
    Column("project", String(128), primary_key=True),
    Column("kind", String(32), primary_key=True),
    Column("name", String(128), primary_key=True),
    Column("spec", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# The column types of each batch source (engine-neutral names), read at apply, so that compiling a plan (serving
# included) needs no access to the data
schemas = Table(
    "fs_schemas",
    metadata,
    Column("project", String(128), primary_key=True),
    Column("source", String(128), primary_key=True),
    Column("columns", Text, nullable=False),  # JSON {column: type}, in the source's column order
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Saved feature profiles (monitoring/profiles.py), by name: references for drift, shared by every host of the registry
profiles = Table(
    "fs_profiles",
    metadata,
    Column("project", String(128), primary_key=True),
    Column("name", String(128), primary_key=True),
    Column("profile", Text, nullable=False),  # JSON
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# The last drift score of each feature (`feature-store monitor`), which feature servers export as gauges
drift_scores = Table(
    "fs_drift_scores",
    metadata,
    Column("project", String(128), primary_key=True),
    Column("feature", String(300), primary_key=True),
    Column("psi", Float, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


class Registry:
    def __init__(self, url: str, project: str) -> None:
        self.url = url
        self.project = project
        self._engine: Engine | None = None
        self._cache: tuple[int, Catalog] | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            try:
                url = make_url(self.url)
                if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
                    Path(url.database).parent.mkdir(parents=True, exist_ok=True)  # a new repo has no data/ yet
                self._engine = create_engine(self.url, future=True, pool_pre_ping=True)
                metadata.create_all(self._engine)
            except SQLAlchemyError as exc:
                raise RegistryError(
                    f"cannot open the registry at {self.safe_url()}: {exc.__class__.__name__}: {exc}. "
                    "Check 'registry' in feature_store.yaml.",
                ) from exc
        return self._engine

    def safe_url(self) -> str:
        try:
            from sqlalchemy.engine import make_url

            return make_url(self.url).render_as_string(hide_password=True)
        except SQLAlchemyError:
            return "<invalid url>"

    def version(self) -> int:
        with self._errors("reading the registry version"), self.engine.connect() as conn:
            row = conn.execute(select(projects.c.version).where(projects.c.project == self.project)).first()
        return int(row[0]) if row else 0

    def catalog(self) -> tuple[int, Catalog]:
        """The registered definitions and the version they are at (cached until the version moves)."""
        with self._errors("reading the registry"), self.engine.connect() as conn:
            row = conn.execute(select(projects.c.version).where(projects.c.project == self.project)).first()
            version = int(row[0]) if row else 0
            if self._cache is not None and self._cache[0] == version:
                return self._cache
            rows = conn.execute(
                select(objects.c.kind, objects.c.name, objects.c.spec).where(objects.c.project == self.project)
            ).all()
            columns = conn.execute(
                select(schemas.c.source, schemas.c.columns).where(schemas.c.project == self.project)
            ).all()
        recorded = {str(source): dict(json.loads(text)) for source, text in columns}
        self._cache = (version, self._decode(rows).with_schemas(recorded))
        return self._cache

    def _decode(self, rows: Any) -> Catalog:
        """Specs back into definitions; a row this version cannot read is named, not a stack trace."""
        objects = []
        for kind, name, text in rows:
            try:
                objects.append(from_spec(kind, json.loads(text)))
            except (ValueError, TypeError, FeatureStoreError) as exc:  # JSON and pydantic errors are ValueErrors
                raise RegistryError(
                    f"the registry row for {kind.replace('_', ' ')} {name!r} of project {self.project!r} cannot be "
                    f"read ({type(exc).__name__}: {str(exc).splitlines()[0]}); it may have been written by a newer "
                    "version of feature-store. Upgrade, or re-apply the repo with this version.",
                    kind=kind, name=name,
                ) from exc
        return Catalog.build(objects)

    def apply(self, plan: Plan) -> int:
        """Write the plan's desired state in one transaction; returns the new version.

        An empty plan writes nothing and keeps the version.
        """
        if plan.is_empty:
            return plan.base_version
        now = datetime.now(UTC)
        new_version = plan.base_version + 1
        try:
            with self.engine.begin() as conn:
                self._bump_version(conn, plan.base_version, new_version, now)
                for change in plan.changes:
                    key = (change.kind, change.name)
                    where = (
                        (objects.c.project == self.project)
                        & (objects.c.kind == change.kind)
                        & (objects.c.name == change.name)
                    )
                    conn.execute(delete(objects).where(where))
                    if change.action != "remove":
                        conn.execute(insert(objects).values(
                            project=self.project, kind=change.kind, name=change.name,
                            spec=json.dumps(plan.desired[key], sort_keys=True), updated_at=now,
                        ))
                conn.execute(delete(schemas).where(schemas.c.project == self.project))
                if plan.schemas:
                    conn.execute(insert(schemas), [
                        {"project": self.project, "source": name, "columns": json.dumps(dict(columns)),
                         "updated_at": now} for name, columns in plan.schemas.items()])
        except IntegrityError as exc:
            raise self._conflict_error(plan.base_version) from exc
        except SQLAlchemyError as exc:
            raise RegistryError(f"apply failed, the registry is unchanged: {exc}") from exc
        self._cache = None
        return new_version

    def _bump_version(self, conn: Any, base: int, new: int, now: datetime) -> None:
        if base == 0:
            conn.execute(insert(projects).values(project=self.project, version=new, updated_at=now))
            return
        result = conn.execute(
            update(projects)
            .where((projects.c.project == self.project) & (projects.c.version == base))
            .values(version=new, updated_at=now)
        )
        if result.rowcount != 1:
            raise self._conflict_error(base)

    def _conflict_error(self, base: int) -> ConcurrentApplyError:
        return ConcurrentApplyError(
            f"the registry of project {self.project!r} changed since this plan was made (plan was against "
            f"version {base}, registry is now at version {self.version()}); nothing was written. "
            "Run plan/apply again to apply on top of the new state.",
            project=self.project, base_version=base,
        )

    def _errors(self, doing: str) -> Any:
        return _RegistryErrors(doing, self.safe_url())

    def applied_at(self) -> datetime | None:
        """When the last apply changed the project's definitions (None: never)."""
        with self._errors("reading the registry version"), self.engine.connect() as conn:
            row = conn.execute(select(projects.c.updated_at).where(projects.c.project == self.project)).first()
        if row is None:
            return None
        stamp: datetime = row[0]
        return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)  # SQLite gives naive UTC back

    def teardown(self) -> int:
        """Delete every row of the project, from every registry table, in one transaction; return how many."""
        deleted = 0
        with self._errors("removing the project from the registry"), self.engine.begin() as conn:
            # Tables of modules imported after the engine was made (online generations) may not exist yet
            metadata.create_all(conn)
            for table in reversed(metadata.sorted_tables):
                if "project" in table.c:
                    deleted += conn.execute(table.delete().where(table.c.project == self.project)).rowcount
        self._cache = None
        return deleted

    def save_profile(self, name: str, profile_json: str) -> None:
        """Save (or replace) the named profile, in one transaction."""
        where = (profiles.c.project == self.project) & (profiles.c.name == name)
        with self._errors(f"saving profile {name!r}"), self.engine.begin() as conn:
            conn.execute(delete(profiles).where(where))
            conn.execute(insert(profiles).values(project=self.project, name=name, profile=profile_json,
                                                 updated_at=datetime.now(UTC)))

    def profile(self, name: str) -> str | None:
        """The named profile's JSON, or None."""
        where = (profiles.c.project == self.project) & (profiles.c.name == name)
        with self._errors(f"reading profile {name!r}"), self.engine.connect() as conn:
            row = conn.execute(select(profiles.c.profile).where(where)).first()
        return None if row is None else str(row[0])

    def profile_names(self) -> list[str]:
        with self._errors("listing profiles"), self.engine.connect() as conn:
            rows = conn.execute(select(profiles.c.name).where(profiles.c.project == self.project)).all()
        return sorted(str(r[0]) for r in rows)

    def record_drift(self, scores: dict[str, tuple[float, float]]) -> None:
        """Replace the last drift scores ({feature: (psi, threshold)}) of the features given."""
        now = datetime.now(UTC)
        with self._errors("recording drift scores"), self.engine.begin() as conn:
            for feature, (psi, threshold) in scores.items():
                conn.execute(delete(drift_scores).where((drift_scores.c.project == self.project)
                                                        & (drift_scores.c.feature == feature)))
                conn.execute(insert(drift_scores).values(project=self.project, feature=feature, psi=psi,
                                                         threshold=threshold, updated_at=now))

    def drift_scores(self) -> dict[str, tuple[float, float]]:
        with self._errors("reading drift scores"), self.engine.connect() as conn:
            rows = conn.execute(select(drift_scores.c.feature, drift_scores.c.psi, drift_scores.c.threshold)
                                .where(drift_scores.c.project == self.project)).all()
        return {str(f): (float(p), float(t)) for f, p, t in rows}

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


class _RegistryErrors:
    def __init__(self, doing: str, url: str) -> None:
        self.doing, self.url = doing, url

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, SQLAlchemyError):
            raise RegistryError(f"{self.doing} at {self.url} failed: {exc}") from exc
