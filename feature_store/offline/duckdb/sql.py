"""The compiled plan (feature_store/query.py) as DuckDB SQL, in one place.

All times are BIGINT microseconds since the Unix epoch (UTC). DuckDB does the set work: it reads
sources into *events* (key, ``__ts``, ``__cr``, columns), groups on-time events into per-hop
*tiles* of partial aggregates, and joins the per-view results back onto the entity rows in
input order. The per-query interval arithmetic runs in the numpy kernel (feature_store/kernel).

A tile holds only *on-time* events: those available (created) before the tile ends, so every
tile that ends by ``floor_H(t)`` is fully visible at query time t. Events created after their
tile ended (*late* events) are never in a tile and are checked one by one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from feature_store import types
from feature_store.aggregations import FLOAT, INT, Partial
from feature_store.aggregations.partials import Compute
from feature_store.identifiers import quote
from feature_store.offline.duckdb.types import duckdb as duckdb_type
from feature_store.query import PUSHED_ROW, FeatureRequest, ViewQuery

ENTITY_TABLE = "__q"  # entity rows with __row_id and __t (epoch microseconds)
KEYS_TABLE = "__kd"


@dataclass(frozen=True)
class TileTable:
    """A materialized table that is complete below ``watermark`` (tile end, or availability time)."""

    table: str
    watermark: int  # epoch microseconds


@dataclass(frozen=True)
class Compiled:
    """A view's plan with what DuckDB adds: the relation its rows are read from, its usable materialized tables,
    and the availability cut-offs of a query."""

    plan: ViewQuery
    relation: str  # a FROM-clause expression
    materialized: Mapping[int, TileTable] = field(default_factory=dict)  # hop (us) -> table; 0 for snapshots
    available_before: int | None = None  # only rows with ts and created before this (data as it was then)
    pushed_before: int | None = None  # with available_before: pushed rows count up to this time instead

    @property
    def keys(self) -> tuple[str, ...]:
        return self.plan.keys

    @property
    def columns(self) -> list[str]:
        return self.plan.columns


def floor_sql(expr: str, hop: int) -> str:
    """Round down to a multiple of hop, correctly for negative (pre-1970) times too."""
    return f"(({expr}) - ((({expr}) % {hop}) + {hop}) % {hop})"


def keys_sql(view: Compiled | ViewQuery) -> str:
    return ", ".join(quote(k) for k in view.keys)


# --- events ---------------------------------------------------------------------------------


def _column_sql(view: Compiled, column: str) -> str:
    """Decimals and 128-bit integers are read as DOUBLE so every numeric aggregate has one float type; NaN is read
    as null (the missing value of pandas, and of pushes: docs/semantics.md), so one NaN never poisons a window."""
    kind = view.plan.source.type_of(column)
    if types.read_as_float(kind):
        return f"CAST({quote(column)} AS DOUBLE) AS {quote(column)}"
    if types.is_float(kind):
        return f"nullif({quote(column)}, 'NaN'::{duckdb_type(kind)}) AS {quote(column)}"
    return quote(column)


def epoch_sql(column: str, kind: str) -> str:
    """Microseconds since the epoch, UTC. Naive timestamps are UTC; a TIMESTAMPTZ is an instant.

    ``epoch_us`` reads both directly; casting a TIMESTAMPTZ to TIMESTAMP first would go through
    time-zone rules and cost ten times as much.
    """
    if kind == "int64":  # only the push sources' availability column: already epoch us (sources are checked)
        return quote(column)
    if kind == "date":
        return f"epoch_us({quote(column)})"
    # a no-op for microsecond timestamps (DuckDB drops a cast to the same type); nanoseconds, milliseconds, ...
    return f"epoch_us(CAST({quote(column)} AS {'TIMESTAMPTZ' if kind == 'timestamp_tz' else 'TIMESTAMP'}))"


def events_sql(view: Compiled, columns: Sequence[str] | None = None) -> str:
    """Events with usable key and timestamps; created defaults to ts when the source has none."""
    columns = view.columns if columns is None else columns
    plan = view.plan
    ts = epoch_sql(plan.timestamp_field, plan.source.type_of(plan.timestamp_field))
    created_field = plan.created_field
    created = epoch_sql(created_field, plan.source.type_of(created_field)) if created_field else ts
    cols = "".join(f", {_column_sql(view, c)}" for c in columns)
    where = " AND ".join(
        [f"{quote(k)} IS NOT NULL" for k in plan.keys]
        + [f"{quote(plan.timestamp_field)} IS NOT NULL"]
        + ([f"{quote(created_field)} IS NOT NULL"] if created_field else [])
        + ([_available_sql(view, ts, created)] if view.available_before is not None else [])
    )
    return f"SELECT {keys_sql(view)}, {ts} AS __ts, {created} AS __cr{cols} FROM {view.relation} WHERE {where}"


def _available_sql(view: Compiled, ts: str, created: str) -> str:
    before = f"{ts} < {view.available_before} AND {created} < {view.available_before}"
    if view.pushed_before is None:
        return before
    # What an online value holds between materializations: batch rows up to the last one, every push since.
    return f"(({before}) OR ({PUSHED_ROW} AND {ts} < {view.pushed_before} AND {created} < {view.pushed_before}))"


def key_dictionary_sql(view: Compiled) -> str:
    """Dense integer ids (``__kid``) for the keys that occur in the source, with their row counts (``__n``)."""
    keys = keys_sql(view)
    rows = events_sql(view, []) if view.plan.is_aggregation else snapshot_rows_sql(view)
    return (
        f"SELECT {keys}, (row_number() OVER () - 1)::BIGINT AS __kid, __n "
        f"FROM (SELECT {keys}, count(*) AS __n FROM ({rows}) GROUP BY ALL)"
    )


def _kid_range(alias: str, kids: tuple[int, int] | None) -> str:
    return "" if kids is None else f" WHERE {alias}.__kid >= {int(kids[0])} AND {alias}.__kid < {int(kids[1])}"


def queries_sql(view: Compiled) -> str:
    """Distinct (key, t) of the entity rows whose key has events; other keys get empty values."""
    keys = keys_sql(view)
    not_null = " AND ".join(f"{quote(k)} IS NOT NULL" for k in view.keys)
    return (
        f"SELECT Q.*, K.__kid FROM (SELECT DISTINCT {keys}, __t FROM {ENTITY_TABLE} WHERE {not_null}) Q "
        f"JOIN {KEYS_TABLE} K USING ({keys}) ORDER BY K.__kid, Q.__t"  # sorted: ranges then only move forward
    )


def key_counts_sql() -> str:
    return f"SELECT __kid, __n FROM {KEYS_TABLE} ORDER BY __kid"


def keyed_events_sql(view: Compiled, kids: tuple[int, int] | None = None) -> str:
    """Events with key ids in [kids), sorted by (key, ts, created), hence by (key, tile) for every hop."""
    keys = keys_sql(view)
    rows = events_sql(view) if view.plan.is_aggregation else snapshot_rows_sql(view)
    return (
        f"SELECT K.__kid, E.* EXCLUDE ({keys}) FROM ({rows}) E JOIN {KEYS_TABLE} K USING ({keys})"
        f"{_kid_range('K', kids)} ORDER BY K.__kid, E.__ts, E.__cr"
    )


# --- partials -------------------------------------------------------------------------------

_LATEST = "max({{'t': __ts, 'c': __cr, 'v': {c}}}) FILTER (WHERE {c} IS NOT NULL)"


def compute_sql(compute: Compute) -> str:
    """An engine-neutral aggregate over a tile's events (aggregations/partials.py) in DuckDB."""
    c = quote(compute.column) if compute.column else ""
    op = compute.op
    if op == "max_ts":
        return "max(__ts)"
    if op == "count":
        return f"count({c})" if c else "count(*)"
    if op in ("sum", "min", "max", "avg"):
        return f"{op}({c})"
    if op == "m2":
        return f"var_pop({c}) * count({c})"
    if op == "latest":
        # The latest non-null value, ties on (ts, created) to the greatest value, with its ts and created: one
        # aggregate for the three (DuckDB computes an aggregate repeated in a SELECT once; struct comparisons
        # are most of the cost of a tile)
        return f"({_LATEST.format(c=c)}).{compute.part}"
    if op == "distinct":
        # Deduplicating the tile's list once costs a third less than list(DISTINCT) (a hash set per group);
        # still NULL when the tile has no non-null value
        return f"array_distinct(list({c}) FILTER (WHERE {c} IS NOT NULL))"
    if op == "top_latest":  # the k latest (ts, created, value), one of the three per field, latest first
        return (f"[__fs_x.{compute.part} for __fs_x in max({{'t': __ts, 'c': __cr, 'v': {c}}}, "
                f"{int(compute.param or 1)}) FILTER (WHERE {c} IS NOT NULL)]")
    raise ValueError(f"DuckDB cannot compute {op!r} in SQL")  # kernel partials are computed in numpy


