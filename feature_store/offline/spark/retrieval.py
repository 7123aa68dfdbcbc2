"""Training sets on Spark: per requested view, its events and distinct queries partitioned by key and evaluated by
the numpy kernel in each partition (offline/spark/kernel.py), then joined back onto the entity rows in input order.
Nothing is collected to the driver but what ``to_arrow``/``to_df`` return."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from feature_store.errors import EntityDataFrameError
from feature_store.offline.entity_rows import ROW_ID, TIMESTAMP_COLUMN, ArrowResult, prepare
from feature_store.offline.entity_rows import to_arrow as entity_arrow
from feature_store.offline.spark import kernel
from feature_store.offline.spark.online_tiles import floor_col
from feature_store.offline.spark.sources import all_of
from feature_store.offline.spark.types import arrow as arrow_type
from feature_store.offline.spark.types import spark as spark_type
from feature_store.query import FeatureRequest, ViewQuery

if TYPE_CHECKING:
    from feature_store.offline.spark.tiles import StoredTiles


class SparkRetrievalJob(ArrowResult):
    """A training set as a Spark DataFrame: built lazily, computed by the executors when a result is asked for."""

    def __init__(self, frame: DataFrame, given: pa.Schema | None = None) -> None:
        self._frame = frame
        self._given = given  # the entity rows' own types, when they came from the driver

    def to_spark(self) -> DataFrame:
        return self._frame

    def to_arrow(self) -> pa.Table:
        """The entity columns come back with their own types (Spark keeps times in UTC microseconds)."""
        table = self._frame.toArrow()
        if self._given is None:
            return table
        for field in self._given:
            index = table.schema.get_field_index(field.name)
            if index >= 0 and table.schema.field(index).type != field.type:
                table = table.set_column(index, field.name, table.column(index).cast(field.type))
        return table

    def to_parquet(self, path: str | Path) -> None:
        """Written by the executors: a folder of parquet files (Spark's layout), replaced if it exists."""
        self._frame.write.mode("overwrite").parquet(str(path))

    def sql(self) -> str:
        """Spark's plan of the job (this engine builds DataFrames, not SQL text)."""
        return str(self._frame._jdf.queryExecution().toString())


def entity_frame(spark: SparkSession, entity_df: Any,
                 join_keys: Sequence[str]) -> tuple[DataFrame, list[str], pa.Schema | None]:
    """The entity rows as a Spark DataFrame with ``__row_id`` (input order) and ``__t`` (epoch us), and the
    columns passed through. A Spark DataFrame or a query over the session's catalog stays on the cluster."""
    if isinstance(entity_df, str) and entity_df.strip().split(None, 1)[0].upper() in ("SELECT", "WITH", "FROM"):
        entity_df = spark.sql(entity_df)
    if isinstance(entity_df, DataFrame):
        return (*_spark_entities(entity_df, join_keys), None)
    table = prepare(entity_arrow(entity_df, engine=", a Spark DataFrame"), join_keys)
    column = table.column(TIMESTAMP_COLUMN)
    if pa.types.is_date(column.type):
        column = column.cast(pa.timestamp("us"))
    elif column.type.unit == "ns":  # sub-microsecond digits truncated toward the past (docs/semantics.md)
        column = pc.floor_temporal(column, unit="microsecond")
    micros = column.cast(pa.timestamp("us", tz=getattr(column.type, "tz", None))).cast(pa.int64())
    table = table.append_column("__t", micros)
    passthrough = [c for c in table.column_names if c not in (ROW_ID, "__t")]
    return spark.createDataFrame(table), passthrough, table.select(passthrough).schema


def _spark_entities(frame: DataFrame, join_keys: Sequence[str]) -> tuple[DataFrame, list[str]]:
    names = frame.columns
    missing = [c for c in [*join_keys, TIMESTAMP_COLUMN] if c not in names]
    if missing:
        raise EntityDataFrameError(
            f"the entity rows lack column(s) {missing}; they need the join keys {list(join_keys)} of the requested "
            f"views and an {TIMESTAMP_COLUMN!r} column. Columns present: {sorted(names)}.", missing=missing)
    kind = frame.schema[TIMESTAMP_COLUMN].dataType
    if not isinstance(kind, T.TimestampType | T.TimestampNTZType | T.DateType):
        raise EntityDataFrameError(f"entity column {TIMESTAMP_COLUMN!r} has type {kind.simpleString()}, not a "
                                   "timestamp; convert it.", column=TIMESTAMP_COLUMN)
    out = frame.withColumn(ROW_ID, F.monotonically_increasing_id()).withColumn(
        "__t", F.unix_micros(F.col(TIMESTAMP_COLUMN).cast("timestamp")))
    return out, list(names)


def view_result(events: DataFrame, entities: DataFrame, plan: ViewQuery, partitions: int,
                chunk_rows: int = kernel.CHUNK_ROWS, tiles: Sequence[tuple[StoredTiles, DataFrame]] = ()) -> DataFrame:
    """Feature values of one view for the distinct (keys, t) of the entity rows: events and queries of a key in one
    partition, evaluated by the kernel. With stored tiles (offline/spark/tiles.py) a key's partition holds its
    tiles below each watermark, and of the events below them only those the kernel still reads (see
    ``_events_needed``)."""
    keys = list(plan.keys)
    queries = (entities.where(all_of([F.col(k).isNotNull() for k in keys])).select(*keys, "__t").distinct()
               .withColumn(kernel.QUERY, F.lit(True)))
    if tiles:
        events = _events_needed(events, queries, plan, [stored for stored, _ in tiles])
    rows = events.withColumn(kernel.QUERY, F.lit(False)).unionByName(queries, allowMissingColumns=True)
    for stored, frame in tiles:
        hop = stored.hop
        kept = frame.where(F.col("__pos") + hop <= stored.watermark).join(queries.select(*keys).distinct(), keys,
                                                                           "left_semi")
        rows = rows.unionByName(kept.select(*keys, "__pos", *(F.col(f).alias(kernel.FIELD + f) for f in stored.fields),
                                            F.lit(hop).alias(kernel.TILE), F.lit(False).alias(kernel.QUERY)),
                                allowMissingColumns=True)
    fields = [T.StructField(k, spark_type(t)) for k, t in zip(keys, plan.key_types, strict=True)]
    fields.append(T.StructField("__t", T.LongType()))
    fields += [T.StructField(r.output, spark_type(r.output_type)) for r in plan.features]
    schema = T.StructType(fields)
    arrow_schema = pa.schema([pa.field(k, arrow_type(t)) for k, t in zip(keys, plan.key_types, strict=True)]
                             + [pa.field("__t", pa.int64())]
                             + [pa.field(r.output, arrow_type(r.output_type)) for r in plan.features])
    stored_tiles = {stored.hop: (stored.watermark, stored.fields) for stored, _ in tiles}
    run = functools.partial(kernel.evaluate_partition, plan=plan, schema=arrow_schema, chunk_rows=chunk_rows,
                            tiles=stored_tiles)
    return rows.repartition(partitions, *keys).sortWithinPartitions(*keys).mapInArrow(run, schema)


def _events_needed(events: DataFrame, queries: DataFrame, plan: ViewQuery,
                   tiles: Sequence[StoredTiles]) -> DataFrame:
    """The events the kernel reads beside stored tiles: those from the lowest watermark on, late ones (never in a
    tile), and those in the tile a query falls in (its partial current tile). Every other event below the
    watermarks is in a stored tile already, so a key's old events reach its partition pre-aggregated (a hot key's
    events no longer gather in one task). All of them when a requested hop has no stored tiles or a function reads
    events rather than tiles (distinct counts, sketches, LastK)."""
    hops = sorted({r.hop for r in plan.features})
    covered = {t.hop for t in tiles}
    if any(h not in covered for h in hops) or not all(r.function.offline_tiles for r in plan.features):
        return events
    keys = list(plan.keys)
    below = F.col("__ts") < min(t.watermark for t in tiles)
    late = functools.reduce(Column.__or__, [F.col("__cr") >= floor_col(F.col("__ts"), h) + h for h in hops])
    newer = events.where(~below | late)
    older = events.where(below & ~late)
    seen = []
    for i, hop in enumerate(hops):  # left joins on distinct (keys, tile): no event twice
        at = queries.select(*keys, floor_col(F.col("__t"), hop).alias(f"__qp{i}")).distinct() \
            .withColumn(f"__m{i}", F.lit(True))
        older = older.withColumn(f"__qp{i}", floor_col(F.col("__ts"), hop)).join(at, [*keys, f"__qp{i}"], "left")
        seen.append(F.col(f"__m{i}").isNotNull())
    older = older.where(functools.reduce(Column.__or__, seen)).select(*events.columns)
    return newer.unionByName(older)


def final_frame(entities: DataFrame, results: Sequence[tuple[ViewQuery, DataFrame]],
                passthrough: Sequence[str]) -> DataFrame:
    """Entity rows in input order with one column per feature; keys without events get the empty value."""
    out = entities
    for i, (plan, result) in enumerate(results):
        renamed = result.select(*(F.col(k).alias(f"__k{i}_{k}") for k in plan.keys), F.col("__t").alias(f"__t{i}"),
                                *(F.col(r.output) for r in plan.features))
        on = [out[k] == renamed[f"__k{i}_{k}"] for k in plan.keys] + [out["__t"] == renamed[f"__t{i}"]]
        out = out.join(renamed, all_of(on), "left").drop(*(f"__k{i}_{k}" for k in plan.keys), f"__t{i}")
    selects = [F.col(c) for c in passthrough]
    for plan, _ in results:
        selects += [_filled(r) for r in plan.features]
    return out.orderBy(ROW_ID).select(*selects)


def _filled(request: FeatureRequest) -> Column:
    kind = spark_type(request.output_type)
    value = F.col(request.output)
    if request.definition is not None:
        empty = request.function.empty(request.output_type)
        if isinstance(empty, list):
            value = F.coalesce(value, F.array().cast(kind))
        elif empty is not None:
            value = F.coalesce(value, F.lit(empty).cast(kind))
    return value.cast(kind).alias(request.output)
