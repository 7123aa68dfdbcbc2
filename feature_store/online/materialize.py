"""Online materialization: compute per-entity values in DuckDB and write them in pipelined batches.

Each run recomputes, from all events available before ``end``, the value of every entity that
has new rows since the view's watermark, and overwrites it; the watermark moves only after the
writes. Running twice, or again after a crash halfway, writes the same values again: nothing is
ever added on top of a stored value, so nothing can be counted twice. A changed definition
(another data signature) starts the view over.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import duckdb
import msgpack
import pyarrow as pa

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


_PACK = msgpack.Packer(autoreset=True).pack


def encode_key(prefix: bytes, key: tuple[Any, ...]) -> bytes:
    return prefix + _PACK(list(key))


def materialize_view(con: duckdb.DuckDBPyConnection, store: OnlineStore, prefix: bytes, view: ViewQuery,
                     end: int, since: int | None, progress: ProgressCallback | None) -> tuple[int, int]:
    """Write the view's online values for entities with rows available in [since, end) (all when since is None).

    Entities are processed in hash buckets of about ENTITIES_PER_CHUNK, so memory stays bounded.
    """
    keys = ", ".join(quote(k) for k in view.keys)
    if since is None:
        store.delete_prefix(prefix)  # a rebuild leaves nothing behind
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
    entities = tiles = 0
    for bucket in range(buckets):
        parts = [changed] if changed else []
        if buckets > 1:
            parts.append(f"hash({keys}) % {buckets} = {bucket}")
        keys_filter = " AND ".join(parts) or None
        if view.is_aggregation:
            written, tiles_written = _write_aggregation(con, store, prefix, view, end, keys_filter, counter)
        else:
            written = tiles_written = _write_snapshot(con, store, prefix, view, end, keys_filter, counter)
        entities += written
        tiles += tiles_written
    counter.finish()
    return entities, tiles


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


def _rows(table: pa.Table, keys: tuple[str, ...]) -> Iterator[tuple[tuple[Any, ...], list[Any]]]:
    """(entity key, row values) per row, converting each column to Python once."""
    key_cols = [table.column(k).to_pylist() for k in keys]
    other = [table.column(n).to_pylist() for n in table.column_names if n not in keys]
    yield from zip(zip(*key_cols, strict=True), zip(*other, strict=True), strict=True)


def _write_aggregation(con: duckdb.DuckDBPyConnection, store: OnlineStore, prefix: bytes, view: ViewQuery,
                       end: int, keys_filter: str | None, progress: _Progress) -> tuple[int, int]:
    layout = Layout.of(view)
    values: dict[tuple[Any, ...], list[Any]] = {}
    expire: dict[tuple[Any, ...], int | None] = {}
    tiles = 0
    for g, group in enumerate(layout.groups):
        table = fetch_arrow(con.sql(tiles_sql(view, group, end, keys_filter)))
        tiles += table.num_rows
        for key, row in _rows(table, view.keys):
            value = values.setdefault(key, [end, *([None] * len(layout.groups))])
            if group.hop == 0:
                value[1 + g] = list(row)
                expire[key] = None
                continue
            if value[1 + g] is None:
                value[1 + g] = []
            value[1 + g].append(list(row))
            if key not in expire or expire[key] is not None:
                expire[key] = max(expire.get(key) or 0, _expiry(row[0] + group.hop + group.window, end))
    _write(store, prefix, values, expire, progress)
    return len(values), tiles


def _write_snapshot(con: duckdb.DuckDBPyConnection, store: OnlineStore, prefix: bytes, view: ViewQuery,
                    end: int, keys_filter: str | None, progress: _Progress) -> int:
    table = fetch_arrow(con.sql(snapshot_sql(view, end, keys_filter)))
    values: dict[tuple[Any, ...], list[Any]] = {}
    expire: dict[tuple[Any, ...], int | None] = {}
    for key, row in _rows(table, view.keys):
        values[key] = [_plain(v) for v in row]  # ts, created, columns...
        expire[key] = None if view.ttl is None else _expiry(row[0] + view.ttl, end)
    _write(store, prefix, values, expire, progress)
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
           expire: dict[tuple[Any, ...], int | None], progress: _Progress) -> None:
    items = list(values.items())
    for start in range(0, len(items), BATCH):
        batch = [
            (encode_key(prefix, key), msgpack.packb(value, default=_plain), expire.get(key))
            for key, value in items[start:start + BATCH]
        ]
        store.write(batch)
        progress.add(len(batch))
