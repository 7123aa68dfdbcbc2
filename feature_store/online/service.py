"""The online side of a FeatureStore: materializing into the online store, reading from it, and pushing."""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from feature_store.catalog import Catalog
from feature_store.config import RepoConfig
from feature_store.definitions import FeatureView, PushSource
from feature_store.errors import OnlineStoreUnavailable, PushDataError
from feature_store.offline.duckdb_engine import DuckDBOfflineEngine
from feature_store.offline.engine import MaterializeResult, ProgressCallback
from feature_store.offline.materialize import from_us, to_us
from feature_store.offline.sources import source_fingerprint
from feature_store.offline.sql import ViewQuery
from feature_store.online.keys import key_prefix, stored_as, view_prefix
from feature_store.online.materialize import ViewTask, materialize_views
from feature_store.online.push import MergingWriter, PushTarget, marker_key, write_pushes
from feature_store.online.reader import OnlineResponse, ViewPlan, compile_view, entity_columns, read, read_async
from feature_store.online.stores import OnlineStore, open_online_store
from feature_store.plan import view_signature
from feature_store.push_rows import PushRows, check_rows
from feature_store.references import FeatureRefs, ResolvedFeature, resolve_features
from feature_store.registry import Registry

PLAN_CACHE_SIZE = 1024
REBUILDING = "rebuilding"  # the signature a view's online state has while it is rebuilt: no watermark matches it
PUSH_CHUNK_ROWS = 64
PushTo = Literal["online", "offline", "online_and_offline"]


@dataclass(frozen=True)
class PushResult:
    rows: int
    online_updates: int  # online values written: one per entity and view over the source (and per chunk)
    pushed_at: datetime  # when the events became available, for training sets as for serving
    to: PushTo


@dataclass(frozen=True)
class _ViewJob:
    """One view's online materialization, prepared on the caller's thread."""

    view: str
    signature: str
    files: dict[str, list[int]]
    previous: int | None
    query: ViewQuery
    end: int
    target: OnlineStore