def field_sql(partial: Partial, k: int, storage: str) -> str:
    """Field ``k`` of the partial over a tile's events, cast to the type its storage keeps (a no-op but for
    narrower types)."""
    sql = compute_sql(partial.of.compute(partial)[k])
    return sql if storage not in (INT, FLOAT) else f"CAST({sql} AS {'BIGINT' if storage == INT else 'DOUBLE'})"


def partials_sql(partials: Sequence[Partial], input_types: Mapping[str, str | None]) -> dict[str, str]:
    """Each field of the partials -> its SQL over a tile's events (``input_types``: per field, its column's)."""
    out: dict[str, str] = {}
    for partial in partials:
        storages = partial.storage(input_types.get(partial.fields[0]))
        for k, name in enumerate(partial.fields):
            out[name] = field_sql(partial, k, storages[k])
    return out


def tiles_sql(view: Compiled, hop: int, partials: Mapping[str, str], since: int | None = None,
              until: int | None = None, events: str | None = None) -> str:
    """Tiles of on-time events, optionally only tiles starting in [since, until)."""
    aggs = "".join(f", {expr} AS {quote(name)}" for name, expr in partials.items())
    tile = floor_sql("__ts", hop)
    where = [f"__cr < {tile} + {hop}"]
    if since is not None:
        where.append(f"__ts >= {since}")
    if until is not None:
        where.append(f"__ts < {until}")
    source = events or f"({events_sql(view)})"
    return f"SELECT {keys_sql(view)}, {tile} AS __pos{aggs} FROM {source} WHERE {' AND '.join(where)} GROUP BY ALL"


