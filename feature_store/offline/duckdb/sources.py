"""How DuckDB reads each kind of source, and the checks a source must pass before use."""

from __future__ import annotations

from pathlib import Path

from feature_store.definitions import DuckDBSource, FileSource, SparkSource
from feature_store.errors import DefinitionError
from feature_store.identifiers import quote, quote_literal
from feature_store.offline.engine import source_files

SourceDef = FileSource | DuckDBSource | SparkSource


def relation_sql(source: SourceDef, repo: Path) -> str:
    """A FROM-clause expression that reads the whole source."""
    if isinstance(source, SparkSource):
        raise DefinitionError(
            f"source {source.name!r} is a SparkSource (a table or query of a Spark catalog), which the DuckDB engine "
            "cannot read: set offline_store type spark (docs/spark.md), or use a FileSource or DuckDBSource.",
            source=source.name)
    if isinstance(source, DuckDBSource):
        if source.table is not None:
            return quote(source.table)
        return f"(\n{checked_select(source)}\n)"  # on lines of its own: a trailing -- comment ends there
    files = "[" + ", ".join(quote_literal(f) for f in source_files(source, repo)) + "]"
    if source.file_format == "csv":
        return f"read_csv({files}, header = true, union_by_name = true)"
    # can_have_nan: parquet statistics leave NaN out of a float column's min and max, and without it DuckDB's
    # optimizer trusts them, folding away isnan() and NaN comparisons (duckdb/duckdb#25521)
    return f"read_parquet({files}, union_by_name = true, can_have_nan = true)"


def checked_select(source: DuckDBSource) -> str:
    """The source's query, once DuckDB's own parser finds it to be exactly one SELECT statement.

    A query comes from a repo file at apply, and back from the registry later: a registry row is data, never
    code, so a query that would run anything else (a second statement, COPY, ATTACH, INSTALL, PRAGMA, ...) is
    refused before DuckDB executes any of it.
    """
    import duckdb  # here: the registry imports this module, and commands that only read it load no DuckDB

    text = source.query or ""
    try:
        statements = duckdb.extract_statements(text)
    except duckdb.Error as exc:
        raise DefinitionError(f"DuckDBSource {source.name!r}: its query is not valid SQL: {exc}",
                              source=source.name) from exc
    kinds = [str(statement.type).rpartition(".")[2] for statement in statements]
    if kinds != ["SELECT"]:
        raise DefinitionError(
            f"DuckDBSource {source.name!r}: query= must be exactly one SELECT statement, but DuckDB parses it as "
            f"{len(kinds)} statement(s) of type {kinds}. Write one SELECT (WITH ... SELECT is fine), or use "
            "table= for a table.", source=source.name, statements=kinds,
        )
    return str(statements[0].query).strip().rstrip(";")
