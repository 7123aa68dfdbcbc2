"""The one door to an offline engine: a small protocol, its capability flags, and the factory that builds one from
``offline_store.type``.

An engine reads sources and the push log; it computes training sets and offline tiles from the compiled plans
(feature_store/query.py), and hands online materialization each view's per-entity tiles as Arrow tables
(:class:`OnlineTiles`), which the online side encodes and writes without knowing the engine. An engine with
workers of its own (``capabilities.writes_online``: Spark) may instead encode and write them there, with the same
encoding code, into a store those workers can reach (``write_online``); only counts come back. Nothing outside an
engine's own package imports its library (DuckDB's lives in offline/duckdb).
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from feature_store.catalog import BatchSource, Catalog
from feature_store.definitions import FileSource
from feature_store.errors import SourceNotFoundError
from feature_store.references import ResolvedFeature

if TYPE_CHECKING:  # annotations only: importing pandas costs the CLI's start-up a tenth of a second or more
    import pandas as pd
    import polars as pl
    import pyarrow as pa

    from feature_store.config import OfflineConfig, RedisOnlineConfig, SqliteOnlineConfig
    from feature_store.offline.push_log import PushLog
    from feature_store.query import ViewQuery

ProgressCallback = Callable[[str, int, int], None]  # (what, done, total)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - EPOCH) // timedelta(microseconds=1)


def from_us(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


def still_valid(recorded: dict[str, list[int]], current: dict[str, list[int]]) -> bool:
    """Whether data computed from sources with fingerprint ``recorded`` still holds for ``current``: every file
    it read is unchanged (new files are fine: materialization is incremental)."""
    return all(current.get(name) == list(value) for name, value in recorded.items())


@dataclass(frozen=True)
class MaterializeResult:
    view: str
    part: str  # "hop 1h" or "snapshot"
    table: str
    previous_watermark: datetime | None
    watermark: datetime
    rows_written: int
    rebuilt: bool


@dataclass(frozen=True)
class OnlineWritten:
    """What an engine's workers wrote of one view's online values (write_online): counts only."""

    entities: int
    tiles: int


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do, read by the code that depends on it (not only by tests)."""

    sql_entity_rows: bool  # entity rows may be given as a SQL query the engine runs
    materialized_tiles: bool  # keeps offline tiles, so training sets and online values reuse them
    sample_keys: bool  # can draw a sample of a view's entity keys (verify)
    # Encodes and writes online values from its own workers (write_online), never through this process, when the
    # online store takes writes from other hosts (OnlineStore.remote_writes); else they come here (online_tiles).
    writes_online: bool = False


class RetrievalJob(Protocol):
    def to_arrow(self) -> pa.Table: ...
    def to_df(self) -> pd.DataFrame: ...
    def to_polars(self) -> pl.DataFrame: ...
    def to_parquet(self, path: str | Path) -> None: ...
    def sql(self) -> str: ...


class OnlineTiles(Protocol):
    """One view's online values to write, as the engine computes them: per bucket of entities, one Arrow table per
    hop group of the plan (bounded groups a row per (keys, ``__pos``) in (keys, position) order, the cumulative
    group a row per entity), or for a snapshot view its latest rows (keys, ``__ts``, ``__cr``, columns)."""

    plan: ViewQuery
    end: int  # epoch us: the values hold the events available before it
    entities: int  # how many entities, perhaps estimated (progress only)

    def buckets(self) -> Iterator[list[pa.Table]]: ...


