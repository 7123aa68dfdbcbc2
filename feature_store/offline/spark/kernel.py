"""What each Spark partition runs: the numpy kernel (feature_store/kernel) over its keys' events and queries.

The engine unions a view's events and its distinct queries (keys, ``__t``), partitions them by key and sorts each
partition by key, so one key's rows are together. A partition's Arrow batches are gathered into chunks of about
CHUNK_ROWS rows (the session's ``spark.featurestore.kernel.chunkRows``), cut only between keys, so memory stays
bounded by the chunk size plus the largest key (a hot key is gathered whole). Each chunk is evaluated exactly as
DuckDB's engine evaluates a chunk of key ids (offline/duckdb/retrieval.py): dense key ids, events sorted by (key,
ts, created), queries by (key, t). Stored offline tiles (offline/spark/tiles.py) come in the same partition as rows
with ``__tile`` (their hop), ``__pos`` and their fields prefixed ``__f_``, and are handed to the kernel as DuckDB
hands its materialized tiles.

This module runs on executors: it imports numpy and pyarrow only, never pyspark.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.kernel.snapshot import evaluate_snapshot
from feature_store.kernel.window import evaluate_group
from feature_store.query import FeatureRequest, ViewQuery

CHUNK_ROWS = 1_000_000  # the default; the session's conf CHUNK_CONF sets it
CHUNK_CONF = "spark.featurestore.kernel.chunkRows"
QUERY = "__q"  # TRUE on query rows, FALSE on events and stored tiles
TILE = "__tile"  # on stored tile rows (offline/spark/tiles.py) their hop, null on events and queries
FIELD = "__f_"  # the prefix of a stored tile's fields beside the events' columns
Tiles = Mapping[int, tuple[int, tuple[str, ...]]]  # hop -> (watermark, fields) of the stored tiles in the rows


def evaluate_partition(batches: Iterator[pa.RecordBatch], plan: ViewQuery, schema: pa.Schema,
                       chunk_rows: int = CHUNK_ROWS, tiles: Tiles | None = None) -> Iterator[pa.RecordBatch]:
    """Chunks of about chunk_rows rows, cut where a key starts in the last batch gathered: a key longer than a
    chunk (a hot key) is gathered whole, and looking at one batch at a time keeps gathering it linear."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        previous = pending[-1] if pending else None  # never empty: the key its last row holds is known
        pending.append(batch)
        rows += batch.num_rows
        if rows < chunk_rows:
            continue
        start = _last_key_start(batch, previous, plan.keys)
        if start < 0 or rows - batch.num_rows + start == 0:  # no key starts here: keep gathering
            continue
        table = pa.Table.from_batches(pending)
        cut = rows - batch.num_rows + start
        yield from _evaluate(table.slice(0, cut), plan, schema, tiles or {})
        rest = table.slice(cut)
        pending, rows = [b for b in rest.to_batches() if b.num_rows], rest.num_rows
    if rows:
        yield from _evaluate(pa.Table.from_batches(pending), plan, schema, tiles or {})


