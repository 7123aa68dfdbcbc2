"""Online materialization: compute per-entity values in DuckDB and write them in pipelined batches.

Each run recomputes, from all events available before ``end``, the value of every entity that
has new rows since the view's watermark, and overwrites it; the watermark moves only after the
writes. Running twice, or again after a crash halfway, writes the same values again: nothing is
ever added on top of a stored value, so nothing can be counted twice. A changed definition
(another data signature) starts the view over.

Speed: DuckDB computes each hop group's tiles sorted by entity; each column is converted to Python
once, and an entity's value takes a slice of every column (layout.py), so Python handles a few
objects per entity, never a list per tile. DuckDB computes the next hash bucket in a thread while
this one is encoded and written; values are written in key order (SQLite inserts into its B-tree
in order).
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import duckdb
import msgpack
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.identifiers import quote
from feature_store.offline.engine import ProgressCallback
from feature_store.offline.entity_input import fetch_arrow
from feature_store.offline.sql import ViewQuery, events_sql
from feature_store.online.layout import Layout, snapshot_sql, tiles_sql
from feature_store.online.stores import OnlineStore

BATCH = 5_000  # entities per pipelined write
ENTITIES_PER_CHUNK = 200_000  # entities computed and held in memory at once
EXPIRY_GRACE_MS = 3_600_000
CHANGED = "__fs_changed_keys"


_PACK = msgpack.Packer(autoreset=True).pack  # keys hold ints and strings only: no callback, safe across threads


def pack_key(key: tuple[Any, ...]) -> bytes:
    """An entity key as it follows the view's prefix in a store key."""
    return _PACK(list(key))


def encode_key(prefix: bytes, key: tuple[Any, ...]) -> bytes:
    return prefix + pack_key(key)


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
            with _collector_paused():
                if view.is_aggregation:
                    written, tiles_written = _write_aggregation(tables, store, prefix, view, end, counter)
                else:
                    written = tiles_written = _write_snapshot(tables[0], store, prefix, view, end, counter)
            entities += written
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


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Without the cyclic garbage collector: a bucket allocates millions of lists (columns, slices) that hold
    no reference cycles, and the collector would scan them again and again for nothing, which took several
    times as long as the rest of the work."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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


def _entity_bounds(table: pa.Table, keys: tuple[str, ...]) -> list[int]:
    """Row offsets where each entity's rows start (rows sorted by key), then the row count."""
    n = table.num_rows
    starts = np.zeros(n, dtype=bool)
    if n:
        starts[0] = True
        for key in keys:
            column = table.column(key)
            starts[1:] |= pc.not_equal(column.slice(1), column.slice(0, n - 1)).to_numpy()
    return [*np.flatnonzero(starts).tolist(), n]


def _key_tuples(table: pa.Table, keys: tuple[str, ...], rows: list[int] | None) -> list[tuple[Any, ...]]:
    """The entity keys at the given rows (all rows when None), as tuples of Python values."""
    selected = table.select(list(keys))
    if rows is not None:
        selected = selected.take(pa.array(rows, type=pa.int64()))
    return list(zip(*(column.to_pylist() for column in selected.columns), strict=True))


def _write_aggregation(tables: list[pa.Table], store: OnlineStore, prefix: bytes, view: ViewQuery, end: int,
                       progress: _Progress) -> tuple[int, int]:
    """Per entity ``[end, group values...]`` (layout.py), built from whole columns converted to Python at once:
    the per-entity work is a slice per partial, never a list per tile."""
    layout = Layout.of(view)
    empty = [None] * len(layout.groups)
    values: dict[tuple[Any, ...], list[Any]] = {}
    unreachable: dict[tuple[Any, ...], int] = {}  # data time from which no window reaches any tile
    tiles = 0
    for g, (group, table) in enumerate(zip(layout.groups, tables, strict=True)):
        tiles += table.num_rows
        columns = [table.column(i).to_pylist() for i in range(len(view.keys), table.num_columns)]
        if group.hop == 0:  # one cumulative row per entity
            for key, row in zip(_key_tuples(table, view.keys, None), zip(*columns, strict=True), strict=True):
                value = values.get(key) or values.setdefault(key, [end, *empty])
                value[1 + g] = list(row)
            continue
        bounds = _entity_bounds(table, view.keys)
        positions, reach = columns[0], group.hop + group.window
        for key, a, b in zip(_key_tuples(table, view.keys, bounds[:-1]), bounds[:-1], bounds[1:], strict=True):
            value = values.get(key) or values.setdefault(key, [end, *empty])
            value[1 + g] = [column[a:b] for column in columns]
            unreachable[key] = max(unreachable.get(key, 0), positions[b - 1] + reach)
    # A cumulative row never leaves its window: such values never expire.
    expiring = not any(group.hop == 0 for group in layout.groups)
    _write(store, prefix, values, unreachable if expiring else None, end, progress)
    return len(values), tiles


def _write_snapshot(table: pa.Table, store: OnlineStore, prefix: bytes, view: ViewQuery, end: int,
                    progress: _Progress) -> int:
    columns = [table.column(i).to_pylist() for i in range(len(view.keys), table.num_columns)]
    values: dict[tuple[Any, ...], list[Any]] = {}
    unreachable: dict[tuple[Any, ...], int] = {}
    for key, row in zip(_key_tuples(table, view.keys, None), zip(*columns, strict=True), strict=True):
        values[key] = [_plain(v) for v in row]  # ts, created, columns...
        if view.ttl is not None:
            unreachable[key] = row[0] + view.ttl
    _write(store, prefix, values, None if view.ttl is None else unreachable, end, progress)
    return len(values)


def _expiry(unreachable_at: int, end: int) -> int:
    """Wall-clock expiry (epoch ms) of a value no read can use from ``unreachable_at`` (data time, us) on.

    The remaining lifetime is measured from the materialization's end and applied from now, so a
    backfill materialized for a past ``end`` still serves reads replayed at that time; a grace period
    keeps values for reads a little after that (reads enforce windows and ttl themselves).
    """
    return int(time.time() * 1000) + max(0, (unreachable_at - end) // 1000) + EXPIRY_GRACE_MS


def _plain(value: Any) -> Any:
    """msgpack-able: timestamps and dates as ISO strings, decimals as floats."""
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return float(value)


def _write(store: OnlineStore, prefix: bytes, values: dict[tuple[Any, ...], list[Any]],
           unreachable: dict[tuple[Any, ...], int] | None, end: int, progress: _Progress) -> None:
    """Encode and write in batches, in key order: SQLite inserts into its B-tree in order, far faster."""
    items = sorted((encode_key(prefix, key), key) for key in values)
    pack = msgpack.Packer(autoreset=True, default=_plain).pack  # reused: packb would build a Packer per value
    for start in range(0, len(items), BATCH):
        now_ms = int(time.time() * 1000)
        batch = [
            (encoded, pack(values[key]),
             None if unreachable is None else now_ms + max(0, (unreachable[key] - end) // 1000) + EXPIRY_GRACE_MS)
            for encoded, key in items[start:start + BATCH]
        ]
        store.write(batch)
        progress.add(len(batch))
