"""Online materialization: compute per-entity values in DuckDB and write them in pipelined batches.

Each run recomputes, from all events available before ``end``, the value of every entity that
has new rows since the view's watermark, and overwrites it; the watermark moves only after the
writes. Running twice, or again after a crash halfway, writes the same values again: nothing is
ever added on top of a stored value, so nothing can be counted twice. A changed definition
(another data signature) starts the view over.

Speed: DuckDB computes each hop group's tiles sorted by entity (tiles_sql); encode.py packs the
values column by column (no Python object per value or per entity), and they are written in
batches that Redis receives as one buffer of commands (writes.py). DuckDB computes
the next hash bucket in a thread while this one is encoded and written; values are written in key
order (SQLite inserts into its B-tree in order).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import duckdb
import pyarrow as pa

from feature_store.identifiers import quote
from feature_store.offline.engine import ProgressCallback
from feature_store.offline.entity_input import fetch_arrow
from feature_store.offline.sql import ViewQuery, events_sql
from feature_store.online.encode import encode_values
from feature_store.online.layout import Layout, snapshot_sql, tiles_sql
from feature_store.online.stores import OnlineStore
from feature_store.online.writes import Batch

BATCH = 5_000  # entities per pipelined write
ENTITIES_PER_CHUNK = 200_000  # entities computed and held in memory at once
CHANGED = "__fs_changed_keys"


def materialize_view(con: duckdb.DuckDBPyConnection, store: OnlineStore, prefix: bytes, view: ViewQuery,
                     end: int, since: int | None, progress: ProgressCallback | None) -> tuple[int, int]:
    """Write the view's online values for entities with rows available in [since, end) (all when since is None).

    Entities are processed in hash buckets of about ENTITIES_PER_CHUNK, so memory stays bounded. A rebuild
    (``since`` None) expects the caller to have deleted the view's keys (OnlineService.materialize deletes
    those of every definition of the view): deleting them again here would scan the store once more.
    """
    keys = ", ".join(quote(k) for k in view.keys)
    if since is None:
        changed = None
        row = con.execute(
            f"SELECT count(*) FROM (SELECT DISTINCT {keys} FROM ({events_sql(view, [])}))").fetchall()
    else:
        _changed_keys(con, view, since, end)
        changed = f"({keys}) IN (SELECT * FROM {CHANGED})"
        row = con.execute(f"SELECT count(*) FROM {CHANGED}").fetchall()
    expected = int(row[0][0]) if row else 0
    buckets = max(1, math.ceil(expected / ENTITIES_PER_CHUNK))
    counter = _Progress(f"{view.name} online", expected, progress)
    filters = []
    for bucket in range(buckets):
        parts = [changed] if changed else []
        if buckets > 1:
            parts.append(f"hash({keys}) % {buckets} = {bucket}")
        filters.append(" AND ".join(parts) or None)
    entities = tiles = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fs-online-query") as pool:
        # DuckDB computes the next bucket (without the GIL) while this thread encodes and writes one
        ahead = pool.submit(_fetch, con, _queries(view, end, filters[0]))
        for bucket in range(buckets):
            tables = ahead.result()
            if bucket + 1 < buckets:
                ahead = pool.submit(_fetch, con, _queries(view, end, filters[bucket + 1]))
            batch, tiles_written = encode_values(tables, prefix, view, end)
            _write(store, batch, counter)
            entities += len(batch)
            tiles += tiles_written
    counter.finish()
    return entities, tiles


def _queries(view: ViewQuery, end: int, keys_filter: str | None) -> list[str]:
    """One query per hop group (aggregation views) or the latest rows (snapshot views)."""
    if view.is_aggregation:
        return [tiles_sql(view, group, end, keys_filter) for group in Layout.of(view).groups]
    return [snapshot_sql(view, end, keys_filter)]


def _fetch(con: duckdb.DuckDBPyConnection, queries: list[str]) -> list[pa.Table]:
    return [fetch_arrow(con.sql(query)) for query in queries]


class _Progress:
    """Entities written so far, reported as (what, done, total) to the caller's progress callback."""

    def __init__(self, what: str, total: int, callback: ProgressCallback | None) -> None:
        self.what, self.total, self.callback, self.done = what, total, callback, 0

    def add(self, count: int) -> None:
        self.done += count
        if self.callback:
            self.callback(self.what, min(self.done, self.total), self.total)

    def finish(self) -> None:
        if self.callback:
            self.callback(self.what, self.total, self.total)


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
