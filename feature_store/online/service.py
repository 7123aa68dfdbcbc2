"""The online side of a FeatureStore: materializing into the online store, reading from it, and pushing.

It never touches offline data: reads and pushes are compiled from the registry (definitions, the columns recorded
at apply, and each view's live generation: online/generations.py); materialization takes whatever offline engine
the facade hands it, through the engine protocol.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from feature_store.catalog import Catalog
from feature_store.config import RepoConfig
from feature_store.errors import OnlineStoreUnavailable, PushDataError, PushStalledError
from feature_store.offline.engine import MaterializeResult, OfflineEngine, ProgressCallback, from_us
from feature_store.offline.push_log import PushLog
from feature_store.online.generations import Generation, Generations
from feature_store.online.keys import PUSHES, key_prefix, namespaces, store_id_key, view_prefix
from feature_store.online.materialize.runner import Runner
from feature_store.online.push.idempotency import LOGGED, PushKeys, Record, check_push_id, digest
from feature_store.online.push.merge import PushTarget
from feature_store.online.push.writer import write_pushes
from feature_store.online.read.entities import entity_columns
from feature_store.online.read.plans import ViewPlan, compile_read
from feature_store.online.read.reader import OnlineResponse, read, read_async
from feature_store.online.stores import OnlineStore, open_online_store
from feature_store.plan import view_signature
from feature_store.push_rows import PushRows, check_rows
from feature_store.query import ViewQuery, compile_view
from feature_store.references import FeatureRefs, ResolvedFeature, resolve_features
from feature_store.registry import Registry

PLAN_CACHE_SIZE = 1024
PUSH_CHUNK_ROWS = 64
PURGE_SECONDS = 3600.0  # how often a process deletes expired push id records from a store that keeps them (SQLite)
SDK_REFRESH_SECONDS = 2.0  # how stale an SDK's catalog may get (FeatureStore.registry_refresh_seconds' default)
PushTo = Literal["online", "offline", "online_and_offline"]


@dataclass(frozen=True)
class PushResult:
    rows: int
    online_updates: int  # online values written: one per entity and view over the source (and per chunk)
    pushed_at: datetime  # when the events became available, for training sets as for serving
    to: PushTo
    push_id: str | None = None
    duplicate: bool = False  # the push id was pushed before: this attempt added nothing that had landed


@dataclass(frozen=True)
class State:
    """What this store holds, as the registry says: its identity and each view's live generation."""

    store_id: str | None  # None: nothing was ever materialized into it
    live: dict[str, Generation]

    @cached_property  # read by every online read (the plan cache's key): computed once per state
    def token(self) -> tuple[Any, ...]:
        return (self.store_id, tuple(sorted((v, g.signature) for v, g in self.live.items())))


