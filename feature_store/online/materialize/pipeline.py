"""Online materialization's pipeline: the engine's per-entity tiles, encoded and written in pipelined batches.

Each run recomputes, from all events available before ``end``, the value of every entity that has new rows since
the view's watermark, and overwrites it with a plain write (never a read first: pushes keep what they add in a
field of their own, push/merge.py); the watermark moves only after the writes. Running twice, or again after a
crash halfway, writes the same values again: nothing is ever added on top of a stored value, so nothing can be
counted twice.

Speed: the engine computes each hop group's tiles sorted by entity (offline/engine.py: OnlineTiles);
tiles/columnar.py packs the values column by column (no Python object per value or per entity), and they are
written in batches that Redis receives as one buffer of commands. The engine computes the next buckets (of the
view or of the next views) in a thread while this one is encoded and a writer thread writes the one before;
values are written in key order (SQLite inserts into its B-tree in order).

An engine whose own workers write (``Capabilities.writes_online``: Spark) does not come through here when the store
takes writes from other hosts (Redis): each of its partitions runs the same ``encode_values`` and writes in batches
of the same size itself (offline/spark/online_writes.py; runner.py chooses).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa

from feature_store.offline.engine import OnlineTiles, ProgressCallback
from feature_store.online.stores.base import OnlineStore
from feature_store.online.stores.writes import Batch
from feature_store.online.tiles.columnar import encode_values

BATCH = 5_000  # entities per pipelined write
BUCKETS_AHEAD = 2  # buckets computed ahead of the one being encoded: at most 4 held in memory


@dataclass(frozen=True)
class ViewTask:
    """One view's online materialization: the engine's values (as of ``tiles.end``), written under ``prefix``
    into ``store``."""

    tiles: OnlineTiles
    store: OnlineStore
    prefix: bytes


@dataclass(frozen=True)
class _Bucket:
    task: int  # index of the view's task
    tables: list[pa.Table]
    counter: _Progress
    last: bool  # the view's last bucket


def materialize_views(tasks: Sequence[ViewTask], progress: ProgressCallback | None) -> Iterator[tuple[int, int, int]]:
    """Write the views' online values, one view after another; yield (task index, entities, tiles) as each
    view's writes have all landed.

    The engine hands entities over in buckets of bounded size, so memory stays bounded. One pipeline for all
    views (query, encode, write), each stage in its own thread: on two cores that keeps both busy, where views side
    by side fight over them.
    """
    steps = _steps(tasks, progress)
    queries = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fs-online-query")
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fs-online-write")
    writing: Future[None] | None = None
    totals: dict[int, list[int]] = {}  # per view: entities and tiles encoded so far
    landing: _Bucket | None = None  # a view's last bucket, being written
    try:
        # Three stages at once: DuckDB computes the next buckets (without the GIL; two ahead, so that a view
        # whose queries are slow starts while a quick one is written), this thread encodes one, and a writer
        # thread writes the one before, mostly waiting for the store.
        ahead = deque(queries.submit(next, steps, None) for _ in range(BUCKETS_AHEAD))
        while (bucket := ahead.popleft().result()) is not None:
            ahead.append(queries.submit(next, steps, None))
            task = tasks[bucket.task]
            batch, tiles = encode_values(bucket.tables, task.prefix, task.tiles.plan, task.tiles.end)
            if writing is not None:
                writing.result()
                if landing is not None:
                    yield _landed(landing, totals)
            writing = writer.submit(_write, task.store, batch, bucket.counter)
            counts = totals.setdefault(bucket.task, [0, 0])
            counts[0] += len(batch)
            counts[1] += tiles
            landing = bucket if bucket.last else None
        if writing is not None:
            writing.result()
            if landing is not None:
                yield _landed(landing, totals)
    finally:  # after an error, no more queries or writes
        queries.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True, cancel_futures=True)


def _landed(bucket: _Bucket, totals: dict[int, list[int]]) -> tuple[int, int, int]:
    """A view whose writes have all landed: (task index, entities, tiles)."""
    bucket.counter.finish()
    entities, tiles = totals.pop(bucket.task)
    return bucket.task, entities, tiles


def _steps(tasks: Sequence[ViewTask], progress: ProgressCallback | None) -> Iterator[_Bucket]:
    """Every view's buckets in order, computed by the engine (on the thread that advances this iterator)."""
    for index, task in enumerate(tasks):
        counter = _Progress(f"{task.tiles.plan.name} online", task.tiles.entities, progress)
        previous: list[pa.Table] | None = None
        for tables in task.tiles.buckets():
            if previous is not None:
                yield _Bucket(index, previous, counter, False)
            previous = tables
        yield _Bucket(index, previous or [], counter, True)


class _Progress:
    """Entities written so far, reported as (what, done, total) to the caller's progress callback."""

    def __init__(self, what: str, total: int, callback: ProgressCallback | None) -> None:
        self.what, self.total, self.callback, self.done = what, total, callback, 0

    def add(self, count: int) -> None:
        self.done += count
        self.total = max(self.total, self.done)  # the total may be an estimate (see _entities)
        if self.callback:
            self.callback(self.what, self.done, self.total)

    def finish(self) -> None:
        if self.callback:
            self.callback(self.what, self.done, self.done)


def _write(store: OnlineStore, batch: Batch, progress: _Progress) -> None:
    for start in range(0, len(batch), BATCH):
        part = batch.slice(start, min(start + BATCH, len(batch)))
        store.write(part)
        progress.add(len(part))