class OfflineEngine(Protocol):
    """What the store needs from an offline engine."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    def source_schema(self, source: BatchSource) -> dict[str, str]:
        """The source's columns and their engine-neutral types (feature_store/types.py)."""
        ...

    def fingerprint(self, source: BatchSource) -> dict[str, list[int]]:
        """What tells a changed source apart (file sizes and times); materialized data remembers it."""
        ...

    def historical_features(
        self, catalog: Catalog, entity_df: Any, features: Sequence[ResolvedFeature],
        available_before: datetime | None = None, pushed_before: datetime | None = None,
    ) -> RetrievalJob: ...

    def materialize(
        self, catalog: Catalog, views: Sequence[str], end: datetime, full: bool,
        progress: ProgressCallback | None = None,
    ) -> list[MaterializeResult]: ...

    def online_tiles(self, catalog: Catalog, view: str, end: int, since: int | None) -> OnlineTiles:
        """The view's online values as of ``end``: of every entity, or (``since``) of those with rows available in
        [since, end). Computed lazily, bucket by bucket, as they are asked for."""
        ...

    def write_online(self, catalog: Catalog, view: str, end: int, since: int | None,
                     store: RedisOnlineConfig | SqliteOnlineConfig, prefix: bytes) -> OnlineWritten:
        """The values ``online_tiles`` would hand over, encoded (tiles/columnar.py) and written under ``prefix`` by
        the engine's workers into the store ``store`` configures, each opening its own; returns once every write
        landed (an error otherwise: nothing is known to be written). Only when ``capabilities.writes_online``."""
        ...

    def sample_keys(self, catalog: Catalog, view: str, sample: int, seed: int) -> pa.Table:
        """Up to ``sample`` distinct entity keys of the view's source, repeatably for a seed."""
        ...

    def source_rows(self, source: BatchSource, start: datetime, end: datetime) -> pa.Table:
        """The source's rows with a timestamp in [start, end) (monitoring profiles a view's source)."""
        ...

    def newest_event(self, source: BatchSource) -> datetime | None:
        """The latest event timestamp of the source's rows (monitoring's freshness); None when it has none."""
        ...

    def drop_materialized(self) -> list[str]:
        """Drop every table the engine's materialization wrote (teardown); return their names."""
        ...

    def close(self) -> None: ...


def source_files(source: FileSource, repo: Path) -> list[str]:
    """The local files a FileSource's path or glob (relative to the repo) matches; at least one."""
    from feature_store.config import resolve_path

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


def source_fingerprint(source: BatchSource, repo: Path) -> dict[str, list[int]]:
    """Size and modification time of each file a source reads ({} for tables and queries).

    Materialized data remembers the fingerprint it was computed from; a file changed or removed
    since makes it stale (new files matching a glob are fine: materialization is incremental).
    """
    if not isinstance(source, FileSource):
        return {}
    stats = {name: Path(name).stat() for name in source_files(source, repo)}
    return {name: [stat.st_size, stat.st_mtime_ns] for name, stat in stats.items()}


def check_recorded(plan: ViewQuery, live: dict[str, str]) -> None:
    """The columns a view reads must still have the types recorded at apply (its plan is made of them)."""
    from feature_store.errors import SchemaError

    reads = {*plan.keys, plan.timestamp_field, *filter(None, [plan.source.batch.created_timestamp_field]),
             *plan.columns}
    for column in sorted(reads):
        recorded = plan.source.columns.get(column)
        if live.get(column) != recorded:
            now = live.get(column, "missing")
            raise SchemaError(
                f"source {plan.source.name!r} changed since apply: column {column!r} was {recorded}, is now "
                f"{now}. Run 'feature-store apply' to record the new columns (plan shows what it rebuilds).",
                source=plan.source.name, column=column,
            )


def create_engine(config: OfflineConfig, repo: Path, push_log: PushLog, spark: Any = None) -> OfflineEngine:
    """The engine ``offline_store.type`` names, built from its typed config (imported only when asked for).
    ``spark``: a running SparkSession to use instead of building one (notebooks, Databricks)."""
    from feature_store.config import DuckDBOfflineConfig

    if isinstance(config, DuckDBOfflineConfig):
        from feature_store.offline.duckdb.engine import DuckDBOfflineEngine

        return DuckDBOfflineEngine(config, repo, push_log)
    from feature_store.offline.spark.engine import SparkOfflineEngine

    return SparkOfflineEngine(config, repo, push_log, spark)
