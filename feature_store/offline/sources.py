"""How DuckDB reads each kind of source, and the checks a source must pass before use."""

from __future__ import annotations

import glob
from pathlib import Path

from feature_store.config import resolve_path
from feature_store.definitions import DuckDBSource, FileSource
from feature_store.errors import SourceNotFoundError
from feature_store.identifiers import quote, quote_literal

SourceDef = FileSource | DuckDBSource


def source_files(source: FileSource, repo: Path) -> list[str]:
    pattern = str(resolve_path(repo, source.path))
    files = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else (
        [pattern] if Path(pattern).is_file() else []
    )
    if not files:
        raise SourceNotFoundError(
            f"source {source.name!r}: path {source.path!r} matches no file (looked for {pattern}). "
            "Check the path (relative paths are relative to the repo) or generate the data first.",
            source=source.name, path=source.path,
        )
    return files


def relation_sql(source: SourceDef, repo: Path) -> str:
    """A FROM-clause expression that reads the whole source."""
    if isinstance(source, DuckDBSource):
        if source.table is not None:
            return quote(source.table)
        return f"({source.query})"
    files = "[" + ", ".join(quote_literal(f) for f in source_files(source, repo)) + "]"
    if source.file_format == "csv":
        return f"read_csv({files}, header = true, union_by_name = true)"
    return f"read_parquet({files}, union_by_name = true)"
