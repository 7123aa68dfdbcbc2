"""The SQL that computes a view's online values, bucket by bucket, re-using the offline tile tables.

Per view, the events materialization needs are first copied once into a temporary table (``STAGED``),
each with its hash part (a bucket is a range of parts), so the bucket queries after it do not read and
filter the source again.
A hop group's tiles then come from one of two places:

- From the offline tile table of its hop (offline/materialize.py), when that table holds every partial
  of the group: the tiles that end by its watermark are read as they are, and only the events they
  do not hold are aggregated and merged in (late events, created after their tile ended, and events
  of tiles after the watermark). That is most of the work of an hourly view done once, not twice.
- From the raw events otherwise (distinct sets, means and M2s are not kept offline, and a table may
  not be materialized, or be of another definition): per (key, tile), every event available before
  ``end``.

Either way a tile holds exactly the events available before ``end`` (``__cr < end`` and ``__ts < end``),
and tables come in (key, position) order for bounded groups, one row per key for the cumulative one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from feature_store.identifiers import quote
from feature_store.offline.sql import TileTable, ViewQuery, events_sql, floor_sql
from feature_store.online.layout import FLOAT, INT, Group, Layout, floor, partial_sql

STAGED = "__fs_events"
CHANGED = "__fs_changed_keys"

Columns = Callable[[str], Mapping[str, str]]  # a table's columns and their types


@dataclass(frozen=True)
class Reuse:
    """Tiles of one group read from an offline table: those ending by ``complete`` (the table's watermark,
    or ``end`` rounded down to the hop when earlier), each column an expression over the table's row."""

    table: str
    hop: int
    complete: int
    columns: Mapping[str, str]  # partial -> SQL over the table's columns, cast as the partial is


@dataclass(frozen=True)
class GroupQuery:
    group: Group
    reach: int | None  # first tile position a window reaches; None for the cumulative group
    reuse: Reuse | None

    def staged_filter(self) -> str | None:
        """The staged events this group reads: those in reach, and of those only what the table lacks; None
        for every event."""
        parts = [] if self.reach is None else [f"__ts >= {self.reach}"]
        if self.reuse is not None:
            hop, complete = self.reuse.hop, self.reuse.complete
            parts.append(f"(__ts >= {complete} OR __cr >= {floor_sql('__ts', hop)} + {hop})")
        return " AND ".join(parts) or None


@dataclass(frozen=True)
class ViewCompute:
    view: ViewQuery
    end: int
    groups: tuple[GroupQuery, ...]  # empty for snapshot views

    @classmethod
    def of(cls, view: ViewQuery, end: int, columns: Columns) -> ViewCompute:
        if not view.is_aggregation:
            return cls(view, end, ())
        queries = []
        for group in Layout.of(view).groups:
            reach = None if group.hop == 0 else floor(end - group.window, group.hop)
            queries.append(GroupQuery(group, reach, _reuse(view, group, end, reach, columns)))
        return cls(view, end, tuple(queries))

    def stage_sql(self, changed: bool) -> str:
        """CREATE the view's staged events: those some group reads, with their part (``__b``, see ``parts``)."""
        keys = ", ".join(quote(k) for k in self.view.keys)
        where = [f"__cr < {self.end}", f"__ts < {self.end}"]
        filters = [g.staged_filter() for g in self.groups]
        if None not in filters:
            where.append("(" + " OR ".join(f for f in filters if f) + ")")
        if changed:
            where.append(_changed(self.view))
        return (f"CREATE OR REPLACE TEMP TABLE {STAGED} AS SELECT *, {_part(keys)} AS __b "
                f"FROM ({events_sql(self.view)}) WHERE {' AND '.join(where)}")

    def tiles_sql(self, changed: bool) -> str:
        """How many tile rows the bounded groups' queries return at most, over all buckets (after staging): per
        group, the staged events it aggregates (each makes at most one tile) plus the stored tiles it reads."""
        counts = [f"count(*) FILTER (WHERE {g.staged_filter() or 'TRUE'})" for g in self.groups if g.reach is not None]
        terms = [f"(SELECT {' + '.join(counts)} FROM {STAGED})"] if counts else ["0"]
        for query in self.groups:
            reuse = query.reuse
            if query.reach is None or reuse is None:
                continue
            where = [_stored(query, reuse), *([_changed(self.view)] if changed else [])]
            terms.append(f"(SELECT count(*) FROM {quote(reuse.table)} WHERE {' AND '.join(where)})")
        return "SELECT " + " + ".join(terms)

    def queries(self, bucket: int, buckets: int, changed: bool) -> list[str]:
        """One query per hop group (aggregation views) or the latest rows (snapshot views), for one bucket."""
        keys = ", ".join(quote(k) for k in self.view.keys)
        first, stop = parts(bucket, buckets)
        table_filter = [f"{_part(keys)} BETWEEN {first} AND {stop - 1}"] if buckets > 1 else []
        if changed:
            table_filter.append(_changed(self.view))
        if not self.view.is_aggregation:
            return [snapshot_sql(self.view, self.end, " AND ".join(table_filter) or None)]
        # a range of a stored column: DuckDB filters it as it scans, before reading the other columns
        staged = f"__b BETWEEN {first} AND {stop - 1}" if buckets > 1 else None
        return [_group_sql(self.view, query, staged, table_filter) for query in self.groups]


