"""Online values of many entities at once, from the tiles or latest rows DuckDB computed (layout.py).

An aggregation view's groups come as one table each: bounded groups one row per (entity, tile) in
(entity, position) order, the cumulative group one row per entity. The numeric partials of all tiles
become one matrix of words, of which an entity's group value takes its rows as they lie, beside the
spans of its tiles in every packed object column (tiles.py, packing.py); entities are then matched
across the groups by their packed keys, so each value is ``[end, group values...]`` with nil for a
group in which the entity has nothing. No Python object is made per entity, let alone per tile.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.aggregations import FLOAT
from feature_store.online.stores.writes import Batch
from feature_store.online.tiles.format import Shape
from feature_store.online.tiles.packing import (
    NIL,
    array_header,
    array_headers,
    bin_headers,
    from_buffers,
    join,
    lit,
    pack_elements,
    pack_keys,
    spans,
)
from feature_store.query import Group, ViewQuery

EXPIRY_GRACE_MS = 3_600_000
UNFOLDED = -1  # the folded version of a value materialization wrote: no pushed delta folded into it
_PACK = msgpack.Packer(autoreset=True).pack  # ints and strings only: no callback, safe across threads
_ONE_ELEMENT = b"\x91"  # msgpack's header of an array of one element


def pack_key(key: tuple[Any, ...]) -> bytes:
    """An entity key as it follows the view's prefix in a store key (packing.pack_keys, one at a time)."""
    return _PACK(list(key))


def pack_key_columns(columns: Sequence[Sequence[Any]]) -> list[bytes]:
    """pack_key of every row of the key columns; one column (the common case) without a tuple per row."""
    if len(columns) == 1:
        return [_ONE_ELEMENT + _PACK(value) for value in columns[0]]
    return [pack_key(key) for key in zip(*columns, strict=True)]


def encode_key(prefix: bytes, key: tuple[Any, ...]) -> bytes:
    return prefix + pack_key(key)


def plain(value: Any) -> Any:
    """msgpack-able: timestamps and dates as ISO strings, decimals as floats."""
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return float(value)


