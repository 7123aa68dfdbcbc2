"""SQL compilation of point-in-time feature retrieval, in one place.

All times are BIGINT microseconds since the Unix epoch (UTC). For an aggregation with window W
and hop H, a query row (k, t) aggregates events with ``floor_H(t - W) <= ts < t`` and
``created < t``. The compiled query never joins query rows with all events of a key:

* **tiles**: events are grouped per (key, hop-aligned tile) into partial aggregates. Only
  *on-time* events go into a tile: those available (created) before the tile ends. For a query
  at t, every tile that ends by ``floor_H(t)`` holds only events visible at t.
* **frames**: tiles and query rows are put in one stream per key, ordered by time, and each
  feature is a window aggregate over the tiles in ``[floor_H(t - W), floor_H(t))`` (a RANGE
  frame with per-row bounds, evaluated with DuckDB's segment trees).
* **raw rest**: the events of the current, partial tile ``[floor_H(t), t)`` (an equi-join on
  the tile) and the few *late* events (created after their tile ended) are joined directly,
  each checked against ``created < t``.
* partial results are combined per feature (sums add, min/max compare, last by (ts, created),
  standard deviations by Chan's parallel formula).

Snapshot views use one ordered stream too: the latest row by (ts, created) among rows
available (``max(ts, created)``) before t, then the ttl check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from feature_store.aggregations import (
    Aggregation,
    Count,
    CountDistinct,
    Last,
    Max,
    Mean,
    Min,
    StdDev,
    Sum,
)
from feature_store.definitions import Field
from feature_store.identifiers import quote

ENTITY_TABLE = "__q"  # entity rows with __row_id and __t (epoch microseconds)


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
    """A materialized tile table that is complete for tiles ending at or before ``watermark``."""

    table: str
    watermark: int  # epoch microseconds, a multiple of the hop


@dataclass(frozen=True)
class ViewQuery:
    name: str
    keys: tuple[str, ...]
    source_sql: str
    timestamp_field: str
    created_field: str | None
    features: tuple[FeatureRequest, ...]
    is_aggregation: bool
    view_hop: int | None = None  # microseconds
    ttl: int | None = None  # microseconds, snapshot views
    materialized: Mapping[int, TileTable] = field(default_factory=dict)  # hop (us) -> table; 0 for snapshots


def floor_sql(expr: str, hop: int) -> str:
    """Round down to a multiple of hop, correctly for negative (pre-1970) times too."""
    return f"(({expr}) - ((({expr}) % {hop}) + {hop}) % {hop})"


# --- events ---------------------------------------------------------------------------------


def events_sql(view: ViewQuery, columns: Sequence[str]) -> str:
    """Events with usable key and timestamps; created defaults to ts when the source has none."""
    ts = f"epoch_us(CAST({quote(view.timestamp_field)} AS TIMESTAMP))"
    created = (
        f"epoch_us(CAST({quote(view.created_field)} AS TIMESTAMP))" if view.created_field else ts
    )
    keys = ", ".join(quote(k) for k in view.keys)
    cols = "".join(f", {quote(c)}" for c in columns)
    where = " AND ".join(
        [f"{quote(k)} IS NOT NULL" for k in view.keys]
        + [f"{quote(view.timestamp_field)} IS NOT NULL"]
        + ([f"{quote(view.created_field)} IS NOT NULL"] if view.created_field else [])
    )
    return f"SELECT {keys}, {ts} AS __ts, {created} AS __cr{cols} FROM {view.source_sql} WHERE {where}"


def query_keys_sql(view: ViewQuery) -> str:
    keys = ", ".join(quote(k) for k in view.keys)
    not_null = " AND ".join(f"{quote(k)} IS NOT NULL" for k in view.keys)
    return f"SELECT DISTINCT {keys}, __t FROM {ENTITY_TABLE} WHERE {not_null}"


def _key_join(left: str, right: str, keys: Sequence[str]) -> str:
    return " AND ".join(f"{left}.{quote(k)} = {right}.{quote(k)}" for k in keys)


# --- tile partials --------------------------------------------------------------------------

_LAST_KEY = "{'t': __ts, 'c': __cr}"


def tile_partials(requests: Sequence[FeatureRequest]) -> dict[str, str]:
    """Partial aggregate columns of a tile -> the SQL aggregate over the tile's events."""
    out: dict[str, str] = {}
    for request in requests:
        feature = request.feature
        col = feature.column if isinstance(feature, Aggregation) else None
        c = quote(col) if col else ""
        if isinstance(feature, Count):
            out[f"n__{col}" if col else "n__"] = f"count({c})" if col else "count(*)"
        if isinstance(feature, Sum | Mean):
            out[f"sum__{col}"] = f"sum({c})"
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
            out[f"last__{col}"] = f"arg_max({c}, {_LAST_KEY})"
            out[f"lastk__{col}"] = f"max({_LAST_KEY}) FILTER (WHERE {c} IS NOT NULL)"
    return out