PARTS = 4096  # entities are hashed into this many parts; a bucket is a range of them, so there are at most PARTS


def parts(bucket: int, buckets: int) -> tuple[int, int]:
    """The parts of a bucket of ``buckets``: [first, stop). Every part is in exactly one bucket."""
    return bucket * PARTS // buckets, (bucket + 1) * PARTS // buckets


def _part(keys: str) -> str:
    return f"hash({keys}) % {PARTS}"


def _changed(view: ViewQuery) -> str:
    keys = ", ".join(quote(k) for k in view.keys)
    return f"({keys}) IN (SELECT * FROM {CHANGED})"


def _reuse(view: ViewQuery, group: Group, end: int, reach: int | None, columns: Columns) -> Reuse | None:
    """How the group's tiles can be read from an offline table, or None when they cannot."""
    hops = {r.hop for r in view.features if (r.window is None) == (group.hop == 0)}
    hop = group.hop or (hops.pop() if len(hops) == 1 else 0)
    table: TileTable | None = view.materialized.get(hop) if hop else None
    if table is None:
        return None
    complete = min(table.watermark, floor(end, hop))
    if reach is not None and complete <= reach:
        return None  # no tile in reach is complete in the table
    have = columns(table.table)
    exprs = {}
    for name, kind in zip(group.partials, group.kinds, strict=True):
        expr = _table_column(name, kind, have)
        if expr is None:
            return None
        exprs[name] = expr
    return Reuse(table.table, hop, complete, exprs)


def _table_column(name: str, kind: str, have: Mapping[str, str]) -> str | None:
    """The partial as an expression over an offline tile row (offline/sql.py's tile_partials), cast as
    partial_sql casts it; None when the table does not hold it in the same type."""
    prefix, _, column = name.partition("__")
    if prefix in ("lastt", "lastc"):
        source = f"lastk__{column}"
        return f"{quote(source)}.{prefix[-1]}" if source in have else None
    if prefix not in ("maxts", "n", "sum", "min", "max", "last") or name not in have:
        return None
    if prefix == "sum" and have[name] != ("BIGINT" if kind == INT else "DOUBLE" if kind == FLOAT else ""):
        return None  # offline sums some types as another type: a cast would round
    if kind == INT:
        return f"CAST({quote(name)} AS BIGINT)"
    return f"CAST({quote(name)} AS DOUBLE)" if kind == FLOAT else quote(name)


def _stored(query: GroupQuery, reuse: Reuse) -> str:
    """The offline tiles the group reads: complete ones, in reach (all of them for the cumulative group)."""
    complete = f"__pos + {reuse.hop} <= {reuse.complete}"
    return complete if query.reach is None else f"__pos >= {query.reach} AND {complete}"