def expiry(unreachable_at: int, end: int) -> int:
    """Wall-clock expiry (epoch ms) of a value no read can use from ``unreachable_at`` (data time, us) on.

    The remaining lifetime is measured from the materialization's end and applied from now, so a
    backfill materialized for a past ``end`` still serves reads replayed at that time; a grace period
    keeps values for reads a little after that (reads enforce windows and ttl themselves).
    """
    return int(time.time() * 1000) + max(0, (unreachable_at - end) // 1000) + EXPIRY_GRACE_MS


def encode_values(tables: Sequence[pa.Table], prefix: bytes, view: ViewQuery, end: int) -> tuple[Batch, int]:
    """Entity keys (after ``prefix``), values and expiries of the entities in ``tables`` (one per group, or the
    snapshot rows), in order of their keys' bytes (SQLite inserts into its B-tree in order, far faster); and the
    number of tiles."""
    if view.is_aggregation:
        keys, values, unreachable = _aggregation(tables, view, end)
        tiles = sum(table.num_rows for table in tables)
    else:
        table = tables[0]
        keys = pack_keys([_array(table, k) for k in view.keys], b"", plain)
        names = ["__ts", "__cr", *view.columns]
        # [end, ts, created, columns...]: the end tells a value this run wrote from an older one (rebuilds sweep)
        values = join([lit(array_header(1 + len(names)) + _PACK(end)),
                       *(pack_elements(_array(table, n), plain) for n in names)])
        unreachable = None if view.ttl is None else _numpy(_array(table, "__ts")) + view.ttl
        tiles = table.num_rows
        order = pc.sort_indices(keys)
        keys, values = keys.take(order), values.take(order)
        if unreachable is not None:
            unreachable = unreachable[order.to_numpy()]
    expire = None if unreachable is None else expiry(end, end) + np.maximum(0, (unreachable - end) // 1000)
    return Batch(keys, values, None if expire is None else pa.array(expire), prefix=prefix), tiles


def _aggregation(tables: Sequence[pa.Table], view: ViewQuery,
                 end: int) -> tuple[pa.Array, pa.Array, np.ndarray | None]:
    groups = view.groups
    parts = [_group(table, group, view) for group, table in zip(groups, tables, strict=True)]
    every = pc.unique(pa.concat_arrays([keys for keys, _, _ in parts]))
    every = every.take(pc.sort_indices(every))
    # [end, folded, group values...]: folded -1, no pushed delta folded in (online/push/merge.py)
    pieces: list[pa.Array | pa.Scalar] = [lit(array_header(2 + len(groups)) + _PACK(end) + _PACK(UNFOLDED))]
    unreachable: pa.Array | None = None
    for keys, group_pieces, reach in parts:
        if len(keys) == len(every) and keys.equals(every):  # the group has every entity, in the same order
            pieces += group_pieces  # joined once with the others: every value's bytes are copied once
            taken = None if reach is None else pa.array(reach)
        else:
            rows = pc.index_in(every, value_set=keys)  # per entity: its row in the group, null when it has none
            pieces.append(join(group_pieces).take(rows).fill_null(lit(NIL)))
            taken = None if reach is None else pa.array(reach).take(rows)
        if taken is not None:
            unreachable = taken if unreachable is None else pc.max_element_wise(unreachable, taken, skip_nulls=True)
    # A cumulative row never leaves its window: such values never expire.
    never = unreachable is None or any(group.hop == 0 for group in groups)
    return every, join(pieces), None if never else _numpy(unreachable)


def _group(table: pa.Table, group: Group,
           view: ViewQuery) -> tuple[pa.Array, list[pa.Array | pa.Scalar], np.ndarray | None]:
    """The group's entities: packed keys, the pieces whose join is their group values (tiles.py), and
    (bounded groups) the data time from which no window reaches their tiles."""
    key_columns = [_array(table, k) for k in view.keys]
    if group.hop == 0:  # one row per entity: its cumulative tile
        starts = np.arange(table.num_rows + 1, dtype=np.int64)
        positions = np.zeros(table.num_rows, dtype=np.int64)
    else:
        starts = _entity_starts(key_columns, table.num_rows)
        positions = _numpy(_array(table, "__pos"))
    keys = pack_keys([column.take(pa.array(starts[:-1])) for column in key_columns], b"", plain)
    shape = Shape.of(group)
    words = _words(table, group, shape, positions)
    row_bytes = 8 * shape.width
    pieces: list[pa.Array | pa.Scalar] = [
        lit(array_header(1 + len(shape.objects))),
        bin_headers(np.diff(starts) * row_bytes),
        from_buffers(words.view(np.uint8).reshape(-1), starts * row_bytes),  # an entity's rows, as they lie
    ]
    if shape.objects:
        headers = array_headers(np.diff(starts))
        for i in shape.objects:  # the entity's tiles are rows [starts[e], starts[e + 1]) of every column
            pieces += [headers, spans(pack_elements(_array(table, group.fields[i]), plain), starts)]
    if group.hop == 0:
        return keys, pieces, None
    reach = positions[starts[1:] - 1] + group.hop + group.window if len(starts) > 1 else np.zeros(0, np.int64)
    return keys, pieces, reach


def _words(table: pa.Table, group: Group, shape: Shape, positions: np.ndarray) -> np.ndarray:
    """The tiles as rows of little-endian words: position, numeric partials, validity (tiles.py)."""
    rows = table.num_rows
    first_validity = 1 + len(shape.numeric)
    validity = np.zeros((shape.width - first_validity, rows), dtype=np.uint64)
    always = [0] * len(validity)  # per validity word: the bits of partials that are never null
    columns = [positions.astype("<i8", copy=False)]
    for i in shape.numeric:
        column = _array(table, group.fields[i])
        kind = pa.float64() if group.storages[i] == FLOAT else pa.int64()
        if column.type != kind:  # compute.py casts them already
            column = pc.cast(column, kind)
        word, bit = shape.validity(i)
        if column.null_count:  # copies: to_numpy of a column without nulls does not
            columns.append(column.fill_null(0).to_numpy(zero_copy_only=False).view(np.int64))
            valid = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=np.uint64)
            validity[word - first_validity] |= valid << bit
        else:
            columns.append(column.to_numpy(zero_copy_only=False).view(np.int64))
            always[word - first_validity] |= 1 << int(bit)
    for w, bits in enumerate(always):
        validity[w] |= np.uint64(bits)
    # One pass that lays the columns side by side (writing them one by one into a row-major matrix was 4x slower)
    return np.stack([*columns, *validity.view(np.int64)], axis=1).astype("<i8", copy=False)


def _entity_starts(key_columns: Sequence[pa.Array], rows: int) -> np.ndarray:
    """Row offsets where each entity's rows start (rows sorted by key), then the row count."""
    starts = np.zeros(rows, dtype=bool)
    if rows:
        starts[0] = True
        for column in key_columns:
            starts[1:] |= np.asarray(pc.not_equal(column.slice(1), column.slice(0, rows - 1)).to_numpy(
                zero_copy_only=False), dtype=bool)
    return np.append(np.flatnonzero(starts), rows).astype(np.int64)


def _numpy(column: pa.Array) -> np.ndarray:
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.int64)


def _array(table: pa.Table, name: str) -> pa.Array:
    column = table.column(name)
    if column.num_chunks == 1:
        return column.chunk(0)
    return pa.concat_arrays(column.chunks) if column.num_chunks else pa.array([], column.type)
