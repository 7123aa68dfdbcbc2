"""One in-memory DuckDB database per process, where file sources are described and read.

Opening a DuckDB database takes 12-15 ms (DuckDB 2.0, measured); every store used to open one of its own just to
DESCRIBE its parquet and CSV sources, which hold no state in the database. A cursor per call is DuckDB's way to use
one database from many threads. A forked child drops the parent's database unclosed (its worker threads did not
survive the fork) and opens its own when it first needs one.
"""

from __future__ import annotations

import os
import threading

import duckdb

_lock = threading.Lock()
_database: duckdb.DuckDBPyConnection | None = None
_inherited: list[duckdb.DuckDBPyConnection] = []  # a parent's, kept referenced: closing it could wait on threads


def scratch_cursor() -> duckdb.DuckDBPyConnection:
    """A new connection to the process's scratch database, in UTC."""
    global _database
    with _lock:
        if _database is None:
            database = duckdb.connect(":memory:")
            database.execute("SET GLOBAL TimeZone = 'UTC'")
            # its cache outlives a store here: reads of a file rewritten in place must see the new bytes
            database.execute("SET GLOBAL enable_external_file_cache = false")
            _database = database
        return _database.cursor()


def _after_fork_in_child() -> None:
    global _database, _lock
    _lock = threading.Lock()
    if _database is not None:
        _inherited.append(_database)
        _database = None


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)