class OnlineService:
    def __init__(self, config: RepoConfig, repo: Any, registry: Registry, offline: DuckDBOfflineEngine) -> None:
        self.config, self.repo, self.registry, self.offline = config, repo, registry, offline
        self._store: OnlineStore | None = None
        # Compiled per request shape; bounded, since clients choose the feature lists (least recently used go).
        self._plans: OrderedDict[tuple[Any, ...], list[ViewPlan]] = OrderedDict()
        self._targets: dict[tuple[int, str], list[PushTarget]] = {}
        self._lock = threading.Lock()

    @property
    def store(self) -> OnlineStore:
        if self._store is None:
            self._store = open_online_store(self.config.online_store, self.repo)
        return self._store

    def prefix(self, view: str, signature: str) -> bytes:
        """The keys of one definition of the view."""
        return key_prefix(self._store_prefix, self.config.project, view, signature)

    def every_prefix(self, view: str) -> bytes:
        """The keys of every definition of the view."""
        return view_prefix(self._store_prefix, self.config.project, view)

    @property
    def _store_prefix(self) -> str:
        return getattr(self.config.online_store, "key_prefix", "fs")

    def materialize(self, catalog: Catalog, views: Sequence[str], end: datetime, full: bool,
                    progress: ProgressCallback | None) -> list[MaterializeResult]:
        end_us = min(to_us(end), to_us(datetime.now(end.tzinfo)))
        results, todo = [], []
        for name in views:
            view = catalog.view(name)
            signature = view_signature(catalog, name)
            files = source_fingerprint(catalog.batch_source(catalog.source_of(view)), self.repo)
            previous = None if full else self.registry.online_watermark(name, stored_as(signature), files)
            if previous is not None and previous >= end_us:
                results.append(MaterializeResult(name, "online", self.store.name, from_us(previous),
                                                 from_us(previous), 0, False))
            else:
                todo.append((view, signature, files, previous))
        # Values of any earlier definition of a rebuilt view go, in one pass over the store for all of them. A view
        # never materialized online has none (its first run need not walk a large shared Redis); --full always looks.
        stored = None if full else self.registry.online_views()
        deleted = [(view, signature) for view, signature, _, previous in todo
                   if previous is None and (stored is None or view.name in stored)]
        for view, _signature, _files, previous in todo:
            if previous is None:  # before anything is deleted: a run killed from here on leaves a rebuild to do
                self.registry.set_online_watermark(view.name, REBUILDING, 0)
        armed = self._arm_markers(catalog, deleted)
        self.store.delete_prefixes([self.every_prefix(view.name) for view, _ in deleted],
                                   keep=[m for m, _ in armed.values()])
        tokens = {name: token for name, (_, token) in armed.items()}
        # on this thread: DuckDB's own connection
        jobs = [self._job(catalog, *item, end_us, tokens.get(item[0].name)) for item in todo]
        tasks = [ViewTask(job.query, job.target, self.prefix(job.view, job.signature), job.end, job.previous)
                 for job in jobs]
        with self.offline.cursor() as con:
            for index, entities, _tiles in materialize_views(con, tasks, progress):
                job = jobs[index]
                # after the writes
                self.registry.set_online_watermark(job.view, stored_as(job.signature), job.end, job.files)
                results.append(MaterializeResult(job.view, "online", self.store.name,
                                                 None if job.previous is None else from_us(job.previous),
                                                 from_us(job.end), entities, job.previous is None))
        return sorted(results, key=lambda result: list(views).index(result.view))

    def _arm_markers(self, catalog: Catalog, views: list[tuple[FeatureView, str]]) -> dict[str, tuple[bytes, bytes]]:
        """Per push source view whose keys are about to be deleted: its marker key, set to a value of this run's.
        The deletion spares it, so a push that lands meanwhile (and may outlive the deletion) changes it, and
        the view's batches read their keys again (MergingWriter)."""
        armed = {view.name: (marker_key(self.prefix(view.name, signature), view.name), os.urandom(8))
                 for view, signature in views if isinstance(catalog.source_of(view), PushSource)}
        if armed:
            self.store.write([(marker, token, None) for marker, token in armed.values()])
        return armed

    def _job(self, catalog: Catalog, view: FeatureView, signature: str, files: dict[str, list[int]],
             previous: int | None, end_us: int, armed: bytes | None) -> _ViewJob:
        query = self.offline.view_query(catalog, view, [ResolvedFeature(view, f, f) for f in view.feature_names])
        view_end, target = end_us, self.store
        if isinstance(catalog.source_of(view), PushSource):  # keep what is pushed meanwhile
            now_us = to_us(datetime.now(UTC))
            view_end = self.offline.push_log.materialize_end(end_us, now_us)
            push_target = PushTarget.of(query, self.prefix(view.name, signature), self.offline.push_log.bucket_us)
            target = MergingWriter(self.store, push_target, view_end, now_us, rebuild=previous is None, armed=armed)
        return _ViewJob(view.name, signature, files, previous, query, view_end, target)

    # --- push ---------------------------------------------------------------------------------

    def push(self, catalog: Catalog, version: int, name: str, data: Any, to: PushTo) -> PushResult:
        """Check the rows, append them durably to the offline log, then merge them into online values."""
        if to not in ("online", "offline", "online_and_offline"):
            raise PushDataError(f"push 'to' must be 'online', 'offline' or 'online_and_offline', not {to!r}.")
        source = catalog.push_source(name)
        batch = catalog.batch_source(source)
        targets = self.push_targets(catalog, version, name)
        required = {batch.timestamp_field, *(k for t in targets for k in t.keys)}
        schema = self.offline.source_schema(catalog, batch.name)
        # a push row's availability is its arrival: the batch source's created column may be left out
        optional = {*source.nullable, *filter(None, [batch.created_timestamp_field])}
        rows = check_rows(name, data, schema, batch.timestamp_field, required, time.time_ns() // 1000, optional)
        logged = to != "online"
        pushed_at = self.offline.push_log.append(name, rows.log_lines) if logged else time.time_ns() // 1000
        updates = self._push_online(targets, rows, pushed_at, logged) if to != "offline" else 0
        return PushResult(rows.count, updates, from_us(pushed_at), to)

    def _push_online(self, targets: list[PushTarget], rows: PushRows, pushed_at: int, logged: bool) -> int:
        try:
            # Each entity's update is atomic; a big push goes in chunks, so that concurrent pushes rarely touch
            # the same keys within one transaction and a retry redoes little.
            return sum(write_pushes(self.store, targets, rows.slice(start, start + PUSH_CHUNK_ROWS), pushed_at,
                                    time.time_ns() // 1000) for start in range(0, rows.count, PUSH_CHUNK_ROWS))
        except OnlineStoreUnavailable as exc:
            if not logged:
                raise
            raise type(exc)(
                f"{exc} The {rows.count} pushed row(s) are in the offline log and reach the online store at the "
                "next materialize; pushing them again would count them twice.", **exc.details, logged_offline=True,
            ) from exc

    def push_targets(self, catalog: Catalog, version: int, source_name: str) -> list[PushTarget]:
        """The online values a push to ``source_name`` updates: one per view over it."""
        key = (version, source_name)
        if key not in self._targets:
            targets = []
            for view in catalog.views_over(source_name):
                items = [ResolvedFeature(view, f, f) for f in view.feature_names]
                full = self.offline.view_query(catalog, view, items, materialized=False)
                prefix = self.prefix(view.name, view_signature(catalog, view.name))
                targets.append(PushTarget.of(full, prefix, self.offline.push_log.bucket_us))
            self._targets[key] = targets
        return self._targets[key]

    def plans(self, catalog: Catalog, version: int, features: FeatureRefs, full_feature_names: bool) -> list[ViewPlan]:
        cache_key = (version, features if isinstance(features, str) else
                     getattr(features, "name", None) or tuple(features), full_feature_names)
        with self._lock:
            plans = self._plans.get(cache_key)
            if plans is not None:
                self._plans.move_to_end(cache_key)
                return plans
        plans = self._compile(catalog, features, full_feature_names)
        with self._lock:
            self._plans[cache_key] = plans
            while len(self._plans) > PLAN_CACHE_SIZE:
                self._plans.popitem(last=False)
        return plans

    def _compile(self, catalog: Catalog, features: FeatureRefs, full_feature_names: bool) -> list[ViewPlan]:
        by_view: dict[str, list[ResolvedFeature]] = {}
        for item in resolve_features(catalog, features, full_feature_names):
            by_view.setdefault(item.view.name, []).append(item)
        plans = []
        for name, items in by_view.items():
            view = catalog.view(name)
            query = self.offline.view_query(catalog, view, items, materialized=False)
            full = self.offline.view_query(catalog, view, [ResolvedFeature(view, f, f) for f in view.feature_names],
                                           materialized=False)
            schema = self.offline.source_schema(catalog, view.source_name)
            prefix = self.prefix(name, view_signature(catalog, name))
            plans.append(compile_view(full, query, prefix, schema))
        return plans

    def get(self, catalog: Catalog, version: int, features: FeatureRefs, entity_rows: Any,
            full_feature_names: bool, now: datetime | None) -> OnlineResponse:
        plans = self.plans(catalog, version, features, full_feature_names)
        return read(self.store, plans, entity_columns(entity_rows), now)

    async def get_async(self, catalog: Catalog, version: int, features: FeatureRefs, entity_rows: Any,
                        full_feature_names: bool, now: datetime | None) -> OnlineResponse:
        plans = self.plans(catalog, version, features, full_feature_names)
        return await read_async(self.store, plans, entity_columns(entity_rows), now)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
