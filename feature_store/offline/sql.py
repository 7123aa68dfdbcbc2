"""SQL compilation for the offline engine, in one place.

All times are BIGINT microseconds since the Unix epoch (UTC). DuckDB does the set work: it reads
sources into *events* (key, ``__ts``, ``__cr``, columns), groups on-time events into per-hop
*tiles* of partial aggregates, and joins the per-view results back onto the entity rows in
input order. The per-query interval arithmetic runs in :mod:`feature_store.offline.evaluate`.

A tile holds only *on-time* events: those available (created) before the tile ends, so every
tile that ends by ``floor_H(t)`` is fully visible at query time t. Events created after their
tile ended (*late* events) are never in a tile and are checked one by one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from feature_store.aggregations import (
    INTEGER_TYPES,
    Aggregation,
    Count,
    CountDistinct,
    Last,
    Max,
    Mean,
    Min,
    StdDev,
    Sum,
    base_type,
)
from feature_store.definitions import Field
from feature_store.identifiers import quote

PUSHED_ROW = "__fs_pushed"  # TRUE for rows of a push source that came from its push log
ENTITY_TABLE = "__q"  # entity rows with __row_id and __t (epoch microseconds)
KEYS_TABLE = "__kd"


@dataclass(frozen=True)
class FeatureRequest:
    feature: Aggregation | Field
    output: str  # the output column name
    input_type: str | None  # DuckDB type of the aggregated column (None for Count of rows)
    output_type: str
    hop: int = 0  # microseconds, aggregations only
    window: int | None = None  # microseconds; None is unbounded


@dataclass(frozen=True)
class TileTable:
    """A materialized table that is complete below ``watermark`` (tile end, or availability time)."""

    table: str
    watermark: int  # epoch microseconds


@dataclass(frozen=True)
class ViewQuery:
    name: str
    keys: tuple[str, ...]
    source_sql: str
    timestamp_field: str
    created_field: str | None
    features: tuple[FeatureRequest, ...]
    is_aggregation: bool
    ttl: int | None = None  # microseconds, snapshot views
    column_types: Mapping[str, str] = field(default_factory=dict)
    materialized: Mapping[int, TileTable] = field(default_factory=dict)  # hop (us) -> table; 0 for snapshots
    available_before: int | None = None  # only rows with ts and created before this (data as it was then)
    pushed_before: int | None = None  # with available_before: pushed rows count up to this time instead
    field_order: tuple[str, ...] = ()  # a snapshot view's fields in declaration order: they break ties

    @property
    def columns(self) -> list[str]:
        """Source columns the requested features read."""
        names = [getattr(r.feature, "column", None) if self.is_aggregation else r.feature.name for r in self.features]
        return sorted({n for n in [*names, *self.field_order] if n})


def floor_sql(expr: str, hop: int) -> str:
    """Round down to a multiple of hop, correctly for negative (pre-1970) times too."""
    return f"(({expr}) - ((({expr}) % {hop}) + {hop}) % {hop})"


# --- events ---------------------------------------------------------------------------------


def _column_sql(view: ViewQuery, column: str) -> str:
    """Decimals are read as DOUBLE so every numeric aggregate has one float type; NaN is read as null (the
    missing value of pandas, and of pushes: docs/semantics.md), so one NaN never poisons a window."""
    kind = base_type(view.column_types.get(column, ""))
    if kind in ("DECIMAL", "HUGEINT"):
        return f"CAST({quote(column)} AS DOUBLE) AS {quote(column)}"
    if kind in ("DOUBLE", "FLOAT"):
        return f"nullif({quote(column)}, 'NaN'::{kind}) AS {quote(column)}"
    return quote(column)


def epoch_sql(column: str, duckdb_type: str) -> str:
    """Microseconds since the epoch, UTC. Naive timestamps are UTC; a TIMESTAMPTZ is an instant.

    ``epoch_us`` reads both directly; casting a TIMESTAMPTZ to TIMESTAMP first would go through
    time-zone rules and cost ten times as much.
    """
    kind = duckdb_type.upper()
    if kind == "BIGINT":  # only the push sources' availability column: already epoch us (sources are checked)
        return quote(column)
    if kind in ("TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ", "DATE"):
        return f"epoch_us({quote(column)})"
    if base_type(kind) == "TIMESTAMP WITH TIME ZONE":  # e.g. nanosecond instants: keep them instants
        return f"epoch_us(CAST({quote(column)} AS TIMESTAMPTZ))"
    return f"epoch_us(CAST({quote(column)} AS TIMESTAMP))"


def events_sql(view: ViewQuery, columns: Sequence[str] | None = None) -> str:
    """Events with usable key and timestamps; created defaults to ts when the source has none."""
    columns = view.columns if columns is None else columns
    ts = epoch_sql(view.timestamp_field, view.column_types.get(view.timestamp_field, ""))
    created = epoch_sql(view.created_field, view.column_types.get(view.created_field, "")) if view.created_field else ts
    keys = ", ".join(quote(k) for k in view.keys)
    cols = "".join(f", {_column_sql(view, c)}" for c in columns)
    where = " AND ".join(
        [f"{quote(k)} IS NOT NULL" for k in view.keys]
        + [f"{quote(view.timestamp_field)} IS NOT NULL"]
        + ([f"{quote(view.created_field)} IS NOT NULL"] if view.created_field else [])
        + ([_available_sql(view, ts, created)] if view.available_before is not None else [])
    )
    return f"SELECT {keys}, {ts} AS __ts, {created} AS __cr{cols} FROM {view.source_sql} WHERE {where}"


def _available_sql(view: ViewQuery, ts: str, created: str) -> str:
    before = f"{ts} < {view.available_before} AND {created} < {view.available_before}"
    if view.pushed_before is None:
        return before
    # What an online value holds between materializations: batch rows up to the last one, every push since.
    return f"(({before}) OR ({PUSHED_ROW} AND {ts} < {view.pushed_before} AND {created} < {view.pushed_before}))"


def key_dictionary_sql(view: ViewQuery) -> str:
    """Dense integer ids (``__kid``) for the keys that occur in the source, with their row counts (``__n``)."""
    keys = ", ".join(quote(k) for k in view.keys)
    rows = events_sql(view, []) if view.is_aggregation else snapshot_rows_sql(view)
    return (
        f"SELECT {keys}, (row_number() OVER () - 1)::BIGINT AS __kid, __n "
        f"FROM (SELECT {keys}, count(*) AS __n FROM ({rows}) GROUP BY ALL)"
    )


def _kid_range(alias: str, kids: tuple[int, int] | None) -> str:
    return "" if kids is None else f" WHERE {alias}.__kid >= {int(kids[0])} AND {alias}.__kid < {int(kids[1])}"


def _using(view: ViewQuery) -> str:
    return ", ".join(quote(k) for k in view.keys)


def queries_sql(view: ViewQuery) -> str:
    """Distinct (key, t) of the entity rows whose key has events; other keys get empty values."""
    keys = _using(view)
    not_null = " AND ".join(f"{quote(k)} IS NOT NULL" for k in view.keys)
    return (
        f"SELECT Q.*, K.__kid FROM (SELECT DISTINCT {keys}, __t FROM {ENTITY_TABLE} WHERE {not_null}) Q "
        f"JOIN {KEYS_TABLE} K USING ({keys}) ORDER BY K.__kid, Q.__t"  # sorted: ranges then only move forward
    )


def key_counts_sql() -> str:
    return f"SELECT __kid, __n FROM {KEYS_TABLE} ORDER BY __kid"


def keyed_events_sql(view: ViewQuery, kids: tuple[int, int] | None = None) -> str:
    """Events with key ids in [kids), sorted by (key, ts, created), hence by (key, tile) for every hop."""
    keys = _using(view)
    rows = events_sql(view) if view.is_aggregation else snapshot_rows_sql(view)
    return (
        f"SELECT K.__kid, E.* EXCLUDE ({keys}) FROM ({rows}) E JOIN {KEYS_TABLE} K USING ({keys})"
        f"{_kid_range('K', kids)} ORDER BY K.__kid, E.__ts, E.__cr"
    )


# --- tiles ----------------------------------------------------------------------------------

_LAST_KEY = "{'t': __ts, 'c': __cr}"


def tile_partials(requests: Sequence[FeatureRequest]) -> dict[str, str]:
    """Partial aggregate columns of a tile -> the SQL aggregate over the tile's on-time events."""
    out: dict[str, str] = {"maxts__": "max(__ts)"}  # training sets do not read it: online values are built on it
    for request in requests:
        feature = request.feature
        col = feature.column if isinstance(feature, Aggregation) else None
        c = quote(col) if col else ""
        is_int = base_type(request.input_type or "") in INTEGER_TYPES - {"HUGEINT"}
        if isinstance(feature, Count):
            out[f"n__{col or ''}"] = f"count({c})" if col else "count(*)"
        if isinstance(feature, Sum | Mean):
            out[f"sum__{col}"] = f"CAST(sum({c}) AS {'BIGINT' if is_int else 'DOUBLE'})"
        if isinstance(feature, Mean | StdDev):
            out[f"n__{col}"] = f"count({c})"
        if isinstance(feature, Min):
            out[f"min__{col}"] = f"min({c})"
        if isinstance(feature, Max):
            out[f"max__{col}"] = f"max({c})"
        if isinstance(feature, StdDev):
            out[f"mean__{col}"] = f"avg({c})"
            out[f"m2__{col}"] = f"var_pop({c}) * count({c})"
        if isinstance(feature, Last):
            out[f"last__{col}"] = f"arg_max({c}, {{'t': __ts, 'c': __cr, 'v': {c}}})"  # ties: greatest value
            out[f"lastk__{col}"] = f"max({_LAST_KEY}) FILTER (WHERE {c} IS NOT NULL)"
        if isinstance(feature, CountDistinct):
            out["n__"] = "count(*)"  # distinct counts read events; the tile only marks presence
    return out


