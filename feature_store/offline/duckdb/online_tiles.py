"""A view's online values as DuckDB computes them, bucket by bucket, re-using the offline tile tables.

Per view, the events materialization needs are first copied once into a temporary table (``STAGED``),
each with its hash part (a bucket is a range of parts), so the bucket queries after it do not read and
filter the source again. A hop group's tiles then come from one of two places:

- From the offline tile table of its hop (materialize.py), when that table holds every field of the group:
  the tiles that end by its watermark are read as they are, and only the events they do not hold are
  aggregated and merged in (late events, created after their tile ended, and events of tiles after the
  watermark). That is most of the work of an hourly view done once, not twice.
- From the raw events otherwise (distinct sets, means and M2s are not kept offline, and a table may not be
  materialized, or be of another definition): per (key, tile), every event available before ``end``.

Either way a tile holds exactly the events available before ``end`` (``__cr < end`` and ``__ts < end``), and
tables come in (key, position) order for bounded groups, one row per key for the cumulative one. The online
side (online/materialize) encodes and writes them; it sees only Arrow tables (offline/engine.py: OnlineTiles).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from feature_store.aggregations import FLOAT, INT, Partial
from feature_store.identifiers import quote
from feature_store.kernel.tile_fields import computed_by_kernel, kernel_partials, with_kernel_fields
from feature_store.offline.duckdb.entity_input import fetch_arrow
from feature_store.offline.duckdb.sql import (
    Compiled,
    TileTable,
    events_sql,
    field_sql,
    floor_sql,
    keys_sql,
)
from feature_store.query import Group, ViewQuery

STAGED = "__fs_events"
CHANGED = "__fs_changed_keys"
PARTS = 4096  # entities are hashed into this many parts; a bucket is a range of them, so there are at most PARTS
ENTITIES_PER_CHUNK = 200_000  # entities computed at once (a bucket), at most
TILES_PER_CHUNK = 2_500_000  # tiles computed at once, at most (estimated from above): a view's tiles per entity vary

Columns = Callable[[str], Mapping[str, str]]  # a table's columns and their DuckDB types


@dataclass(frozen=True)
class Reuse:
    """Tiles of one group read from an offline table: those ending by ``complete`` (the table's watermark,
    or ``end`` rounded down to the hop when earlier)."""

    table: str
    hop: int
    complete: int


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
    view: Compiled
    end: int
    groups: tuple[GroupQuery, ...]  # empty for snapshot views

    @classmethod
    def of(cls, view: Compiled, end: int, columns: Columns) -> ViewCompute:
        if not view.plan.is_aggregation:
            return cls(view, end, ())
        queries = []
        for group in view.plan.groups:
            reach = None if group.hop == 0 else floor(end - group.window, group.hop)
            queries.append(GroupQuery(group, reach, _reuse(view, group, end, reach, columns)))
        return cls(view, end, tuple(queries))

    def stage_sql(self, changed: bool) -> str:
        """CREATE the view's staged events: those some group reads, with their part (``__b``, see ``parts``)."""
        where = [f"__cr < {self.end}", f"__ts < {self.end}"]
        filters = [g.staged_filter() for g in self.groups]
        if None not in filters:
            where.append("(" + " OR ".join(f for f in filters if f) + ")")
        if changed:
            where.append(_changed(self.view))
        return (f"CREATE OR REPLACE TEMP TABLE {STAGED} AS SELECT *, {_part(keys_sql(self.view))} AS __b "
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

    def kernel_query(self, g: int, bucket: int, buckets: int) -> str:
        """The events of group ``g``'s tiles in one bucket, for the fields numpy computes (kernel partials)."""
        first, stop = parts(bucket, buckets)
        staged = f"__b BETWEEN {first} AND {stop - 1}" if buckets > 1 else None
        return _kernel_sql(self.view, self.groups[g], staged)

    def queries(self, bucket: int, buckets: int, changed: bool) -> list[str]:
        """One query per hop group (aggregation views) or the latest rows (snapshot views), for one bucket."""
        first, stop = parts(bucket, buckets)
        table_filter = [f"{_part(keys_sql(self.view))} BETWEEN {first} AND {stop - 1}"] if buckets > 1 else []
        if changed:
            table_filter.append(_changed(self.view))
        if not self.view.plan.is_aggregation:
            return [snapshot_sql(self.view, self.end, " AND ".join(table_filter) or None)]
        # a range of a stored column: DuckDB filters it as it scans, before reading the other columns
        staged = f"__b BETWEEN {first} AND {stop - 1}" if buckets > 1 else None
        return [_group_sql(self.view, query, staged, table_filter) for query in self.groups]


def floor(value: int, hop: int) -> int:
    """``value`` rounded down to a multiple of ``hop`` (Python's % is a floor modulo: right below zero too)."""
    return value - value % hop


def parts(bucket: int, buckets: int) -> tuple[int, int]:
    """The parts of a bucket of ``buckets``: [first, stop). Every part is in exactly one bucket."""
    return bucket * PARTS // buckets, (bucket + 1) * PARTS // buckets


def _part(keys: str) -> str:
    return f"hash({keys}) % {PARTS}"


def _changed(view: Compiled) -> str:
    return f"({keys_sql(view)}) IN (SELECT * FROM {CHANGED})"


def _stored_type(storage: str) -> str | None:
    return "BIGINT" if storage == INT else "DOUBLE" if storage == FLOAT else None


def _reuse(view: Compiled, group: Group, end: int, reach: int | None, columns: Columns) -> Reuse | None:
    """How the group's tiles can be read from an offline table, or None when they cannot."""
    hops = {r.hop for r in view.plan.features if (r.window is None) == (group.hop == 0)}
    hop = group.hop or (hops.pop() if len(hops) == 1 else 0)
    table: TileTable | None = view.materialized.get(hop) if hop else None
    if table is None:
        return None
    complete = min(table.watermark, floor(end, hop))
    if reach is not None and complete <= reach:
        return None  # no tile in reach is complete in the table
    have = columns(table.table)
    for partial in group.partials:
        if partial.of.combine(partial) is None:
            return None  # a partial SQL cannot combine: computed from events
        for name in partial.fields:
            kind = _stored_type(group.storages[group.at(name)])
            if name not in have or (kind is not None and have[name] != kind):
                return None  # not held, or in another type: a cast could round
    return Reuse(table.table, hop, complete)


def _stored(query: GroupQuery, reuse: Reuse) -> str:
    """The offline tiles the group reads: complete ones, in reach (all of them for the cumulative group)."""
    complete = f"__pos + {reuse.hop} <= {reuse.complete}"
    return complete if query.reach is None else f"__pos >= {query.reach} AND {complete}"


def _aggregates(group: Group) -> str:
    """The group's fields SQL computes (kernel partials are computed from the events afterwards: _kernel_sql)."""
    out = []
    for partial in group.partials:
        if computed_by_kernel(partial):
            continue
        for k, name in enumerate(partial.fields):
            out.append(f"{field_sql(partial, k, group.storages[group.at(name)])} AS {quote(name)}")
    return ", ".join(out)


def _kernel_sql(view: Compiled, query: GroupQuery, bucket: str | None) -> str:
    """The events of the group's tiles in (keys, position, ts, created) order, with the columns of its kernel
    partials: grouped by (keys, position) as the group's SQL groups them, row for row."""
    group = query.group
    keys = keys_sql(view)
    columns = sorted({p.column for p in kernel_partials(group) if p.column})
    where = " AND ".join(f for f in (query.staged_filter(), bucket) if f) or "TRUE"
    pos = f"{floor_sql('__ts', group.hop)} AS __pos, " if group.hop else ""
    order = f"{keys}, __pos, __ts, __cr" if group.hop else f"{keys}, __ts, __cr"
    cols = "".join(f", {quote(c)}" for c in columns)
    return f"SELECT {keys}, {pos}__ts, __cr{cols} FROM {STAGED} WHERE {where} ORDER BY {order}"


def _group_sql(view: Compiled, query: GroupQuery, bucket: str | None, table_filter: list[str]) -> str:
    group, reuse = query.group, query.reuse
    keys = keys_sql(view)
    where = " AND ".join(f for f in (query.staged_filter(), bucket) if f) or "TRUE"
    if group.hop == 0:
        raw = f"SELECT {keys}, {_aggregates(group)} FROM {STAGED} WHERE {where} GROUP BY ALL"
    else:
        raw = (f"SELECT {keys}, {floor_sql('__ts', group.hop)} AS __pos, {_aggregates(group)} FROM {STAGED} "
               f"WHERE {where} GROUP BY ALL")
    if reuse is None:
        return raw if group.hop == 0 else f"{raw} ORDER BY {keys}, __pos"
    cond = [_stored(query, reuse), *table_filter]
    if group.hop == 0:
        stored = (f"SELECT {keys}, {_cumulative(group)} FROM {quote(reuse.table)} "
                  f"WHERE {' AND '.join(cond)} GROUP BY ALL")
        using, order = keys, ""
    else:
        cols = ", ".join(quote(name) for name in group.fields)
        stored = f"SELECT {keys}, __pos, {cols} FROM {quote(reuse.table)} WHERE {' AND '.join(cond)}"
        using, order = f"{keys}, __pos", f" ORDER BY {keys}, __pos"
    merged = ", ".join(_merged(group))
    return f"SELECT {using}, {merged} FROM ({stored}) o FULL JOIN ({raw}) x USING ({using}){order}"


def _latest_row(partial: Partial, side: str = "") -> str:
    v, t, c = (f"{side}{quote(name)}" for name in partial.fields)
    return f"{{'t': {t}, 'c': {c}, 'v': {v}}}"


def _cumulative(group: Group) -> str:
    """The group's fields over all the table's tiles of a key, each combined as its partial says."""
    out = []
    for partial in group.partials:
        ops = partial.of.combine(partial) or ()
        for k, (name, op) in enumerate(zip(partial.fields, ops, strict=True)):
            if op == "latest":
                row = f"max({_latest_row(partial)}) FILTER (WHERE {quote(partial.fields[1])} IS NOT NULL)"
                value = f"({row}).{'vtc'[k]}"
            else:
                value = {"add": "sum", "min": "min", "max": "max"}[op] + f"({quote(name)})"
            cast = _stored_type(group.storages[group.at(name)])
            out.append(f"{value if cast is None else f'CAST({value} AS {cast})'} AS {quote(name)}")
    return ", ".join(out)


def _merged(group: Group) -> list[str]:
    """Each field of a stored tile (``o``) combined with that of the events it lacks (``x``); either may be
    missing (all nulls)."""
    out = []
    for partial in group.partials:
        ops = partial.of.combine(partial) or ()
        for name, op in zip(partial.fields, ops, strict=True):
            o, x = f"o.{quote(name)}", f"x.{quote(name)}"
            if op == "max":
                expr = f"greatest({o}, {x})"  # DuckDB's greatest and least skip nulls
            elif op == "min":
                expr = f"least({o}, {x})"
            elif op == "add":
                expr = f"coalesce({o} + {x}, {o}, {x})"
            else:  # latest: the fields of the later (ts, created, value), as the struct max of the SQL aggregate
                t = quote(partial.fields[1])
                later = f"x.{t} IS NOT NULL AND (o.{t} IS NULL OR {_latest_row(partial, 'x.')} > " \
                        f"{_latest_row(partial, 'o.')})"
                expr = f"CASE WHEN {later} THEN {x} ELSE {o} END"
            out.append(f"{expr} AS {quote(name)}")
    return out


def snapshot_sql(view: Compiled, end: int, keys_filter: str | None = None) -> str:
    """The latest row per key among rows available before ``end``."""
    keys = keys_sql(view)
    columns = ", ".join(quote(c) for c in view.columns)
    where = f"greatest(__ts, __cr) < {end}" + (f" AND {keys_filter}" if keys_filter else "")
    desc = ", ".join(f"{quote(c)} DESC NULLS LAST" for c in view.plan.field_order)  # ties: the greatest values win
    return (
        f"SELECT {keys}, __ts, __cr, {columns} FROM ({events_sql(view)}) WHERE {where} "
        f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY __ts DESC, __cr DESC, {desc}) = 1"
    )


