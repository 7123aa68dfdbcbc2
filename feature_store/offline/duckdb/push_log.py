"""The push log as DuckDB reads it: logged events typed as their batch source's columns."""

from __future__ import annotations

from collections.abc import Mapping

from feature_store.identifiers import quote, quote_literal
from feature_store.offline.duckdb.types import duckdb as duckdb_type
from feature_store.offline.push_log import PushLog
from feature_store.query import CREATED, PUSHED_AT, PUSHED_ROW


def pushed_sql(log: PushLog, source: str, columns: Mapping[str, str]) -> str | None:
    """A SELECT of the events logged for a push source, with the batch source's column types (``columns``:
    engine-neutral), or None when nothing was pushed."""
    files = log.files(source)
    if not files:
        return None
    listed = "[" + ", ".join(quote_literal(f) for f in files) + "]"
    declared = ", ".join(f"{quote_literal(c)}: 'VARCHAR'" for c in columns)
    typed = ", ".join(f"CAST({quote(c)} AS {duckdb_type(t)}) AS {quote(c)}" for c, t in columns.items())
    # A line torn by a crash was never acknowledged: skipping it loses nothing that was promised.
    return (
        f"SELECT {typed}, {quote(PUSHED_AT)} AS {quote(CREATED)}, TRUE AS {PUSHED_ROW} FROM read_json({listed}, "
        f"format = 'newline_delimited', columns = {{{declared}, {quote_literal(PUSHED_AT)}: 'BIGINT'}}, "
        "ignore_errors = true)"
    )