def tiles_sql(view: ViewQuery, hop: int, partials: Mapping[str, str], since: int | None = None,
              until: int | None = None, events: str | None = None) -> str:
    """Tiles of on-time events, optionally only tiles starting in [since, until)."""
    keys = _using(view)
    aggs = "".join(f", {expr} AS {quote(name)}" for name, expr in partials.items())
    tile = floor_sql("__ts", hop)
    where = [f"__cr < {tile} + {hop}"]
    if since is not None:
        where.append(f"__ts >= {since}")
    if until is not None:
        where.append(f"__ts < {until}")
    source = events or f"({events_sql(view)})"
    return f"SELECT {keys}, {tile} AS __pos{aggs} FROM {source} WHERE {' AND '.join(where)} GROUP BY ALL"


def materialized_tiles_sql(view: ViewQuery, table: TileTable, hop: int, kids: tuple[int, int] | None = None) -> str:
    """Materialized tiles that end by the watermark, with key ids in [kids), in (key, tile) order."""
    keys = _using(view)
    return (
        f"SELECT * FROM (SELECT K.__kid, T.* EXCLUDE ({keys}) FROM {quote(table.table)} T "
        f"JOIN {KEYS_TABLE} K USING ({keys}) WHERE T.__pos + {hop} <= {table.watermark}) M"
        f"{_kid_range('M', kids)} ORDER BY M.__kid, M.__pos"
    )