class OnlineService:
    def __init__(self, config: RepoConfig, repo: Path, registry: Registry, push_log: PushLog) -> None:
        self.config, self.repo, self.registry, self.push_log = config, repo, registry, push_log
        self._store: OnlineStore | None = None
        self._state: State | None = None
        # Compiled per request shape; bounded, since clients choose the feature lists (least recently used go).
        self._plans: dict[tuple[Any, ...], list[ViewPlan]] = {}
        self._live_plans: dict[tuple[str, str], ViewQuery] = {}
        self._targets: dict[tuple[Any, ...], list[PushTarget]] = {}
        self._lock = threading.Lock()
        self._purged_at = -math.inf

    @property
    def store(self) -> OnlineStore:
        if self._store is None:
            self._store = open_online_store(self.config.online_store, self.repo)
        return self._store

    @property
    def _store_prefix(self) -> str:
        return getattr(self.config.online_store, "key_prefix", "fs")

    def prefix(self, view: str, signature: str) -> bytes:
        """The keys of one definition (generation) of the view."""
        return key_prefix(self._store_prefix, self.config.project, view, signature)

    def every_prefix(self, view: str) -> bytes:
        """The keys of every definition of the view, pushed deltas included."""
        return view_prefix(self._store_prefix, self.config.project, view)

    def teardown(self) -> int:
        """Delete everything of the project in this store, every layout's keys and the store's identity."""
        deleted = sum(self.store.delete_namespace(ns) for ns in namespaces(self._store_prefix, self.config.project))
        self._state = None
        return deleted

    # --- state ----------------------------------------------------------------------------------

    def store_id(self, create: bool = False) -> str | None:
        """The project's identity in this store (None: none yet); ``create`` makes one if there is none."""
        key = store_id_key(self._store_prefix, self.config.project)
        found = self.store.read([key])[0]
        if found is not None or not create:
            return None if found is None else found.decode()
        made = os.urandom(8).hex().encode()
        chosen: list[bytes] = []

        def compute(current: Sequence[bytes | None]) -> list[tuple[bytes, bytes, int | None]]:
            chosen[:] = [current[0] or made]  # a concurrent first materialization may have made one: keep it
            return [] if current[0] is not None else [(key, made, None)]

        self.store.update([key], compute)
        return chosen[0].decode()

    def refresh(self) -> State:
        """Read what the store holds from the registry again (serving does every registry refresh). A store that
        does not answer keeps the state read last, if any: reads and pushes then fail on the store itself."""
        try:
            store_id = self.store_id()
        except OnlineStoreUnavailable:
            if self._state is None:
                raise
            return self._state
        live = Generations(self.registry, store_id).live() if store_id is not None else {}
        self._state = State(store_id, live)
        return self._state

    def state(self) -> State:
        return self._state if self._state is not None else self.refresh()

    @property
    def current_state(self) -> State | None:
        """The state reads use now, without reading anything (the served-value log keeps it with each read)."""
        return self._state

    # --- materialization ------------------------------------------------------------------------

    def materialize(self, engine: OfflineEngine, catalog: Catalog, views: Sequence[str], end: datetime, full: bool,
                    progress: ProgressCallback | None) -> list[MaterializeResult]:
        store_id = self.store_id(create=True)
        if store_id is None:  # store_id(create=True) always answers
            raise OnlineStoreUnavailable("the online store gave no identity")
        switch_after = max(self.config.server.registry_refresh_seconds, SDK_REFRESH_SECONDS) + 1.0
        runner = Runner(self.store, Generations(self.registry, store_id), self.push_log, self.prefix,
                        switch_after, self.registry.applied_at(), self.config.online_store)
        results = runner.run(engine, catalog, views, end, full, progress)
        self.refresh()
        return results

    # --- push -----------------------------------------------------------------------------------

    @property
    def push_keys(self) -> PushKeys:
        return PushKeys(self.store, self._store_prefix, self.config.project,
                        self.config.push.idempotency_retention_seconds, self.push_log.settle_seconds)

    def push(self, catalog: Catalog, version: int, name: str, data: Any, to: PushTo,
             push_id: str | None = None) -> PushResult:
        """Check the rows, append them durably to the offline log, then merge them into online values. With a
        push id, a retry of the same push counts once (online/push/idempotency.py)."""
        if to not in ("online", "offline", "online_and_offline"):
            raise PushDataError(f"push 'to' must be 'online', 'offline' or 'online_and_offline', not {to!r}.")
        push_id = check_push_id(push_id)
        source = catalog.push_source(name)
        batch = catalog.batch_source(source)
        targets = self.push_targets(catalog, version, name)
        required = {batch.timestamp_field, *(k for t in targets for k in t.keys)}
        # a push row's availability is its arrival: the batch source's created column may be left out
        optional = {*source.nullable, *filter(None, [batch.created_timestamp_field])}
        rows = check_rows(name, data, catalog.schema(batch.name), batch.timestamp_field, required,
                          time.time_ns() // 1000, optional)
        if push_id is not None:
            return self._push_once(name, targets, rows, to, push_id)
        logged = to != "online"
        pushed_at = self.push_log.append(name, rows.log_lines) if logged else time.time_ns() // 1000
        updates = self._push_online(targets, rows, pushed_at, logged) if to != "offline" else 0
        return PushResult(rows.count, updates, from_us(pushed_at), to)

    def _push_once(self, name: str, targets: list[PushTarget], rows: PushRows, to: PushTo, push_id: str) -> PushResult:
        """A push with a push id: its record claimed (or found), its rows logged unless a copy is, then each chunk
        merged online unless its marker says it landed."""
        keys = self.push_keys
        if time.monotonic() - self._purged_at > PURGE_SECONDS:
            self._purged_at = time.monotonic()
            self.store.purge_expired(view_prefix(self._store_prefix, self.config.project, PUSHES))
        claim = keys.claim(name, push_id, digest(name, to, rows.log_lines(0)), rows.count, to)
        if to == "online":  # nothing logged: no time to agree with, and an old one would be dropped as counted
            pushed_at = time.time_ns() // 1000
        else:
            pushed_at = self._log_once(keys, name, rows, push_id, claim.record).pushed_at
        updates = 0
        if to != "offline":
            updates = self._push_online(targets, rows, pushed_at, to != "online", (keys, name, push_id))
        return PushResult(rows.count, updates, from_us(pushed_at), to, push_id, claim.duplicate)

    def _log_once(self, keys: PushKeys, name: str, rows: PushRows, push_id: str, record: Record) -> Record:
        """The push's rows in the log once (copies all at the record's time), and its record LOGGED."""
        lines = functools.partial(rows.log_lines, push_id=push_id)
        for _ in range(4):
            if record.state == LOGGED:
                return record
            age = time.time_ns() // 1000 - record.pushed_at
            if age <= keys.lease_us:
                self.push_log.append(name, lines, record.pushed_at, record.pushed_at + keys.lease_us)
                logged = dataclasses.replace(record, state=LOGGED)
                now = keys.replace(name, push_id, record, logged)
                return logged if now.pushed_at == logged.pushed_at else now
            if age < keys.stale_us:  # an earlier attempt may still write its copy: wait until none can
                time.sleep((keys.stale_us - age) / 1e6)
            if self.push_log.has_copy(name, push_id, record.pushed_at, rows.count):
                record = keys.replace(name, push_id, record, dataclasses.replace(record, state=LOGGED))
            else:  # no attempt logged it: this one does, at a time of its own
                record = keys.replace(name, push_id, record,
                                      dataclasses.replace(record, pushed_at=time.time_ns() // 1000))
        raise PushStalledError(f"push {push_id!r} to {name!r} could not be logged: other attempts with the same push "
                               "id kept taking it over; retry it.", push_source=name, push_id=push_id)

    def _push_online(self, targets: list[PushTarget], rows: PushRows, pushed_at: int, logged: bool,
                     once: tuple[PushKeys, str, str] | None = None) -> int:
        # Each entity's update is atomic; on a store whose updates are optimistic a big push goes in chunks, so
        # that concurrent pushes rarely touch the same keys within one transaction and a retry redoes little.
        chunk = PUSH_CHUNK_ROWS if self.store.optimistic_updates else rows.count
        try:
            return sum(write_pushes(self.store, targets, rows.slice(start, start + chunk), pushed_at,
                                    time.time_ns() // 1000,
                                    None if once is None else once[0].chunk_marker(once[1], once[2], start))
                       for start in range(0, rows.count, chunk))
        except OnlineStoreUnavailable as exc:
            if not logged:
                raise
            again = ("retrying with the same push id counts them once" if once is not None else
                     "pushing them again would count them twice")
            raise type(exc)(
                f"{exc} The {rows.count} pushed row(s) are in the offline log and reach the online store at the "
                f"next materialize; {again}.", **exc.details, logged_offline=True,
            ) from exc

    def push_targets(self, catalog: Catalog, version: int, source_name: str) -> list[PushTarget]:
        """The online values a push to ``source_name`` updates: per view over it, its live generation's, and the
        current definition's when it is another (being built: it must hold every push once it goes live)."""
        state = self.state()
        key = (version, state.token, source_name)
        if key not in self._targets:
            targets = []
            for view in catalog.views_over(source_name):
                signature = view_signature(catalog, view.name)
                live = state.live.get(view.name)
                if live is not None:
                    targets.append(PushTarget.of(self._live_plan(live), self.prefix(view.name, live.signature),
                                                 self.push_log.bucket_us))
                if live is None or live.signature != signature:
                    current = compile_view(catalog, view, [ResolvedFeature(view, f, f) for f in view.feature_names])
                    targets.append(PushTarget.of(current, self.prefix(view.name, signature), self.push_log.bucket_us))
            self._targets[key] = targets
        return self._targets[key]

    # --- reads ----------------------------------------------------------------------------------

    def _live_plan(self, generation: Generation) -> ViewQuery:
        key = (generation.view, generation.signature)
        plan = self._live_plans.get(key)
        if plan is None:
            plan = self._live_plans[key] = generation.plan()
        return plan

    def plans(self, catalog: Catalog, version: int, features: FeatureRefs, full_feature_names: bool) -> list[ViewPlan]:
        state = self.state()
        cache_key = (version, state.token, features if isinstance(features, str) else
                     getattr(features, "name", None) or tuple(features), full_feature_names)
        plans = self._plans.get(cache_key)  # no lock on a hit (a dict read is atomic): the hit is every read
        if plans is not None:
            return plans
        plans = self._compile(catalog, state, features, full_feature_names)
        with self._lock:
            self._plans[cache_key] = plans
            while len(self._plans) > PLAN_CACHE_SIZE:  # the oldest compiled goes first; a hot one comes back
                del self._plans[next(iter(self._plans))]
        return plans

    def _compile(self, catalog: Catalog, state: State, features: FeatureRefs,
                 full_feature_names: bool) -> list[ViewPlan]:
        by_view: dict[str, list[ResolvedFeature]] = {}
        for item in resolve_features(catalog, features, full_feature_names):
            by_view.setdefault(item.view.name, []).append(item)
        plans = []
        for name, items in by_view.items():
            requested = compile_view(catalog, catalog.view(name), items)
            live = state.live.get(name)
            live_plan = None if live is None else self._live_plan(live)
            prefix = self.prefix(name, live.signature if live is not None else "")
            plans.append(compile_read(live_plan, requested, prefix, self.push_log.bucket_us))
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