def tiles_sql(view: ViewQuery, hop: int, partials: Mapping[str, str], since: int | None = None,
              until: int | None = None, events: str = "ev") -> str:
    """Tiles of on-time events (available before their tile ends), optionally for tiles in [since, until)."""
    keys = ", ".join(quote(k) for k in view.keys)
    aggs = "".join(f", {expr} AS {quote(name)}" for name, expr in partials.items())
    tile = floor_sql("__ts", hop)
    where = [f"__cr < {tile} + {hop}"]
    if since is not None:
        where.append(f"__ts >= {since}")
    if until is not None:
        where.append(f"__ts < {until}")
    return (
        f"SELECT {keys}, {tile} AS __pos{aggs} FROM {events} WHERE {' AND '.join(where)} "
        f"GROUP BY ALL"
    )


# --- per-feature pieces: frame aggregates, raw aggregates, and how to combine them ------------


@dataclass
class _Parts:
    """SQL pieces for one hop group of one aggregation view."""

    frame: dict[str, str] = field(default_factory=dict)  # alias -> window expression
    raw: dict[str, str] = field(default_factory=dict)  # alias -> aggregate over raw rows
    final: dict[str, str] = field(default_factory=dict)  # output -> expression over frame/raw aliases
    needs_shift: set[str] = field(default_factory=set)  # columns whose StdDev uses a per-key shift


def _frame_clause(hop: int, window: int | None) -> str:
    end = f"(__pos - {floor_sql('__pos', hop)} + 1) PRECEDING"
    if window is None:
        return f"RANGE BETWEEN UNBOUNDED PRECEDING AND {end}"
    start = f"(__pos - {floor_sql(f'__pos - {window}', hop)}) PRECEDING"
    return f"RANGE BETWEEN {start} AND {end}"


def _feature_parts(parts: _Parts, i: int, request: FeatureRequest, hop: int, keys: str) -> None:
    feature = request.feature
    window = request.window
    over = f"OVER (PARTITION BY {keys} ORDER BY __pos {_frame_clause(hop, window)})"
    in_window = "TRUE" if window is None else f"__ts >= {floor_sql(f'__t - {window}', hop)}"
    flt = f"FILTER (WHERE {in_window})"
    col = feature.column if isinstance(feature, Aggregation) else None
    c = quote(col) if col else ""
    p = f"p{i}"

    def frame(name: str, expr: str) -> str:
        parts.frame[f"{p}_{name}"] = f"{expr} {over}"
        return f"F.{p}_{name}"

    def raw(name: str, expr: str) -> str:
        parts.raw[f"{p}_{name}"] = expr
        return f"R.{p}_{name}"

    if isinstance(feature, Count):
        fn = frame("n", f"sum({quote(f'n__{col}' if col else 'n__')})")
        rn = raw("n", f"count({c if col else '*'}) {flt}")
        parts.final[request.output] = f"coalesce({fn}, 0) + coalesce({rn}, 0)"
    elif isinstance(feature, Sum):
        fs, rs = frame("s", f"sum({quote(f'sum__{col}')})"), raw("s", f"sum({c}) {flt}")
        parts.final[request.output] = f"CAST(coalesce({fs}, 0) + coalesce({rs}, 0) AS {request.output_type})"
    elif isinstance(feature, Mean):
        fs, rs = frame("s", f"sum({quote(f'sum__{col}')})"), raw("s", f"sum({c}) {flt}")
        fn, rn = frame("n", f"sum({quote(f'n__{col}')})"), raw("n", f"count({c}) {flt}")
        parts.final[request.output] = (
            f"CAST(coalesce({fs}, 0) + coalesce({rs}, 0) AS DOUBLE) "
            f"/ nullif(coalesce({fn}, 0) + coalesce({rn}, 0), 0)"
        )
    elif isinstance(feature, Min | Max):
        fn_name = "min" if isinstance(feature, Min) else "max"
        best = "least" if isinstance(feature, Min) else "greatest"
        fv = frame("v", f"{fn_name}({quote(f'{fn_name}__{col}')})")
        rv = raw("v", f"{fn_name}({c}) {flt}")
        parts.final[request.output] = f"{best}({fv}, {rv})"
    elif isinstance(feature, Last):
        fv = frame("v", f"arg_max({quote(f'last__{col}')}, {quote(f'lastk__{col}')})")
        fk = frame("k", f"max({quote(f'lastk__{col}')})")
        rv = raw("v", f"arg_max({c}, {_LAST_KEY}) {flt}")
        rk = raw("k", f"max({_LAST_KEY}) FILTER (WHERE {c} IS NOT NULL AND {in_window})")
        parts.final[request.output] = f"CASE WHEN {rk} IS NOT NULL AND ({fk} IS NULL OR {rk} > {fk}) THEN {rv} ELSE {fv} END"
    elif isinstance(feature, StdDev):
        parts.needs_shift.add(col or "")
        n, mean, m2, shift = (quote(f"{x}__{col}") for x in ("n", "mean", "m2", "shift"))
        fn = frame("n", f"sum({n})")
        fs1 = frame("s1", f"sum({n} * ({mean} - {shift}))")
        fs2 = frame("s2", f"sum({m2} + {n} * ({mean} - {shift}) * ({mean} - {shift}))")
        fsh = frame("shift", f"max({shift})")
        rn, rmean = raw("n", f"count({c}) {flt}"), raw("mean", f"avg({c}) {flt}")
        rm2 = raw("m2", f"var_pop({c}) {flt} * count({c}) {flt}")
        parts.final[request.output] = _stddev_combine(fn, fs1, fs2, fsh, rn, rmean, rm2)


