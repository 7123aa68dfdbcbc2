"""A resolved, consistent set of definitions: what the registry holds and what apply writes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from feature_store.definitions import (
    Definition,
    DuckDBSource,
    Entity,
    FeatureService,
    FeatureView,
    FileSource,
    PushSource,
    SparkSource,
    kind_of,
    to_spec,
)
from feature_store.errors import (
    DuplicateObjectError,
    FeatureNotFoundError,
    PushSourceNotFoundError,
    SchemaNotRecordedError,
    UnknownReferenceError,
    closest,
)

BatchSource = FileSource | DuckDBSource | SparkSource
SourceDef = FileSource | DuckDBSource | SparkSource | PushSource
_PLURAL = {"entity": "entities", "source": "sources", "feature_view": "feature views",
           "feature_service": "feature services"}
SpecKey = tuple[str, str]  # (kind, name)


@dataclass(frozen=True)
class Catalog:
    entities: Mapping[str, Entity] = field(default_factory=dict)
    sources: Mapping[str, SourceDef] = field(default_factory=dict)
    views: Mapping[str, FeatureView] = field(default_factory=dict)
    services: Mapping[str, FeatureService] = field(default_factory=dict)
    # batch source -> column -> engine-neutral type, as the offline engine read them at apply (registry)
    schemas: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @classmethod
    def build(cls, objects: Iterable[Definition], origins: Mapping[int, str] | None = None) -> Catalog:
        """Collect objects (and the entities/sources views carry inline), check names and references.

        ``origins`` maps id(obj) to where it was defined, so a duplicate names both files.
        """
        origins = origins or {}
        seen: dict[SpecKey, tuple[dict[str, Any], str]] = {}
        found: dict[str, dict[str, Any]] = {"entity": {}, "source": {}, "feature_view": {}, "feature_service": {}}

        def add(obj: Definition, where: str) -> None:
            kind = kind_of(obj)
            spec = to_spec(obj)
            key = (kind, obj.name)
            if key in seen:
                first, first_where = seen[key]
                if first != spec:
                    differs = sorted(k for k in set(first) | set(spec) if first.get(k) != spec.get(k))
                    places = f"in {first_where} and in {where}" if first_where != where else f"both in {where}"
                    raise DuplicateObjectError(
                        f"two different {_PLURAL[kind]} are named {obj.name!r} ({places}; they differ in "
                        f"{', '.join(differs)}); rename one of them.",
                        kind=kind, name=obj.name, files=[first_where, where], differs=differs,
                    )
                return
            seen[key] = (spec, where)
            found[kind][obj.name] = obj

        for obj in objects:
            where = origins.get(id(obj), "the given objects")
            add(obj, where)
            if isinstance(obj, FeatureView):
                for entity in obj.entities:
                    if isinstance(entity, Entity):
                        add(entity, where)
                if not isinstance(obj.source, str):
                    add(obj.source, where)
                    if isinstance(obj.source, PushSource) and not isinstance(obj.source.batch_source, str):
                        add(obj.source.batch_source, where)
            if isinstance(obj, PushSource) and not isinstance(obj.batch_source, str):
                add(obj.batch_source, where)
        catalog = cls(found["entity"], found["source"], found["feature_view"], found["feature_service"])
        catalog.check_references()
        return catalog

    def check_references(self) -> None:
        for source in self.sources.values():
            if isinstance(source, PushSource):
                batch = self.sources.get(source.batch_source_name)
                if batch is None or isinstance(batch, PushSource):
                    hint = closest(source.batch_source_name, self.sources)
                    raise UnknownReferenceError(
                        f"push source {source.name!r} reads batch source {source.batch_source_name!r}, which is "
                        f"{'a push source' if batch else 'not defined'}.{hint}"
                        " Give batch_source= a FileSource, DuckDBSource or SparkSource (the object, or the name of one "
                        "defined in the repo).", source=source.name, batch_source=source.batch_source_name,
                    )
        for view in self.views.values():
            for name in view.entity_names:
                if name not in self.entities:
                    raise UnknownReferenceError(
                        f"feature view {view.name!r} refers to entity {name!r}, which is not defined."
                        f"{closest(name, self.entities)} Define Entity(name={name!r}, join_keys=[...]) in the repo.",
                        view=view.name, entity=name,
                    )
            if view.source_name not in self.sources:
                raise UnknownReferenceError(
                    f"feature view {view.name!r} refers to source {view.source_name!r}, which is not defined."
                    f"{closest(view.source_name, self.sources)} Define FileSource(name={view.source_name!r}, "
                    "path=...) in the repo, or pass the source object itself as source=.",
                    view=view.name, source=view.source_name,
                )
        for service in self.services.values():
            for projection in service.projections:
                target = self.views.get(projection.view)
                if target is None:
                    raise UnknownReferenceError(
                        f"feature service {service.name!r} refers to feature view {projection.view!r}, which is "
                        f"not defined.{closest(projection.view, self.views)}",
                        service=service.name, view=projection.view,
                    )
                for feature in projection.features:
                    target.feature(feature)

    # --- registry round trip ---------------------------------------------------------------

    def specs(self) -> dict[SpecKey, dict[str, Any]]:
        out: dict[SpecKey, dict[str, Any]] = {}
        for group in (self.entities, self.sources, self.views, self.services):
            for obj in group.values():
                out[(kind_of(obj), obj.name)] = to_spec(obj)
        return out

    # --- lookups ----------------------------------------------------------------------------

    def view(self, name: str) -> FeatureView:
        view = self.views.get(name)
        if view is None:
            raise FeatureNotFoundError(
                f"no feature view named {name!r}.{closest(name, self.views)}", view=name
            )
        return view

    def service(self, name: str) -> FeatureService:
        service = self.services.get(name)
        if service is None:
            raise FeatureNotFoundError(
                f"no feature service named {name!r}.{closest(name, self.services)}", service=name
            )
        return service

    def source_of(self, view: FeatureView) -> SourceDef:
        return self.sources[view.source_name]

    def batch_source(self, source: SourceDef) -> BatchSource:
        """The source whose files or table hold the rows: itself, or a push source's batch source."""
        if isinstance(source, PushSource):
            batch = self.sources[source.batch_source_name]
            if isinstance(batch, PushSource):  # check_references rules this out
                raise UnknownReferenceError(f"push source {source.name!r} reads another push source.")
            return batch
        return source

    def schema(self, source: str) -> Mapping[str, str]:
        """The recorded column types of a batch source (types.py names)."""
        found = self.schemas.get(source)
        if found is None:
            raise SchemaNotRecordedError(
                f"the registry has no recorded columns for source {source!r}: run 'feature-store apply' (it records "
                "each source's columns, which serving needs without reading the data).", source=source,
            )
        return found

    def with_schemas(self, schemas: Mapping[str, Mapping[str, str]]) -> Catalog:
        return replace(self, schemas={**self.schemas, **schemas})

    def batch_sources(self) -> dict[str, BatchSource]:
        return {name: s for name, s in self.sources.items() if not isinstance(s, PushSource)}

    def push_source(self, name: str) -> PushSource:
        source = self.sources.get(name)
        if not isinstance(source, PushSource):
            pushes = [n for n, s in self.sources.items() if isinstance(s, PushSource)]
            raise PushSourceNotFoundError(
                f"no push source named {name!r}.{closest(name, pushes)} Registered push sources: {sorted(pushes)}; "
                "define PushSource(name=..., batch_source=...) in the repo and apply.", push_source=name,
            )
        return source

    def views_over(self, source_name: str) -> list[FeatureView]:
        return [v for v in self.views.values() if v.source_name == source_name]

    def join_keys(self, view: FeatureView) -> tuple[str, ...]:
        keys: list[str] = []
        for name in view.entity_names:
            keys.extend(k for k in self.entities[name].join_keys if k not in keys)
        return tuple(keys)

    def all_feature_refs(self) -> list[str]:
        return [f"{v.name}:{f}" for v in self.views.values() for f in v.feature_names]

    def find(self, name: str) -> Definition:
        for group in (self.views, self.services, self.entities, self.sources):
            if name in group:
                return group[name]
        everything = [*self.views, *self.services, *self.entities, *self.sources]
        raise FeatureNotFoundError(f"nothing named {name!r} is registered.{closest(name, everything)}", name=name)