def _group_sql(view: ViewQuery, query: GroupQuery, bucket: str | None, table_filter: list[str]) -> str:
    group, reuse = query.group, query.reuse
    keys = ", ".join(quote(k) for k in view.keys)
    aggs = ", ".join(f"{partial_sql(n, t)} AS {quote(n)}" for n, t in zip(group.partials, group.kinds, strict=True))
    where = " AND ".join(f for f in (query.staged_filter(), bucket) if f) or "TRUE"
    if group.hop == 0:
        raw = f"SELECT {keys}, {aggs} FROM {STAGED} WHERE {where} GROUP BY ALL"
    else:
        raw = f"SELECT {keys}, {floor_sql('__ts', group.hop)} AS __pos, {aggs} FROM {STAGED} WHERE {where} GROUP BY ALL"
    if reuse is None:
        return raw if group.hop == 0 else f"{raw} ORDER BY {keys}, __pos"
    cond = [_stored(query, reuse), *table_filter]
    if group.hop == 0:
        stored = (f"SELECT {keys}, {_cumulative(group, reuse)} FROM {quote(reuse.table)} "
                  f"WHERE {' AND '.join(cond)} GROUP BY ALL")
        using, order = keys, ""
    else:
        cols = ", ".join(f"{expr} AS {quote(name)}" for name, expr in reuse.columns.items())
        stored = f"SELECT {keys}, __pos, {cols} FROM {quote(reuse.table)} WHERE {' AND '.join(cond)}"
        using, order = f"{keys}, __pos", f" ORDER BY {keys}, __pos"
    merged = ", ".join(_merged(group))
    return f"SELECT {using}, {merged} FROM ({stored}) o FULL JOIN ({raw}) x USING ({using}){order}"


def _cumulative(group: Group, reuse: Reuse) -> str:
    """The group's partials over all the table's tiles of a key: each partial of its partials."""
    out = []
    for name, kind in zip(group.partials, group.kinds, strict=True):
        prefix, _, column = name.partition("__")
        expr = reuse.columns[name]
        if prefix in ("last", "lastt", "lastc"):
            row = (f"max({{'t': {reuse.columns[f'lastt__{column}']}, 'c': {reuse.columns[f'lastc__{column}']}, "
                   f"'v': {reuse.columns[f'last__{column}']}}}) FILTER (WHERE {quote(f'lastk__{column}')} IS NOT NULL)")
            value = f"({row}).{'v' if prefix == 'last' else prefix[-1]}"
        else:
            value = {"maxts": "max", "n": "sum", "sum": "sum", "min": "min", "max": "max"}[prefix] + f"({expr})"
        cast = "BIGINT" if kind == INT else "DOUBLE" if kind == FLOAT else None
        out.append(f"{value if cast is None else f'CAST({value} AS {cast})'} AS {quote(name)}")
    return ", ".join(out)


def _merged(group: Group) -> list[str]:
    """Each partial of a stored tile (``o``) merged with that of the events it lacks (``x``); either may be
    missing (all nulls)."""
    out = []
    for name in group.partials:
        prefix, _, column = name.partition("__")
        o, x = f"o.{quote(name)}", f"x.{quote(name)}"
        if prefix in ("maxts", "max"):
            expr = f"greatest({o}, {x})"  # DuckDB's greatest and least skip nulls
        elif prefix == "min":
            expr = f"least({o}, {x})"
        elif prefix == "n":
            expr = f"coalesce({o}, 0) + coalesce({x}, 0)"
        elif prefix == "sum":
            expr = f"coalesce({o} + {x}, {o}, {x})"
        else:  # last, lastt, lastc: those of the later (ts, created, value), as the struct max of partial_sql
            def row(side: str, c: str = column) -> str:
                return (f"{{'t': {side}.{quote(f'lastt__{c}')}, 'c': {side}.{quote(f'lastc__{c}')}, "
                        f"'v': {side}.{quote(f'last__{c}')}}}")
            later = f"x.{quote(f'lastt__{column}')} IS NOT NULL AND (o.{quote(f'lastt__{column}')} IS NULL " \
                    f"OR {row('x')} > {row('o')})"
            expr = f"CASE WHEN {later} THEN {x} ELSE {o} END"
        out.append(f"{expr} AS {quote(name)}")
    return out


def snapshot_sql(view: ViewQuery, end: int, keys_filter: str | None = None) -> str:
    """The latest row per key among rows available before ``end``."""
    keys = ", ".join(quote(k) for k in view.keys)
    columns = ", ".join(quote(c) for c in view.columns)
    where = f"greatest(__ts, __cr) < {end}" + (f" AND {keys_filter}" if keys_filter else "")
    desc = ", ".join(f"{quote(c)} DESC NULLS LAST" for c in view.field_order)  # ties: the greatest values win
    return (
        f"SELECT {keys}, __ts, __cr, {columns} FROM ({events_sql(view)}) WHERE {where} "
        f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY __ts DESC, __cr DESC, {desc}) = 1"
    )
