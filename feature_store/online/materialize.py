"""Online materialization: compute per-entity values in DuckDB and write them in pipelined batches.

Each run recomputes, from all events available before ``end``, the value of every entity that
has new rows since the view's watermark, and overwrites it; the watermark moves only after the
writes. Running twice, or again after a crash halfway, writes the same values again: nothing is
ever added on top of a stored value, so nothing can be counted twice. A changed definition
(another data signature) starts the view over.

Speed: per view, the events it needs are staged once, and each hop group's tiles come sorted by
entity, read from the offline tile tables where they can be (compute.py); encode.py packs the
values column by column (no Python object per value or per entity), and they are written in
batches that Redis receives as one buffer of commands (writes.py). DuckDB computes
the next hash buckets (of the view or of the next views) in a thread while this one is encoded and
a writer thread writes the one before; values are written in key order (SQLite inserts into its
B-tree in order).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from feature_store.identifiers import quote
from feature_store.offline.engine import ProgressCallback
from feature_store.offline.entity_input import fetch_arrow
from feature_store.offline.materialize import table_columns
from feature_store.offline.sql import ViewQuery, events_sql
from feature_store.online.compute import CHANGED, PARTS, STAGED, ViewCompute
from feature_store.online.encode import encode_values
from feature_store.online.stores import OnlineStore
from feature_store.online.writes import Batch

BATCH = 5_000  # entities per pipelined write
ENTITIES_PER_CHUNK = 200_000  # entities computed at once (a bucket), at most
TILES_PER_CHUNK = 2_500_000  # tiles computed at once, at most (estimated from above): a view's tiles per entity vary
BUCKETS_AHEAD = 2  # buckets computed ahead of the one being encoded: at most 4 held in memory


@dataclass(frozen=True)
class ViewTask:
    """One view's online materialization: its values for entities with rows available in [since, end)
    (all when since is None), written under ``prefix`` into ``store``."""

    view: ViewQuery
    store: OnlineStore
    prefix: bytes
    end: int
    since: int | None


@dataclass(frozen=True)
class _Bucket:
    task: int  # index of the view's task
    tables: list[pa.Table]
    counter: _Progress
    last: bool  # the view's last bucket


def materialize_views(con: duckdb.DuckDBPyConnection, tasks: Sequence[ViewTask],
                      progress: ProgressCallback | None) -> Iterator[tuple[int, int, int]]:
    """Write the views' online values, one view after another; yield (task index, entities, tiles) as each
    view's writes have all landed.

    Entities are processed in hash buckets of at most about ENTITIES_PER_CHUNK entities and TILES_PER_CHUNK
    tiles, so memory stays bounded. One
    pipeline for all views (query, encode, write), each stage in its own thread: on two cores that keeps
    both busy, where views side by side fight over them. A rebuild
    (``since`` None) expects the caller to have deleted the view's keys (OnlineService.materialize deletes
    those of every definition of the view): deleting them again here would scan the store once more.
    """
    steps = _steps(con, tasks, progress)
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
            batch, tiles = encode_values(bucket.tables, task.prefix, task.view, task.end)
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


def _steps(con: duckdb.DuckDBPyConnection, tasks: Sequence[ViewTask],
           progress: ProgressCallback | None) -> Iterator[_Bucket]:
    """Every view's buckets in order, computed by DuckDB (on the thread that advances this iterator)."""
    for index, task in enumerate(tasks):
        entities = _entities(con, task)
        changed = task.since is not None
        counter = _Progress(f"{task.view.name} online", entities, progress)
        compute = ViewCompute.of(task.view, task.end, lambda table: table_columns(con, table))
        buckets = min(PARTS, max(1, math.ceil(entities / ENTITIES_PER_CHUNK)))
        if task.view.is_aggregation:
            con.execute(compute.stage_sql(changed))
            tiles = con.execute(compute.tiles_sql(changed)).fetchall()[0][0] or 0
            buckets = min(PARTS, max(buckets, math.ceil(tiles / TILES_PER_CHUNK)))
        for bucket in range(buckets):
            tables = _fetch(con, compute.queries(bucket, buckets, changed))
            yield _Bucket(index, tables, counter, bucket == buckets - 1)
        # frees its memory before the next view's (after an error, closing the cursor drops it)
        con.execute(f"DROP TABLE IF EXISTS {STAGED}")


def _entities(con: duckdb.DuckDBPyConnection, task: ViewTask) -> int:
    """How many entities the view's values are computed for."""
    view = task.view
    if task.since is None:
        # HyperLogLog (about 2% off) instead of an exact DISTINCT, 4-5x faster: the count only sizes the buckets
        # and the progress bar, whose last report gives the exact count written.
        row = con.execute(f"SELECT approx_count_distinct({_key_value(view)}) FROM ({events_sql(view, [])})").fetchall()
    else:
        _changed_keys(con, view, task.since, task.end)
        row = con.execute(f"SELECT count(*) FROM {CHANGED}").fetchall()
    return int(row[0][0]) if row else 0


def _key_value(view: ViewQuery) -> str:
    """One value per entity key, for counting distinct keys: the key itself, or a struct of a compound key."""
    if len(view.keys) == 1:
        return quote(view.keys[0])
    return "{" + ", ".join(f"'k{i}': {quote(k)}" for i, k in enumerate(view.keys)) + "}"


def _fetch(con: duckdb.DuckDBPyConnection, queries: list[str]) -> list[pa.Table]:
    return [fetch_arrow(con.sql(query)) for query in queries]


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


def _changed_keys(con: duckdb.DuckDBPyConnection, view: ViewQuery, since: int, end: int) -> None:
    keys = ", ".join(quote(k) for k in view.keys)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {CHANGED} AS SELECT DISTINCT {keys} FROM ({events_sql(view, [])}) "
        f"WHERE greatest(__ts, __cr) >= {since} AND greatest(__ts, __cr) < {end}"
    )


def _write(store: OnlineStore, batch: Batch, progress: _Progress) -> None:
    for start in range(0, len(batch), BATCH):
        part = batch.slice(start, min(start + BATCH, len(batch)))
        store.write(part)
        progress.add(len(part))
