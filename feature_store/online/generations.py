"""Generations: which definition of each view an online store holds values of, recorded in the registry.

A *generation* is one definition of a view (its data signature) in one online store (its identity, from its
config: switching stores starts over). It is ``live`` when readers serve it, ``building`` while materialization
writes it beside the live one, ``retired`` once another took over (its values are deleted a little later, when
no reader can still be using it). A generation keeps the definition it was built from (``spec``), so readers
compile their plans from what the stored values are, not from what the repo now says: a deploy that changes a
view keeps serving its previous values until the new ones are materialized, then switches atomically.

``watermark`` is what the live generation holds: every event available before it (None: being rebuilt in place,
after ``--full`` or a changed source file). The store's identity is a random id kept in the store itself
(keys.store_id_key): a store that lost its data lost its id too, and is rebuilt as a new one.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, String, Table, Text, and_, delete, insert, select, update

from feature_store.catalog import Catalog
from feature_store.definitions import FeatureView, from_spec, to_spec
from feature_store.errors import RegistryError
from feature_store.query import ViewQuery, compile_view
from feature_store.references import ResolvedFeature
from feature_store.registry import Registry, metadata

LIVE, BUILDING, RETIRED = "live", "building", "retired"

generations = Table(
    "fs_online_generations",
    metadata,
    Column("project", String(128), primary_key=True),
    Column("store", String(64), primary_key=True),
    Column("view", String(128), primary_key=True),
    Column("signature", String(64), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("watermark", BigInteger, nullable=True),
    Column("files", Text, nullable=False),  # JSON fingerprint of the source files read
    Column("spec", Text, nullable=False),  # JSON: the definitions the generation was built from
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class Generation:
    view: str
    signature: str
    state: str
    watermark: int | None
    files: dict[str, list[int]]
    spec: dict[str, Any]
    updated_at: datetime

    def plan(self) -> ViewQuery:
        """The whole view as this generation stores it."""
        catalog = Catalog.build([from_spec(kind, spec) for kind, spec in self.spec["objects"]])
        catalog = catalog.with_schemas({name: dict(cols) for name, cols in self.spec["schemas"].items()})
        view = catalog.view(self.view)
        return compile_view(catalog, view, [ResolvedFeature(view, f, f) for f in view.feature_names])


def generation_spec(catalog: Catalog, view: FeatureView) -> dict[str, Any]:
    """What a generation records of the definitions: the view, its entities and sources, and the columns."""
    source = catalog.source_of(view)
    batch = catalog.batch_source(source)
    objects: list[tuple[str, Any]] = [("entity", to_spec(catalog.entities[e])) for e in view.entity_names]
    objects.append(("source", to_spec(batch)))
    if source is not batch:
        objects.append(("source", to_spec(source)))
    objects.append(("feature_view", view.to_spec()))
    return {"objects": objects, "schemas": {batch.name: dict(catalog.schema(batch.name))}}


class Generations:
    """The generations of one project in one online store."""

    def __init__(self, registry: Registry, store: str) -> None:
        self.registry, self.store = registry, store
        self._created = False
        self._lock = threading.Lock()

    def _engine(self) -> Any:
        engine = self.registry.engine
        if not self._created:
            with self._lock:
                generations.create(engine, checkfirst=True)  # a registry made before generations existed
                self._created = True
        return engine

    def _where(self, view: str | None = None, signature: str | None = None) -> Any:
        conditions = [generations.c.project == self.registry.project, generations.c.store == self.store]
        if view is not None:
            conditions.append(generations.c.view == view)
        if signature is not None:
            conditions.append(generations.c.signature == signature)
        return and_(*conditions)

    def all(self) -> list[Generation]:
        with self._errors("reading"), self._engine().connect() as conn:
            rows = conn.execute(select(generations).where(self._where())).mappings().all()
        return [Generation(r["view"], r["signature"], r["state"], r["watermark"], json.loads(r["files"]),
                           json.loads(r["spec"]), r["updated_at"]) for r in rows]

    def live(self) -> dict[str, Generation]:
        return {g.view: g for g in self.all() if g.state == LIVE}

    def start(self, view: str, signature: str, spec: dict[str, Any], in_place: bool) -> None:
        """Before the first value of a build is written: the live generation rebuilt in place loses its
        watermark (a killed build leaves a rebuild to do); another definition is recorded as building."""
        now = datetime.now(UTC)
        with self._errors("writing"), self._engine().begin() as conn:
            if in_place:
                conn.execute(update(generations).where(self._where(view, signature)).values(
                    watermark=None, updated_at=now))
                return
            conn.execute(delete(generations).where(self._where(view, signature)))
            conn.execute(insert(generations).values(
                project=self.registry.project, store=self.store, view=view, signature=signature, state=BUILDING,
                watermark=None, files="{}", spec=json.dumps(spec, sort_keys=True), updated_at=now))

    def finish(self, view: str, signature: str, watermark: int, files: dict[str, list[int]],
               spec: dict[str, Any]) -> None:
        """After every value of a run has landed, in one transaction: this generation is live at ``watermark``
        (and the one it replaces retired)."""
        now = datetime.now(UTC)
        with self._errors("writing"), self._engine().begin() as conn:
            conn.execute(update(generations).where(
                self._where(view) & (generations.c.signature != signature) & (generations.c.state == LIVE)
            ).values(state=RETIRED, updated_at=now))
            conn.execute(delete(generations).where(self._where(view, signature)))
            conn.execute(insert(generations).values(
                project=self.registry.project, store=self.store, view=view, signature=signature, state=LIVE,
                watermark=watermark, files=json.dumps(files, sort_keys=True), spec=json.dumps(spec, sort_keys=True),
                updated_at=now))

    def forget(self, view: str, signature: str) -> None:
        with self._errors("writing"), self._engine().begin() as conn:
            conn.execute(delete(generations).where(self._where(view, signature)))

    def forget_all(self) -> None:
        with self._errors("writing"), self._engine().begin() as conn:
            conn.execute(delete(generations).where(self._where()))

    def _errors(self, doing: str) -> Any:
        return _Errors(f"{doing} the online generations of project {self.registry.project!r}")


class _Errors:
    def __init__(self, doing: str) -> None:
        self.doing = doing

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        from sqlalchemy.exc import SQLAlchemyError

        if isinstance(exc, SQLAlchemyError):
            raise RegistryError(f"{self.doing} failed: {exc}") from exc
