"""The online side of a FeatureStore: materializing into the online store and reading from it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from feature_store.catalog import Catalog
from feature_store.config import RepoConfig
from feature_store.offline.duckdb_engine import DuckDBOfflineEngine
from feature_store.offline.engine import MaterializeResult, ProgressCallback
from feature_store.offline.materialize import from_us, to_us
from feature_store.offline.sources import source_fingerprint
from feature_store.online.materialize import materialize_view
from feature_store.online.reader import OnlineResponse, ViewPlan, compile_view, entity_columns, read
from feature_store.online.stores import OnlineStore, key_prefix, open_online_store
from feature_store.plan import view_signature
from feature_store.references import FeatureRefs, ResolvedFeature, resolve_features
from feature_store.registry import Registry


class OnlineService:
    def __init__(self, config: RepoConfig, repo: Any, registry: Registry, offline: DuckDBOfflineEngine) -> None:
        self.config, self.repo, self.registry, self.offline = config, repo, registry, offline
        self._store: OnlineStore | None = None
        self._plans: dict[tuple[Any, ...], list[ViewPlan]] = {}

    @property
    def store(self) -> OnlineStore:
        if self._store is None:
            self._store = open_online_store(self.config.online_store, self.repo)
        return self._store

    def prefix(self, view: str, signature: str = "") -> bytes:
        """The view's keys; with a signature, those of one definition of it."""
        store_prefix = getattr(self.config.online_store, "key_prefix", "fs")
        return key_prefix(store_prefix, self.config.project, view, signature)

    def materialize(self, catalog: Catalog, views: Sequence[str], end: datetime, full: bool,
                    progress: ProgressCallback | None) -> list[MaterializeResult]:
        end_us = min(to_us(end), to_us(datetime.now(end.tzinfo)))
        results = []
        for name in views:
            view = catalog.view(name)
            signature = view_signature(catalog, name)
            files = source_fingerprint(catalog.batch_source(catalog.source_of(view)), self.repo)
            previous = None if full else self.registry.online_watermark(name, signature, files)
            if previous is not None and previous >= end_us:
                results.append(MaterializeResult(name, "online", self.store.name, from_us(previous),
                                                 from_us(previous), 0, False))
                continue
            query = self.offline.view_query(catalog, view, [ResolvedFeature(view, f, f) for f in view.feature_names])
            with self.offline.cursor() as con:
                if previous is None:  # values of any earlier definition of the view go
                    self.store.delete_prefix(self.prefix(name))
                entities, _tiles = materialize_view(con, self.store, self.prefix(name, signature), query, end_us,
                                                    previous, progress)
            self.registry.set_online_watermark(name, signature, end_us, files)  # only after every write landed
            results.append(MaterializeResult(name, "online", self.store.name,
                                             None if previous is None else from_us(previous), from_us(end_us),
                                             entities, previous is None))
        return results

    def plans(self, catalog: Catalog, version: int, features: FeatureRefs, full_feature_names: bool) -> list[ViewPlan]:
        cache_key = (version, features if isinstance(features, str) else
                     getattr(features, "name", None) or tuple(features), full_feature_names)
        if cache_key not in self._plans:
            resolved = resolve_features(catalog, features, full_feature_names)
            by_view: dict[str, list[ResolvedFeature]] = {}
            for item in resolved:
                by_view.setdefault(item.view.name, []).append(item)
            plans = []
            for name, items in by_view.items():
                view = catalog.view(name)
                query = self.offline.view_query(catalog, view, items)
                full = self.offline.view_query(catalog, view, [ResolvedFeature(view, f, f) for f in view.feature_names])
                schema = self.offline.source_schema(catalog, view.source_name)
                prefix = self.prefix(name, view_signature(catalog, name))
                plans.append(compile_view(full, query, prefix, schema))
            self._plans[cache_key] = plans
        return self._plans[cache_key]

    def get(self, catalog: Catalog, version: int, features: FeatureRefs, entity_rows: Any,
            full_feature_names: bool, now: datetime | None) -> OnlineResponse:
        plans = self.plans(catalog, version, features, full_feature_names)
        return read(self.store, plans, entity_columns(entity_rows), now)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