def _stddev_combine(fn: str, fs1: str, fs2: str, fsh: str, rn: str, rmean: str, rm2: str) -> str:
    """Chan et al.'s parallel variance: frame stats (shifted by a per-key constant) + raw stats."""
    nf, nr = f"coalesce({fn}, 0)", f"coalesce({rn}, 0)"
    m2f = f"(CASE WHEN {nf} > 0 THEN {fs2} - {fs1} * {fs1} / {nf} ELSE 0 END)"
    meanf = f"({fsh} + {fs1} / nullif({nf}, 0))"
    cross = f"(CASE WHEN {nf} > 0 AND {nr} > 0 THEN ({rmean} - {meanf}) * ({rmean} - {meanf}) * {nf} * {nr} / ({nf} + {nr}) ELSE 0 END)"
    total = f"({m2f} + coalesce({rm2}, 0) + {cross})"
    return f"CASE WHEN {nf} + {nr} >= 2 THEN sqrt(greatest({total}, 0) / ({nf} + {nr} - 1)) END"


# --- whole views ----------------------------------------------------------------------------


@dataclass
class _Ctes:
    items: list[tuple[str, str]] = field(default_factory=list)

    def add(self, name: str, sql: str) -> str:
        self.items.append((name, sql))
        return name


def _aggregation_view(ctes: _Ctes, v: str, view: ViewQuery) -> tuple[str, dict[str, str]]:
    """CTEs for one aggregation view; returns the CTE with (keys, __t, outputs) and empty values."""
    columns = sorted({r.feature.column for r in view.features if isinstance(r.feature, Aggregation)
                      and r.feature.column})
    ev = ctes.add(f"{v}_ev", events_sql(view, columns))
    qk = ctes.add(f"{v}_qk", query_keys_sql(view))
    results: list[str] = []
    finals: dict[str, str] = {}
    by_hop: dict[int, list[FeatureRequest]] = {}
    distinct: list[FeatureRequest] = []
    for request in view.features:
        (distinct if isinstance(request.feature, CountDistinct) else by_hop.setdefault(
            request.hop, [])).append(request)
    groups = [(_hop_group(ctes, f"{v}_h{j}", view, ev, qk, hop, reqs), reqs)
              for j, (hop, reqs) in enumerate(sorted(by_hop.items()))]
    if distinct:
        groups.append((_count_distinct(ctes, f"{v}_cd", view, ev, qk, distinct), distinct))
    for name, reqs in groups:
        results.append(name)
        finals.update({r.output: f"{name}.{quote(r.output)}" for r in reqs})
    joins = "".join(f" LEFT JOIN {r} ON {_key_join('Q', r, view.keys)} AND Q.__t = {r}.__t" for r in results)
    cols = ", ".join(f"{expr} AS {quote(out)}" for out, expr in finals.items())
    out = ctes.add(f"{v}_out", f"SELECT {', '.join(f'Q.{quote(k)}' for k in view.keys)}, Q.__t, {cols} "
                                f"FROM {qk} Q{joins}")
    return out, {r.output: _empty_value(r) for r in view.features}