def _np(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return array.to_numpy(zero_copy_only=False)


def _key_ids(table: pa.Table, keys: Sequence[str]) -> np.ndarray:
    """Dense ids of the keys of rows sorted by key: a new id wherever any key column changes."""
    changed = np.zeros(table.num_rows, dtype=bool)
    if table.num_rows:
        changed[0] = True
    for key in keys:
        values = _np(table.column(key))
        changed[1:] |= values[1:] != values[:-1]
    return np.cumsum(changed) - 1


def _last_key_start(batch: pa.RecordBatch, previous: pa.RecordBatch | None, keys: Sequence[str]) -> int:
    """Where in the batch the last key starting in it starts (its rows sorted by key), or -1 when its rows all
    continue the previous batch's last key."""
    rows = pa.Table.from_batches([batch])
    if previous is not None:
        rows = pa.concat_tables([pa.Table.from_batches([previous.slice(previous.num_rows - 1)]), rows])
    kid = _key_ids(rows, keys)
    return int(np.searchsorted(kid, kid[-1], "left")) - (rows.num_rows - batch.num_rows)


def _evaluate(table: pa.Table, plan: ViewQuery, schema: pa.Schema, tiles: Tiles) -> Iterator[pa.RecordBatch]:
    kid = _key_ids(table, plan.keys)
    is_query = _np(table.column(QUERY)).astype(bool)
    is_tile = _np(table.column(TILE).is_valid()) if tiles else np.zeros(table.num_rows, dtype=bool)
    is_event = ~is_query & ~is_tile
    events, ev_kid = table.filter(pa.array(is_event)), kid[is_event]
    queries, q_kid = table.filter(pa.array(is_query)), kid[is_query]
    # keys with neither events nor tiles get the empty value from the final join
    has_events = np.isin(q_kid, np.concatenate([ev_kid, kid[is_tile]]))
    queries, q_kid = queries.filter(pa.array(has_events)), q_kid[has_events]
    if queries.num_rows == 0:
        return
    q_t = _np(queries.column("__t")).astype(np.int64)
    order = np.lexsort((q_t, q_kid))
    q_kid, q_t, queries = q_kid[order], q_t[order], queries.take(pa.array(order))
    ev_ts, ev_cr = _np(events.column("__ts")).astype(np.int64), _np(events.column("__cr")).astype(np.int64)
    by_time = np.lexsort((ev_cr, ev_ts, ev_kid))
    columns = ["__ts", "__cr", *(c for c in plan.columns)]
    ordered = events.select(columns).take(pa.array(by_time))
    ordered = ordered.add_column(0, "__kid", pa.array(ev_kid[by_time], pa.int64()))
    stored = {hop: _stored(table, kid, is_tile, hop, watermark, fields)
              for hop, (watermark, fields) in tiles.items()}
    outputs = _outputs(plan, q_kid, q_t, ordered, stored)
    arrays = [queries.column(k).combine_chunks() for k in plan.keys]
    arrays.append(pa.array(q_t, pa.int64()))
    for request in plan.features:
        arrays.append(_as(outputs[request.output], schema.field(request.output).type))
    yield from pa.Table.from_arrays(arrays, schema=schema).to_batches()


def _stored(table: pa.Table, kid: np.ndarray, is_tile: np.ndarray, hop: int, watermark: int,
            fields: Sequence[str]) -> tuple[pa.Table, int] | None:
    """The chunk's stored tiles of one hop as the kernel reads them (``__kid``, ``__pos``, fields, in (key, tile)
    order), with their watermark; None when the chunk's keys have none (they had no on-time event below it)."""
    mine = is_tile & (_np(table.column(TILE).fill_null(0)) == hop)
    if not mine.any():
        return None
    rows = table.filter(pa.array(mine))
    pos = _np(rows.column("__pos")).astype(np.int64)
    order = np.lexsort((pos, kid[mine]))
    arrays = [pa.array(kid[mine][order], pa.int64()), pa.array(pos[order], pa.int64())]
    arrays += [rows.column(FIELD + name).take(pa.array(order)) for name in fields]
    return pa.table(arrays, names=["__kid", "__pos", *fields]), watermark


def _outputs(plan: ViewQuery, q_kid: np.ndarray, q_t: np.ndarray, events: pa.Table,
             stored: Mapping[int, tuple[pa.Table, int] | None]) -> dict[str, pa.Array]:
    if not plan.is_aggregation:
        return evaluate_snapshot(q_kid, q_t, events, plan.ttl, plan.features, plan.field_order)
    groups: dict[int, list[FeatureRequest]] = {}
    for request in plan.features:
        groups.setdefault(request.hop, []).append(request)
    outputs: dict[str, pa.Array] = {}
    for hop, requests in sorted(groups.items()):
        outputs.update(evaluate_group(q_kid, q_t, events, hop, requests, stored.get(hop)))
    return outputs


def _as(values: pa.Array | pa.ChunkedArray, kind: pa.DataType) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if values.type == kind:
        return values
    if pa.types.is_null(values.type):
        return pa.nulls(len(values), kind)
    return pc.cast(values, kind)
