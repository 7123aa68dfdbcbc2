"""Entity rows for a training set in DuckDB: the engine-neutral forms (offline/entity_rows.py), and a SQL query DuckDB
runs."""

from __future__ import annotations

from typing import Any

import duckdb
import pyarrow as pa

from feature_store.errors import EntityDataFrameError
from feature_store.offline.entity_rows import ROW_ID, TIMESTAMP_COLUMN, prepare
from feature_store.offline.entity_rows import to_arrow as _to_arrow

__all__ = ["ROW_ID", "TIMESTAMP_COLUMN", "fetch_arrow", "prepare", "to_arrow"]


def fetch_arrow(result: Any) -> pa.Table:
    """DuckDB 2 renamed fetch_arrow_table to to_arrow_table; accept both."""
    fetch = getattr(result, "to_arrow_table", None) or result.fetch_arrow_table
    return fetch()


def to_arrow(entity_df: Any, con: duckdb.DuckDBPyConnection) -> pa.Table:
    def run_query(query: str) -> pa.Table:
        try:
            return fetch_arrow(con.sql(query))
        except duckdb.Error as exc:
            raise EntityDataFrameError(f"the entity SQL query failed in the offline DuckDB: {exc}",
                                       query=query) from exc

    return _to_arrow(entity_df, run_query)
