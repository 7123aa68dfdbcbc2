"""One online materialization run: which views to write and how (incremental, rebuilt in place, or a new
generation beside the live one), the pipeline that writes them, then the switch.

- **Incremental**: the live generation has this definition and a watermark, and its source files are unchanged:
  the values of entities with rows available since the watermark are written again.
- **Rebuilt in place** (``--full``, a changed source file): the live generation's watermark is cleared first (a
  killed run leaves a rebuild to do), every value is written again over the old one (readers keep reading valid
  values throughout), then the values no row produced any more are swept (those the run did not write).
- **A new generation** (a changed definition, or a store that has none yet): written beside the live one, which
  readers keep serving; then, in one registry transaction, it becomes live and the old one retires. A view over a
  push source switches only once every feature server has loaded the new definition and writes its pushes to
  both generations (``server.registry_refresh_seconds`` after apply), so no acknowledged push is missing.

Retired generations' values are deleted by a later run, once no reader can still be serving them.

Who writes: this process, through the pipeline (pipeline.py), from the tiles the engine hands over; or, for an
engine whose workers write (``capabilities.writes_online``: Spark) into a store they can reach (``remote_writes``:
Redis), the workers themselves, with the same encoding, and only counts come back. Either way a view's watermark
moves only once all its writes landed; generations, sweeps and watermarks are the same.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgpack

from feature_store.catalog import Catalog
from feature_store.config import RedisOnlineConfig, SqliteOnlineConfig
from feature_store.definitions import PushSource
from feature_store.offline.engine import (
    MaterializeResult,
    OfflineEngine,
    ProgressCallback,
    from_us,
    still_valid,
    to_us,
)
from feature_store.offline.push_log import PushLog
from feature_store.online.generations import BUILDING, LIVE, RETIRED, Generation, Generations, generation_spec
from feature_store.online.keys import delta_prefix
from feature_store.online.materialize.pipeline import ViewTask, materialize_views
from feature_store.online.stores.base import OnlineStore
from feature_store.plan import view_signature

SWEEP_BATCH = 10_000


@dataclass(frozen=True)
class Job:
    view: str
    signature: str
    files: dict[str, list[int]]
    previous: int | None  # the watermark an incremental run continues from; None: every entity
    end: int
    sweep: bool  # values of this generation may be stored already: delete those the run did not write
    spec: dict[str, Any]


class Runner:
    def __init__(self, store: OnlineStore, generations: Generations, push_log: PushLog, prefix: Any,
                 switch_after: float, applied_at: datetime | None,
                 store_config: RedisOnlineConfig | SqliteOnlineConfig | None = None) -> None:
        self.store, self.generations, self.push_log, self.prefix = store, generations, push_log, prefix
        self.store_config = store_config  # what an engine's workers open the store from (None: write here)
        # readers and pushers reload definitions at most this long after an apply (feature servers and the SDK)
        self.switch_after = switch_after
        self.applied_at = applied_at

    def run(self, engine: OfflineEngine, catalog: Catalog, views: Sequence[str], end: datetime, full: bool,
            progress: ProgressCallback | None) -> list[MaterializeResult]:
        now_us = to_us(datetime.now(UTC))
        end_us = min(to_us(end), now_us)
        existing = self.generations.all()
        live = {g.view: g for g in existing if g.state == LIVE}
        building = {(g.view, g.signature) for g in existing if g.state == BUILDING}
        results: list[MaterializeResult] = []
        jobs = []
        for name in views:
            job = self._job(engine, catalog, name, live.get(name), building, end_us, now_us, full, progress)
            if isinstance(job, MaterializeResult):
                results.append(job)
            else:
                jobs.append(job)
        for job in jobs:
            if job.previous is None:  # before anything is written: a run killed from here on leaves a rebuild
                current = live.get(job.view)
                self.generations.start(job.view, job.signature, job.spec,
                                       in_place=current is not None and current.signature == job.signature)
        for index, entities in self._write(engine, catalog, jobs, progress):
            job = jobs[index]
            if job.sweep:
                self._sweep(self.prefix(job.view, job.signature), job.end)
            self.generations.finish(job.view, job.signature, job.end, job.files, job.spec)
            results.append(MaterializeResult(job.view, "online", self.store.name,
                                             None if job.previous is None else from_us(job.previous),
                                             from_us(job.end), entities, job.previous is None))
        self._delete_retired(existing)
        return sorted(results, key=lambda result: list(views).index(result.view))

    def _write(self, engine: OfflineEngine, catalog: Catalog, jobs: Sequence[Job],
               progress: ProgressCallback | None) -> Iterator[tuple[int, int]]:
        """Write the jobs' values; yield (job index, entities written) as each job's writes have all landed, and
        only then (the caller moves its watermark)."""
        if self.store_config is not None and engine.capabilities.writes_online and self.store.remote_writes:
            # The engine's workers encode and write (each opens the store from its config); counts come back
            for index, job in enumerate(jobs):
                written = engine.write_online(catalog, job.view, job.end, job.previous, self.store_config,
                                              self.prefix(job.view, job.signature))
                if progress:
                    progress(f"{job.view} online", written.entities, written.entities)
                yield index, written.entities
            return
        # Here: the engine hands each view's tiles over, bucket by bucket, to the pipeline (encode, write)
        tasks = [ViewTask(engine.online_tiles(catalog, job.view, job.end, job.previous), self.store,
                          self.prefix(job.view, job.signature)) for job in jobs]
        for index, entities, _tiles in materialize_views(tasks, progress):
            yield index, entities

    def _job(self, engine: OfflineEngine, catalog: Catalog, name: str, current: Generation | None,
             building: set[tuple[str, str]], end_us: int, now_us: int, full: bool,
             progress: ProgressCallback | None) -> Job | MaterializeResult:
        view = catalog.view(name)
        signature = view_signature(catalog, name)
        source = catalog.source_of(view)
        files = engine.fingerprint(catalog.batch_source(source))
        same = current is not None and current.signature == signature
        previous = None
        if same and current is not None and not full and current.watermark is not None and still_valid(
                current.files, files):
            previous = current.watermark
        view_end = end_us
        if isinstance(source, PushSource):  # never pass an event about to land in the log
            view_end = self.push_log.materialize_end(end_us, now_us)
            if current is not None and not same:
                view_end = self._after_switch_wait(name, end_us, view_end, progress)
        if previous is not None and previous >= view_end:
            return MaterializeResult(name, "online", self.store.name, from_us(previous), from_us(previous), 0, False)
        # values of this generation may be there already: of the live one, or of a build that was cut short
        sweep = previous is None and (same or (name, signature) in building)
        return Job(name, signature, files, previous, view_end, sweep, generation_spec(catalog, view))

    def _after_switch_wait(self, view: str, end_us: int, view_end: int, progress: ProgressCallback | None) -> int:
        """The end of a new generation of a view over a push source: no earlier than when every pusher writes to
        both generations (it switches at that end, and pushes before it are in the offline log). Waits for it,
        whatever end was asked: a generation that switched earlier would miss the pushes of servers still on the
        previous definition (they write the old generation only)."""
        if self.applied_at is None:
            return view_end
        ready = to_us(self.applied_at) + int(self.switch_after * 1_000_000)
        if view_end >= ready:
            return view_end
        end_us = max(end_us, ready)
        started = time.monotonic()
        total = max(1, (ready - view_end) // 1_000_000 + int(self.push_log.bucket_seconds) + 1)
        what = f"{view} waits for feature servers to load its new definition (s)"
        while view_end < ready:
            if progress:
                progress(what, min(int(time.monotonic() - started), total), total)
            time.sleep(0.2)
            view_end = self.push_log.materialize_end(end_us, to_us(datetime.now(UTC)))
        if progress:
            progress(what, total, total)
        return view_end

    def _sweep(self, prefix: bytes, end: int) -> None:
        """Delete the values under ``prefix`` that this run did not write (their first element, the end of the
        run that wrote them, is another): entities no row produces any more, after a rebuild in place."""
        stale: list[bytes] = []
        for batch in self.store.scan(prefix):
            for key, value in batch:
                unpacker = msgpack.Unpacker()
                unpacker.feed(value)
                unpacker.read_array_header()
                if unpacker.unpack() != end:
                    stale.append(key)
            if len(stale) >= SWEEP_BATCH:
                self.store.delete(stale)
                stale = []
        self.store.delete(stale)

    def _delete_retired(self, existing: Sequence[Generation]) -> None:
        """The values of generations retired long enough ago that no reader can still be serving them."""
        now = datetime.now(UTC)
        for generation in existing:
            if generation.state != RETIRED:
                continue
            if (now - generation.updated_at.replace(tzinfo=generation.updated_at.tzinfo or UTC)).total_seconds() \
                    < 2 * self.switch_after:
                continue
            prefix = self.prefix(generation.view, generation.signature)
            self.store.delete_prefixes([prefix, delta_prefix(prefix)])
            self.generations.forget(generation.view, generation.signature)
