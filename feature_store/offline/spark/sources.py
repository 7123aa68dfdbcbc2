"""How Spark reads a view's rows: a FileSource's files (local paths or any URI Spark's Hadoop layer reads), a
SparkSource's catalog table or query, a push source's logged events (tail and compacted parts, counted once per push
id as offline/duckdb/push_log.py does), and the *events* of a plan: keys, ``__ts``, ``__cr`` (epoch microseconds)
and the columns its features read."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from feature_store import types
from feature_store.definitions import FileSource, SparkSource
from feature_store.errors import DefinitionError
from feature_store.offline.engine import source_files
from feature_store.offline.spark.types import spark as spark_type
from feature_store.query import CREATED, PUSH_ID, PUSH_ROW, PUSH_ROWS, PUSHED_AT, PUSHED_ROW

if TYPE_CHECKING:
    from feature_store.catalog import BatchSource
    from feature_store.offline.push_log import PushLog
    from feature_store.query import ViewQuery

META = {PUSHED_AT: T.LongType(), PUSH_ID: T.StringType(), PUSH_ROW: T.LongType(), PUSH_ROWS: T.LongType()}


def source_paths(source: FileSource, repo: Path) -> list[str]:
    """A URI as it is (Spark lists it); a local path or glob resolved against the repo, which must match a file."""
    if "://" in source.path:
        return [source.path]
    return source_files(source, repo)


def read_source(spark: SparkSession, source: BatchSource, repo: Path) -> DataFrame:
    if isinstance(source, SparkSource):
        return catalog_rows(spark, source)
    if not isinstance(source, FileSource):
        raise DefinitionError(
            f"source {source.name!r} is a DuckDBSource, which the Spark engine cannot read: use a FileSource (parquet "
            "or csv files, local or any URI Spark reads), or offline_store type duckdb.", source=source.name)
    paths = source_paths(source, repo)
    if source.file_format == "csv":
        return spark.read.option("header", "true").option("inferSchema", "true").csv(paths)
    return with_nanos_as_timestamps(spark.read.option("mergeSchema", "true").parquet(*paths), nanos_columns(paths))


def nanos_columns(paths: Sequence[str]) -> dict[str, bool]:
    """The nanosecond timestamp columns of local parquet files, from their footers: name -> whether it is an
    instant (with a time zone). Spark reads them as longs (session.py: NANOS_AS_LONG) and cannot tell them from
    int64 columns; files behind a URI are not looked into."""
    found: dict[str, bool] = {}
    for path in paths:
        if "://" not in path:
            stat = os.stat(path)
            found.update(_footer_nanos(path, stat.st_size, stat.st_mtime_ns))
    return found


@functools.lru_cache(maxsize=4096)
def _footer_nanos(path: str, size: int, mtime_ns: int) -> dict[str, bool]:
    """One file's nanosecond columns; cached by size and time, as a source is read for every training set."""
    return {field.name: field.type.tz is not None for field in pq.read_schema(path)
            if pa.types.is_timestamp(field.type) and field.type.unit == "ns"}


def with_nanos_as_timestamps(frame: DataFrame, nanos: Mapping[str, bool]) -> DataFrame:
    """Nanosecond longs as microsecond timestamps, truncated toward the past (floor division, exact in longs: T - 1
    ns is T - 1 us, docs/semantics.md); an instant as a timestamp, a naive one as a timestamp without time zone."""
    if not nanos:
        return frame
    out = []
    for name in frame.columns:
        if name in nanos and isinstance(frame.schema[name].dataType, T.LongType):
            micros = F.expr(f"div(`{name}` - pmod(`{name}`, 1000), 1000)")
            value = F.timestamp_micros(micros)
            out.append((value if nanos[name] else value.cast(T.TimestampNTZType())).alias(name))
        else:
            out.append(F.col(name))
    return frame.select(*out)


def catalog_rows(spark: SparkSession, source: SparkSource) -> DataFrame:
    """A catalog table, or the source's query as a subquery: only a query parses there, so a statement that is
    not one (DDL, several statements) fails to parse instead of running when the source is read."""
    if source.table is not None:
        return spark.table(source.table)
    query = (source.query or "").strip().removesuffix(";")
    return spark.sql(f"SELECT * FROM (\n{query}\n) AS __fs_source")


def epoch(column: str, kind: str) -> Column:
    """Microseconds since the epoch, UTC (the session's time zone is UTC: naive timestamps are UTC)."""
    if kind == "int64":  # only the push sources' availability column: already epoch us
        return F.col(column)
    return F.unix_micros(F.col(column).cast("timestamp"))  # dates and naive timestamps as UTC, instants as they are