def _empty_value(request: FeatureRequest) -> str:
    """What an unknown key gets, so rows that never reached a view still read 0 for counts and sums."""
    if isinstance(request.feature, Count | CountDistinct):
        return "0"
    if isinstance(request.feature, Sum):
        return f"CAST(0 AS {request.output_type})"
    return "NULL"


def _hop_group(ctes: _Ctes, g: str, view: ViewQuery, ev: str, qk: str, hop: int,
               requests: Sequence[FeatureRequest]) -> str:
    keys = ", ".join(quote(k) for k in view.keys)
    partials = tile_partials(requests)
    evh = ctes.add(f"{g}_ev", f"SELECT *, {floor_sql('__ts', hop)} AS __tile FROM {ev}")
    ctes.add(f"{g}_tiles", _tiles_with_materialized(view, hop, partials, evh))
    parts = _Parts()
    for i, request in enumerate(requests):
        _feature_parts(parts, i, request, hop, keys)
    shifts = "".join(
        f", avg({quote(f'mean__{c}')}) OVER (PARTITION BY {keys}) AS {quote(f'shift__{c}')}"
        for c in sorted(parts.needs_shift)
    )
    stream = ctes.add(
        f"{g}_stream",
        f"SELECT *{shifts} FROM (SELECT *, NULL::BIGINT AS __t FROM {g}_tiles "
        f"UNION ALL BY NAME SELECT {keys}, __t AS __pos, __t FROM {qk})",
    )
    frame_cols = ", ".join(f"{expr} AS {alias}" for alias, expr in parts.frame.items())
    frame = ctes.add(
        f"{g}_frame",
        f"SELECT * FROM (SELECT {keys}, __t, {frame_cols} FROM {stream}) WHERE __t IS NOT NULL",
    )
    windows = [r.window for r in requests]
    lower = "" if None in windows else f" AND E.__ts >= {floor_sql(f'Q.__t - {max(w for w in windows if w)}', hop)}"
    key_eq = _key_join("Q", "E", view.keys)
    raw_rows = ctes.add(
        f"{g}_rawrows",
        f"SELECT Q.{', Q.'.join(quote(k) for k in view.keys)}, Q.__t, E.* EXCLUDE ({keys}) "
        f"FROM {qk} Q JOIN {evh} E ON {key_eq} AND E.__tile = {floor_sql('Q.__t', hop)} "
        f"WHERE E.__ts < Q.__t AND E.__cr < Q.__t "
        f"UNION ALL "
        f"SELECT Q.{', Q.'.join(quote(k) for k in view.keys)}, Q.__t, E.* EXCLUDE ({keys}) "
        f"FROM {qk} Q JOIN (SELECT * FROM {evh} WHERE __cr >= __tile + {hop}) E ON {key_eq} "
        f"WHERE E.__ts < {floor_sql('Q.__t', hop)} AND E.__cr < Q.__t{lower}",
    )
    raw_cols = ", ".join(f"{expr} AS {alias}" for alias, expr in parts.raw.items())
    raw = ctes.add(f"{g}_raw", f"SELECT {keys}, __t, {raw_cols} FROM {raw_rows} GROUP BY {keys}, __t")
    finals = ", ".join(f"{expr} AS {quote(out)}" for out, expr in parts.final.items())
    result = ctes.add(
        g,
        f"SELECT {', '.join(f'F.{quote(k)}' for k in view.keys)}, F.__t, {finals} FROM {frame} F "
        f"LEFT JOIN {raw} R ON {_key_join('F', 'R', view.keys)} AND F.__t = R.__t",
    )
    return result


def _tiles_with_materialized(view: ViewQuery, hop: int, partials: Mapping[str, str], evh: str) -> str:
    table = view.materialized.get(hop)
    if table is None:
        return tiles_sql(view, hop, partials, events=evh)
    keys = ", ".join(quote(k) for k in view.keys)
    cols = ", ".join(quote(name) for name in partials)
    fresh = tiles_sql(view, hop, partials, since=table.watermark, events=evh)
    return (
        f"SELECT {keys}, __pos, {cols} FROM {quote(table.table)} WHERE __pos + {hop} <= {table.watermark} "
        f"UNION ALL BY NAME {fresh}"
    )


