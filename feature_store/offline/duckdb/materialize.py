"""Offline materialization: per-hop tiles (aggregation views) and deduplicated history (snapshots).

Tables are tagged with the view's data signature and a watermark, both kept in ``fs_materialized``
and updated in the same DuckDB transaction as the rows, chunk by chunk: a crash leaves a
consistent prefix, and re-running continues from the watermark. Training sets read tiles below
the watermark from these tables and compute the rest from raw events, so their results do not
depend on whether (or how far) materialization ran.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import duckdb

from feature_store.durations import format_duration
from feature_store.errors import OfflineStoreError
from feature_store.identifiers import quote
from feature_store.offline.duckdb.sql import (
    Compiled,
    TileTable,
    events_sql,
    partials_sql,
    snapshot_history_sql,
    tiles_sql,
)
from feature_store.offline.engine import MaterializeResult, ProgressCallback, from_us, still_valid, to_us

RowsSql = Callable[[int, int], str]  # (since, until) -> SELECT of the rows for that time range
META = "fs_materialized_v1"  # bump when its columns change: older metadata is then ignored
ROWS_PER_CHUNK = 4_000_000
def drop_materialized(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Drop every table materialization made (tiles, snapshots, their metadata in any version), in one
    transaction; never a table of the user's (none has these names). Returns their names."""
    names = [str(name) for (name,) in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' AND (starts_with(table_name, "
        "'fs_tiles__') OR starts_with(table_name, 'fs_snapshot__') OR starts_with(table_name, 'fs_materialized_v'))"
        " ORDER BY table_name").fetchall()]
    try:
        con.execute("BEGIN TRANSACTION")
        for name in names:
            con.execute(f"DROP TABLE IF EXISTS {quote(name)}")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return names