def pushed_rows(spark: SparkSession, log: PushLog, source: str, columns: Mapping[str, str]) -> DataFrame | None:
    """The events logged for a push source, typed as the batch source's columns; each (push id, row) once, from
    the earliest complete copy (offline/duckdb/push_log.py holds the same rules as SQL)."""
    snapshot = log.snapshot(source)
    if not snapshot:
        return None
    text = T.StructType([*(T.StructField(c, T.StringType()) for c in columns),
                         *(T.StructField(c, t) for c, t in META.items())])
    parts: list[DataFrame] = []
    if snapshot.jsonl:
        parts.append(spark.read.schema(text).option("mode", "PERMISSIVE").json(list(snapshot.jsonl)))
    if snapshot.parquet:
        compacted = spark.read.option("mergeSchema", "true").parquet(*snapshot.parquet)
        parts.append(spark.createDataFrame([], text).unionByName(compacted, allowMissingColumns=True)
                     .select(*text.fieldNames()))
    logged = parts[0] if len(parts) == 1 else parts[0].unionByName(parts[1])
    logged = logged.where(F.col(PUSHED_AT).isNotNull())  # a line torn by a crash reads as nulls
    plain = logged.where(F.col(PUSH_ID).isNull())
    ided = logged.where(F.col(PUSH_ID).isNotNull())
    complete = (ided.groupBy(PUSH_ID, PUSHED_AT, PUSH_ROWS).agg(F.countDistinct(PUSH_ROW).alias("__n"))
                .where(F.col("__n") == F.col(PUSH_ROWS)).groupBy(PUSH_ID).agg(F.min(PUSHED_AT).alias("__fs_at")))
    kept = ided.join(complete, (ided[PUSH_ID] == complete[PUSH_ID]) & (ided[PUSHED_AT] == complete["__fs_at"]),
                     "left_semi")
    once = kept.dropDuplicates([PUSH_ID, PUSH_ROW])
    rows = plain.unionByName(once)
    typed = [_cast_text(c, kind) for c, kind in columns.items()]
    return rows.select(*typed, F.col(PUSHED_AT).alias(CREATED), F.lit(True).alias(PUSHED_ROW))


def _cast_text(column: str, kind: str) -> Column:
    """Logged text back to the column's type: timestamps are ISO-8601 with their offset, floats shortest-exact."""
    if kind == "timestamp":  # naive: logged as wall-clock UTC
        return F.to_timestamp_ntz(F.col(column)).alias(column)
    return F.col(column).cast(spark_type(kind)).alias(column)


def rows_of(spark: SparkSession, plan: ViewQuery, repo: Path, log: PushLog) -> DataFrame:
    """The view's rows: its batch source, and for a push source its logged events, with ``__fs_created`` (when each
    row became available: created or pushed) and ``__fs_pushed``."""
    source = plan.source
    batch = read_source(spark, source.batch, repo)
    if source.push_source is None:
        return batch
    created = source.batch.created_timestamp_field or source.timestamp_field
    rows = batch.select(*source.columns, epoch(created, source.columns[created]).alias(CREATED),
                        F.lit(False).alias(PUSHED_ROW))
    pushed = pushed_rows(spark, log, source.push_source, source.columns)
    return rows if pushed is None else rows.unionByName(pushed)


def events(rows: DataFrame, plan: ViewQuery, available_before: int | None, pushed_before: int | None,
           columns: Sequence[str] | None = None) -> DataFrame:
    """Events with usable keys and timestamps: keys, ``__ts``, ``__cr`` and value columns (decimals as doubles,
    NaN as null: docs/semantics.md)."""
    columns = plan.columns if columns is None else columns
    ts = epoch(plan.timestamp_field, plan.source.type_of(plan.timestamp_field))
    created_field = plan.created_field
    cr = epoch(created_field, plan.source.type_of(created_field)) if created_field else ts
    values = [_value(c, plan.source.type_of(c)) for c in columns]
    keep = [F.col(k).isNotNull() for k in plan.keys] + [F.col(plan.timestamp_field).isNotNull()]
    if created_field:
        keep.append(F.col(created_field).isNotNull())
    out = rows.where(all_of(keep)).select(*plan.keys, ts.alias("__ts"), cr.alias("__cr"), *values,
                                        *([F.col(PUSHED_ROW)] if plan.source.push_source else []))
    if available_before is not None:
        before = (F.col("__ts") < available_before) & (F.col("__cr") < available_before)
        if pushed_before is not None:  # what an online value holds between materializations
            before = before | (F.col(PUSHED_ROW) & (F.col("__ts") < pushed_before) & (F.col("__cr") < pushed_before))
        out = out.where(before)
    return out.drop(PUSHED_ROW) if plan.source.push_source else out


def _value(column: str, kind: str) -> Column:
    if types.read_as_float(kind):
        return F.col(column).cast("double").alias(column)
    if types.is_float(kind):
        return F.when(F.isnan(F.col(column)), F.lit(None)).otherwise(F.col(column)).alias(column)
    return F.col(column)


def all_of(conditions: list[Column]) -> Column:
    out = conditions[0]
    for condition in conditions[1:]:
        out = out & condition
    return out