def _count_distinct(ctes: _Ctes, g: str, view: ViewQuery, ev: str, qk: str,
                    requests: Sequence[FeatureRequest]) -> str:
    """Distinct counts do not combine from partial counts; they join the visible events directly."""
    aggs = []
    for request in requests:
        feature = request.feature
        window, hop = request.window, request.hop
        column = feature.column if isinstance(feature, Aggregation) else None
        cond = "TRUE" if window is None else f"E.__ts >= {floor_sql(f'Q.__t - {window}', hop)}"
        aggs.append(f"count(DISTINCT E.{quote(column or '')}) FILTER (WHERE {cond}) AS {quote(request.output)}")
    result = ctes.add(
        g,
        f"SELECT Q.{', Q.'.join(quote(k) for k in view.keys)}, Q.__t, {', '.join(aggs)} "
        f"FROM {qk} Q JOIN {ev} E ON {_key_join('Q', 'E', view.keys)} AND E.__ts < Q.__t AND E.__cr < Q.__t "
        f"GROUP BY ALL",
    )
    return result


def _snapshot_view(ctes: _Ctes, v: str, view: ViewQuery) -> tuple[str, dict[str, str]]:
    keys = ", ".join(quote(k) for k in view.keys)
    columns = [r.feature.name for r in view.features]
    ev = ctes.add(f"{v}_ev", _snapshot_rows(view, columns))
    qk = ctes.add(f"{v}_qk", query_keys_sql(view))
    struct = "{" + ", ".join(f"'{c}': {quote(c)}" for c in columns) + "}"
    over = f"OVER (PARTITION BY {keys} ORDER BY __pos RANGE BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)"
    stream = (
        f"SELECT {keys}, greatest(__ts, __cr) AS __pos, {struct} AS __row, {_LAST_KEY} AS __k, "
        f"NULL::BIGINT AS __t FROM {ev} UNION ALL BY NAME SELECT {keys}, __t AS __pos, __t FROM {qk}"
    )
    picked = ctes.add(
        f"{v}_pick",
        f"SELECT * FROM (SELECT {keys}, __t, arg_max(__row, __k) {over} AS __row, max(__k) {over} AS __k "
        f"FROM ({stream})) WHERE __t IS NOT NULL",
    )
    alive = "TRUE" if view.ttl is None else f"__k.t >= __t - {view.ttl}"
    cols = ", ".join(
        f"CASE WHEN {alive} THEN CAST(__row.{quote(r.feature.name)} AS {r.output_type}) END AS {quote(r.output)}"
        for r in view.features
    )
    out = ctes.add(f"{v}_out", f"SELECT {keys}, __t, {cols} FROM {picked}")
    return out, {r.output: "NULL" for r in view.features}


def _snapshot_rows(view: ViewQuery, columns: Sequence[str]) -> str:
    raw = events_sql(view, columns)
    table = view.materialized.get(0)
    if table is None:
        return raw
    cols = ", ".join(quote(c) for c in [*view.keys, "__ts", "__cr", *columns])
    return (
        f"SELECT {cols} FROM {quote(table.table)} WHERE greatest(__ts, __cr) < {table.watermark} "
        f"UNION ALL SELECT {cols} FROM ({raw}) WHERE greatest(__ts, __cr) >= {table.watermark}"
    )


def snapshot_history_sql(view: ViewQuery, columns: Sequence[str], since: int | None, until: int) -> str:
    """Deduplicated snapshot rows that became available in [since, until)."""
    cond = f"greatest(__ts, __cr) < {until}" + (f" AND greatest(__ts, __cr) >= {since}" if since is not None else "")
    return f"SELECT DISTINCT * FROM ({events_sql(view, columns)}) WHERE {cond}"


def compile_historical(views: Sequence[ViewQuery], passthrough: Sequence[str]) -> str:
    """The whole training-set query: entity rows in input order, one column per requested feature."""
    ctes = _Ctes()
    selects = [f"Q.{quote(c)}" for c in passthrough]
    joins = []
    for i, view in enumerate(views):
        v = f"v{i}"
        out, empty = (_aggregation_view if view.is_aggregation else _snapshot_view)(ctes, v, view)
        joins.append(f" LEFT JOIN {out} ON {_key_join('Q', out, view.keys)} AND Q.__t = {out}.__t")
        for request in view.features:
            value = f"{out}.{quote(request.output)}"
            fill = empty[request.output]
            selects.append(f"{value if fill == 'NULL' else f'coalesce({value}, {fill})'} AS {quote(request.output)}")
    with_clause = "WITH " + ",\n".join(f"{name} AS ({sql})" for name, sql in ctes.items) if ctes.items else ""
    return (
        f"{with_clause}\nSELECT {', '.join(selects)} FROM {ENTITY_TABLE} Q{''.join(joins)} ORDER BY Q.__row_id"
    )