class Materializer:
    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.files = "{}"  # JSON fingerprint of the source files of the view being materialized
        self.con.execute(
            f"CREATE TABLE IF NOT EXISTS {META} (view VARCHAR, part BIGINT, tbl VARCHAR, signature VARCHAR, "
            "watermark BIGINT, files VARCHAR, updated_at TIMESTAMPTZ, PRIMARY KEY (view, part))"
        )

    def tables(self, view: str, signature: str, files: dict[str, list[int]]) -> dict[int, TileTable]:
        """Usable materialized tables: same definition, and computed from files that are unchanged."""
        rows = self.con.execute(
            f"SELECT part, tbl, watermark, files FROM {META} WHERE view = ? AND signature = ?", [view, signature]
        ).fetchall()
        return {
            int(part): TileTable(str(tbl), int(mark))
            for part, tbl, mark, recorded in rows
            if still_valid(json.loads(recorded or "{}"), files)
        }

    def run(self, query: Compiled, signature: str, files: dict[str, list[int]], end: datetime, full: bool,
            progress: ProgressCallback | None) -> list[MaterializeResult]:
        self.files = json.dumps(files, sort_keys=True)
        end_us = min(to_us(end), to_us(datetime.now(UTC)))  # rows not yet available cannot be final
        plan = query.plan
        if not plan.is_aggregation:
            columns = [r.column or r.name for r in plan.features]
            return [self._part(query, signature, 0, f"fs_snapshot__{plan.name}", end_us, full, progress,
                               lambda a, b: snapshot_history_sql(query, columns, a, b), "snapshot")]
        columns = sorted({r.column for r in plan.features if r.column})
        events = f"({events_sql(query, columns)})"
        results = []
        for tiles in plan.tile_hops:  # the hops whose tiles training sets read (distinct counts read events)
            hop = tiles.hop
            partials = partials_sql(tiles.partials, tiles.input_types)
            results.append(self._part(
                query, signature, hop, f"fs_tiles__{plan.name}__{hop}", end_us - end_us % hop, full, progress,
                _tile_rows(query, hop, partials, events),
                f"hop {format_duration(timedelta(microseconds=hop))}",
            ))
        return results

    def _part(self, query: Compiled, signature: str, part: int, table: str, watermark: int, full: bool,
              progress: ProgressCallback | None, make: RowsSql, label: str) -> MaterializeResult:
        rows = self.con.execute(f"SELECT signature, watermark, files FROM {META} WHERE view = ? AND part = ?",
                               [query.plan.name, part]).fetchall()
        row = rows[0] if rows else None
        usable = (row is not None and row[0] == signature
                  and still_valid(json.loads(row[2] or "{}"), json.loads(self.files))
                  and self._same_columns(table, make(0, 0)))  # not computed by an earlier version of this code
        previous = int(row[1]) if row and usable and not full else None
        if previous is None:  # first run, changed definition, or --full: start over
            self._reset(query.plan.name, part, table, make(0, 0))
            start = self._first_time(query, part)
        else:
            start = previous
            watermark = max(watermark, previous)  # never move a watermark backwards
        written, chunks = 0, []
        if start is not None and watermark > start:
            chunks = self._chunks(query, start, watermark, part)
        for i, (a, b) in enumerate(chunks):
            written += self._write_chunk(query.plan.name, part, table, signature, make(a, b), b)
            if progress:
                progress(f"{query.plan.name} {label}", i + 1, len(chunks))
        if not chunks:
            self._write_chunk(query.plan.name, part, table, signature, None, watermark)
        return MaterializeResult(query.plan.name, label, table, None if previous is None else from_us(previous),
                                 from_us(watermark), written, previous is None)

    def _reset(self, view: str, part: int, table: str, rows: str) -> None:
        """An empty table and no metadata row, in one transaction: a run killed at any point after this
        leaves no watermark claiming rows the table does not hold, so the next run starts over too."""
        con = self.con
        try:
            con.execute("BEGIN TRANSACTION")
            con.execute(f"DELETE FROM {META} WHERE view = ? AND part = ?", [view, part])
            con.execute(f"DROP TABLE IF EXISTS {quote(table)}")
            con.execute(f"CREATE TABLE {quote(table)} AS {rows} LIMIT 0")
            con.execute("COMMIT")
        except duckdb.Error as exc:
            con.execute("ROLLBACK")
            raise OfflineStoreError(f"starting over the materialized table {table} of {view} failed: {exc}") from exc

    def _same_columns(self, table: str, rows: str) -> bool:
        """Whether the table has the columns ``rows`` computes, in the same types."""
        want = self.con.execute(f"DESCRIBE {rows}").fetchall()
        return table_columns(self.con, table) == {str(name): str(kind) for name, kind, *_ in want}

    def _first_time(self, query: Compiled, hop: int) -> int | None:
        first = self.con.execute(f"SELECT min(__ts) FROM ({events_sql(query, [])})").fetchall()[0][0]
        if first is None:
            return None
        value = int(first)
        return value - value % hop if hop else value

    def _chunks(self, query: Compiled, start: int, end: int, hop: int) -> list[tuple[int, int]]:
        count = int(self.con.execute(f"SELECT count(*) FROM {query.relation}").fetchall()[0][0])
        pieces = max(1, math.ceil(count / ROWS_PER_CHUNK))
        step = max(hop or 1, math.ceil((end - start) / pieces))
        if hop:
            step = math.ceil(step / hop) * hop
        bounds, a = [], start
        while a < end:
            bounds.append((a, min(end, a + step)))
            a += step
        return bounds

    def _write_chunk(self, view: str, part: int, table: str, signature: str, rows: str | None, mark: int) -> int:
        con = self.con
        try:
            con.execute("BEGIN TRANSACTION")
            written = 0
            if rows is not None:
                result = con.execute(f"INSERT INTO {quote(table)} BY NAME {rows}").fetchall()
                written = int(result[0][0]) if result else 0
            con.execute(
                f"INSERT OR REPLACE INTO {META} VALUES (?, ?, ?, ?, ?, ?, now())",
                [view, part, table, signature, mark, self.files],
            )
            con.execute("COMMIT")
        except duckdb.Error as exc:
            con.execute("ROLLBACK")
            raise OfflineStoreError(f"materializing {view} into {table} failed (rolled back): {exc}") from exc
        return written


def table_columns(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    """A table of the database (not a temporary one): its columns and their DuckDB types."""
    rows = con.execute(
        "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = current_database() "
        "AND schema_name = 'main' AND table_name = ?", [table],
    ).fetchall()
    return {str(name): str(kind) for name, kind in rows}


def _tile_rows(query: Compiled, hop: int, partials: dict[str, str], events: str) -> RowsSql:
    return lambda a, b: tiles_sql(query, hop, partials, since=a, until=b, events=events)