def materialized_tiles_sql(view: Compiled, table: TileTable, hop: int, kids: tuple[int, int] | None = None) -> str:
    """Materialized tiles that end by the watermark, with key ids in [kids), in (key, tile) order."""
    keys = keys_sql(view)
    return (
        f"SELECT * FROM (SELECT K.__kid, T.* EXCLUDE ({keys}) FROM {quote(table.table)} T "
        f"JOIN {KEYS_TABLE} K USING ({keys}) WHERE T.__pos + {hop} <= {table.watermark}) M"
        f"{_kid_range('M', kids)} ORDER BY M.__kid, M.__pos"
    )


# --- snapshots ------------------------------------------------------------------------------


def snapshot_rows_sql(view: Compiled) -> str:
    """Snapshot rows: the materialized history below its watermark plus raw rows from there on."""
    raw = events_sql(view)
    table = view.materialized.get(0)
    if table is None:
        return raw
    cols = ", ".join(quote(c) for c in [*view.keys, "__ts", "__cr", *view.columns])
    return (
        f"SELECT {cols} FROM {quote(table.table)} WHERE greatest(__ts, __cr) < {table.watermark} "
        f"UNION ALL SELECT {cols} FROM ({raw}) WHERE greatest(__ts, __cr) >= {table.watermark}"
    )


def snapshot_history_sql(view: Compiled, columns: Sequence[str], since: int | None, until: int) -> str:
    """Deduplicated snapshot rows that became available in [since, until)."""
    cond = f"greatest(__ts, __cr) < {until}" + (f" AND greatest(__ts, __cr) >= {since}" if since is not None else "")
    return f"SELECT DISTINCT * FROM ({events_sql(view, columns)}) WHERE {cond}"


def final_sql(views: Sequence[Compiled], results: Sequence[str], passthrough: Sequence[str]) -> str:
    """Entity rows in input order with one column per feature, from the per-view result tables."""
    selects = [f"Q.{quote(c)}" for c in passthrough]
    joins = []
    for view, result in zip(views, results, strict=True):
        on = " AND ".join(f"Q.{quote(k)} = {result}.{quote(k)}" for k in view.keys)
        joins.append(f" LEFT JOIN {result} ON {on} AND Q.__t = {result}.__t")
        for request in view.plan.features:
            value = f"{result}.{quote(request.output)}"
            fill = _empty_value(request)
            value = value if fill is None else f"coalesce({value}, {fill})"
            selects.append(f"CAST({value} AS {duckdb_type(request.output_type)}) AS {quote(request.output)}")
    return f"SELECT {', '.join(selects)} FROM {ENTITY_TABLE} Q{''.join(joins)} ORDER BY Q.__row_id"


def _empty_value(request: FeatureRequest) -> str | None:
    """What a key without events gets: the function's empty value (0 for counts and sums), null otherwise."""
    if request.definition is None:
        return None
    empty = request.function.empty(request.output_type)
    if empty is None:
        return None
    if isinstance(empty, list):
        return f"CAST([] AS {duckdb_type(request.output_type)})"
    return f"CAST({empty!r} AS {duckdb_type(request.output_type)})"