# --- snapshots ------------------------------------------------------------------------------


def snapshot_rows_sql(view: ViewQuery) -> str:
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


def snapshot_history_sql(view: ViewQuery, columns: Sequence[str], since: int | None, until: int) -> str:
    """Deduplicated snapshot rows that became available in [since, until)."""
    cond = f"greatest(__ts, __cr) < {until}" + (f" AND greatest(__ts, __cr) >= {since}" if since is not None else "")
    return f"SELECT DISTINCT * FROM ({events_sql(view, columns)}) WHERE {cond}"


def final_sql(views: Sequence[ViewQuery], results: Sequence[str], passthrough: Sequence[str]) -> str:
    """Entity rows in input order with one column per feature, from the per-view result tables."""
    selects = [f"Q.{quote(c)}" for c in passthrough]
    joins = []
    for view, result in zip(views, results, strict=True):
        on = " AND ".join(f"Q.{quote(k)} = {result}.{quote(k)}" for k in view.keys)
        joins.append(f" LEFT JOIN {result} ON {on} AND Q.__t = {result}.__t")
        for request in view.features:
            value = f"{result}.{quote(request.output)}"
            fill = _empty_value(request)
            value = value if fill is None else f"coalesce({value}, {fill})"
            selects.append(f"CAST({value} AS {request.output_type}) AS {quote(request.output)}")
    return f"SELECT {', '.join(selects)} FROM {ENTITY_TABLE} Q{''.join(joins)} ORDER BY Q.__row_id"


def _empty_value(request: FeatureRequest) -> str | None:
    """What a key without events gets: 0 for counts and sums, null otherwise."""
    if isinstance(request.feature, Count | CountDistinct):
        return "0"
    if isinstance(request.feature, Sum):
        return f"CAST(0 AS {request.output_type})"
    return None