class DuckDBOnlineTiles:
    """A view's online values, bucket by bucket (offline/engine.py: OnlineTiles). Bucket queries run on the thread
    that advances ``buckets()``; the cursor is the engine's, used by that thread alone meanwhile."""

    def __init__(self, con: duckdb.DuckDBPyConnection, view: Compiled, end: int, since: int | None,
                 columns: Columns) -> None:
        self.con, self.view, self.end, self.since = con, view, end, since
        self.plan: ViewQuery = view.plan
        self.compute = ViewCompute.of(view, end, columns)
        self.entities = self._entities()

    def buckets(self) -> Iterator[list[pa.Table]]:
        con, changed = self.con, self.since is not None
        buckets = min(PARTS, max(1, math.ceil(self.entities / ENTITIES_PER_CHUNK)))
        try:
            if self.plan.is_aggregation:
                con.execute(self.compute.stage_sql(changed))
                tiles = con.execute(self.compute.tiles_sql(changed)).fetchall()[0][0] or 0
                buckets = min(PARTS, max(buckets, math.ceil(tiles / TILES_PER_CHUNK)))
            for bucket in range(buckets):
                tables = [fetch_arrow(con.sql(query)) for query in self.compute.queries(bucket, buckets, changed)]
                for g, query in enumerate(self.compute.groups):
                    if kernel_partials(query.group):
                        events = fetch_arrow(con.sql(self.compute.kernel_query(g, bucket, buckets)))
                        tables[g] = with_kernel_fields(tables[g], events, query.group, self.plan.keys)
                yield tables
        finally:  # frees its memory before the next view's (after an error, closing the cursor drops it)
            con.execute(f"DROP TABLE IF EXISTS {STAGED}")

    def _entities(self) -> int:
        """How many entities the view's values are computed for."""
        view = self.view
        if self.since is None:
            # HyperLogLog (about 2% off) instead of an exact DISTINCT, 4-5x faster: the count only sizes the buckets
            # and the progress bar, whose last report gives the exact count written.
            row = self.con.execute(
                f"SELECT approx_count_distinct({_key_value(view)}) FROM ({events_sql(view, [])})").fetchall()
        else:
            self.con.execute(
                f"CREATE OR REPLACE TEMP TABLE {CHANGED} AS SELECT DISTINCT {keys_sql(view)} "
                f"FROM ({events_sql(view, [])}) WHERE greatest(__ts, __cr) >= {self.since} "
                f"AND greatest(__ts, __cr) < {self.end}"
            )
            row = self.con.execute(f"SELECT count(*) FROM {CHANGED}").fetchall()
        return int(row[0][0]) if row else 0


def _key_value(view: Compiled) -> str:
    """One value per entity key, for counting distinct keys: the key itself, or a struct of a compound key."""
    if len(view.keys) == 1:
        return quote(view.keys[0])
    return "{" + ", ".join(f"'k{i}': {quote(k)}" for i, k in enumerate(view.keys)) + "}"


