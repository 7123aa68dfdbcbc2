"""The push log as DuckDB reads it: logged events typed as their batch source's columns."""

from __future__ import annotations

from collections.abc import Mapping

from feature_store.identifiers import quote, quote_literal
from feature_store.offline.duckdb.types import duckdb as duckdb_type
from feature_store.offline.push_log import PushLog
from feature_store.query import CREATED, PUSH_ID, PUSH_ROW, PUSH_ROWS, PUSHED_AT, PUSHED_ROW


def pushed_sql(log: PushLog, source: str, columns: Mapping[str, str]) -> str | None:
    """A SELECT of the events logged for a push source, with the batch source's column types (``columns``:
    engine-neutral), or None when nothing was pushed.

    Lines of a push with a push id count once per (push id, row): only from a complete copy of the push (every
    row's line is there), the earliest complete one. A retry logs a copy at the time the key reserved
    (online/push/idempotency.py), so every complete copy is the same events at the same time."""
    snapshot = log.snapshot(source)
    if not snapshot:
        return None
    typed = ", ".join(f"CAST({quote(c)} AS {duckdb_type(t)}) AS {quote(c)}" for c, t in columns.items())
    push_id, row, rows, at = quote(PUSH_ID), quote(PUSH_ROW), quote(PUSH_ROWS), quote(PUSHED_AT)
    logged = " UNION ALL BY NAME ".join(filter(None, [
        _tail_sql(snapshot.jsonl, columns), _compacted_sql(snapshot.parquet, columns) if snapshot.parquet else None]))
    # A line torn by a crash was never acknowledged: skipping it loses nothing that was promised. A copy of a push
    # with an id counts only when all its rows are there (an attempt killed midway leaves part of one). Lines
    # without an id skip the dedupe: a million of them read in 125 ms instead of 92 ms without any dedupe (200 ms
    # through it); a million with ids in 420 ms (benchmarks/push_log.py).
    complete = (f"SELECT {push_id}, min({at}) AS __fs_at FROM (SELECT {push_id}, {at} FROM ided GROUP BY {push_id}, "
                f"{at}, {rows} HAVING count(DISTINCT {row}) = {rows}) GROUP BY {push_id}")
    kept = (f"SELECT ided.* FROM ided SEMI JOIN complete ON ided.{push_id} = complete.{push_id} "
            f"AND ided.{at} = complete.__fs_at")
    once = f"SELECT * FROM ({kept}) QUALIFY row_number() OVER (PARTITION BY {push_id}, {row}) = 1"
    return (f"SELECT {typed}, {at} AS {quote(CREATED)}, TRUE AS {PUSHED_ROW} FROM (WITH logged AS (SELECT * FROM "
            f"({logged})), ided AS (SELECT * FROM logged WHERE {push_id} IS NOT NULL), complete AS ({complete}) "
            f"SELECT * FROM logged WHERE {push_id} IS NULL UNION ALL BY NAME ({once}))")


META_TYPES = {PUSHED_AT: "BIGINT", PUSH_ID: "VARCHAR", PUSH_ROW: "BIGINT", PUSH_ROWS: "BIGINT"}


def _tail_sql(files: tuple[str, ...], columns: Mapping[str, str]) -> str | None:
    """The JSON-lines tail, each value read as text and the push metadata typed."""
    if not files:
        return None
    listed = "[" + ", ".join(quote_literal(f) for f in files) + "]"
    declared = ", ".join([*(f"{quote_literal(c)}: 'VARCHAR'" for c in columns),
                          *(f"{quote_literal(c)}: '{t}'" for c, t in META_TYPES.items())])
    # DuckDB reads a line it cannot parse (torn by a crash) as a row of NULLs; every logged line has its push time
    return (f"SELECT * FROM read_json({listed}, format = 'newline_delimited', columns = {{{declared}}}, "
            f"ignore_errors = true) WHERE {quote(PUSHED_AT)} IS NOT NULL")


def _compacted_sql(files: tuple[str, ...], columns: Mapping[str, str]) -> str:
    """Compacted parts hold the same text columns as the tail (offline/push_log/compaction.py). A column the source
    gained after a part was written reads as NULL there, as from a line that lacks it: an empty row of every column
    joins the parts by name, so a column no part has is there too."""
    listed = "[" + ", ".join(quote_literal(f) for f in files) + "]"
    types = {**{c: "VARCHAR" for c in columns}, **META_TYPES}
    template = ", ".join(f"NULL::{t} AS {quote(c)}" for c, t in types.items())
    return (f"SELECT * FROM (SELECT {template} WHERE FALSE) UNION ALL BY NAME "
            f"SELECT * FROM read_parquet({listed}, union_by_name = true)")
