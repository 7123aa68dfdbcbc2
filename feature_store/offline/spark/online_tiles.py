"""A view's online values as Spark computes them, bucket by bucket (offline/engine.py: OnlineTiles).

Every tile holds exactly the events available before ``end`` (``__cr < end`` and ``__ts < end``), as on DuckDB
(offline/duckdb/online_tiles.py): per hop group, (keys, position) tiles of its partial aggregates in (keys,
position) order, one row per key for the cumulative group; for a snapshot view the latest row per key. The
aggregates are the engine-neutral ``Compute`` descriptions of each partial (aggregations/partials.py) compiled to
Spark aggregate expressions here; fields no SQL computes (sketches) come from each tile's events through the same
numpy code as on DuckDB (kernel/tile_fields.py).

The Spark frames (``online_events``, ``group_events``, ``tile_frame``, ``latest_frame``) serve both ways of writing
them. Into a store the executors reach (Redis), online_writes.py brings them together per entity and the executors
encode and write them. Into SQLite, a file of the driver's, ``SparkOnlineTiles`` hashes entities into buckets of
about ENTITIES_PER_BUCKET; each bucket's tables are computed by the executors and brought to the driver, where the
online side encodes and writes them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from feature_store.aggregations import FLOAT, INT
from feature_store.aggregations.partials import Compute
from feature_store.kernel.tile_fields import computed_by_kernel, kernel_partials, with_kernel_fields
from feature_store.query import Group, ViewQuery

if TYPE_CHECKING:
    from feature_store.offline.spark.engine import SparkOfflineEngine

ENTITIES_PER_BUCKET = 200_000


def floor_col(column: Column, hop: int) -> Column:
    """Round down to a multiple of hop, for negative times too (pmod is a floor modulo)."""
    return column - F.pmod(column, F.lit(hop))


def compute_col(compute: Compute) -> Column:
    """An engine-neutral aggregate over a tile's events as a Spark aggregate expression."""
    c = F.col(compute.column) if compute.column else None
    op = compute.op
    if op == "max_ts":
        return F.max("__ts")
    if op == "count":
        return F.count(c) if c is not None else F.count(F.lit(1))
    if c is None:
        raise ValueError(f"{op} needs a column")
    if op in ("sum", "min", "max", "avg"):
        return {"sum": F.sum, "min": F.min, "max": F.max, "avg": F.avg}[op](c)
    if op == "m2":
        return F.var_pop(c) * F.count(c)
    latest = F.when(c.isNotNull(), F.struct(F.col("__ts").alias("t"), F.col("__cr").alias("c"), c.alias("v")))
    part = compute.part or "v"
    if op == "latest":  # ties on (ts, created) go to the greatest value, as struct order has it
        return F.max(latest).getField(part)
    if op == "distinct":  # sorted: the same list whatever order the events came in; NULL when none
        values = F.array_sort(F.collect_set(c))
        return F.when(F.size(values) > 0, values)
    if op == "top_latest":
        top = F.slice(F.sort_array(F.collect_list(latest), asc=False), 1, int(compute.param or 1))
        return F.transform(top, lambda x: x.getField(part))
    raise ValueError(f"Spark cannot compute {op!r} as an aggregate")


def field_cols(group: Group) -> list[Column]:
    """The group's fields Spark computes, each cast to the type its storage keeps."""
    out = []
    for partial in group.partials:
        if computed_by_kernel(partial):
            continue
        for k, name in enumerate(partial.fields):
            value = compute_col(partial.of.compute(partial)[k])
            storage = group.storages[group.at(name)]
            if storage in (INT, FLOAT):
                value = value.cast("long" if storage == INT else "double")
            out.append(value.alias(name))
    return out


def online_events(engine: SparkOfflineEngine, plan: ViewQuery, end: int, since: int | None) -> DataFrame:
    """The view's events available before ``end``: of every entity, or (``since``) of the entities with rows that
    became available in [since, end)."""
    events = engine.events(plan).where((F.col("__cr") < end) & (F.col("__ts") < end))
    if since is not None:  # the entities with rows that became available since the last run
        changed = events.where(F.greatest("__ts", "__cr") >= since).select(*plan.keys).distinct()
        events = events.join(changed, list(plan.keys), "left_semi")
    return events


def group_events(events: DataFrame, group: Group, end: int) -> DataFrame:
    """The events a group's tiles hold at ``end``: a bounded group's those some window still reaches, each with its
    tile's position ``__pos``; the cumulative group's all."""
    if not group.hop:
        return events
    reach = end - group.window
    reach -= reach % group.hop
    return events.where(F.col("__ts") >= reach).withColumn("__pos", floor_col(F.col("__ts"), group.hop))


def tile_frame(events: DataFrame, group: Group, keys: list[str]) -> DataFrame:
    """One row per (keys, ``__pos``) tile (per key, for the cumulative group) of ``group_events``: the fields Spark
    computes (not the kernel's, which come from the tile's events: kernel/tile_fields.py)."""
    by = [*keys, *(["__pos"] if group.hop else [])]
    return events.groupBy(*by).agg(*field_cols(group))


def kernel_columns(group: Group) -> list[str]:
    """The event columns the group's kernel partials read (none: the group has no kernel partials)."""
    return sorted({p.column for p in kernel_partials(group) if p.column})


def latest_frame(events: DataFrame, plan: ViewQuery, end: int) -> DataFrame:
    """A snapshot view's latest row per key available before ``end`` (keys, ``__ts``, ``__cr``, columns)."""
    order = [F.col("__ts").desc(), F.col("__cr").desc(), *(F.col(c).desc_nulls_last() for c in plan.field_order)]
    ranked = events.where(F.greatest("__ts", "__cr") < end).withColumn(
        "__rank", F.row_number().over(Window.partitionBy(*plan.keys).orderBy(*order)))
    return ranked.where(F.col("__rank") == 1).select(*plan.keys, "__ts", "__cr", *plan.columns)


class SparkOnlineTiles:
    def __init__(self, engine: SparkOfflineEngine, plan: ViewQuery, end: int, since: int | None) -> None:
        self.plan, self.end = plan, end
        self.events = online_events(engine, plan, end, since).persist()
        self.entities = self.events.select(*plan.keys).distinct().count()

    def buckets(self) -> Iterator[list[pa.Table]]:
        keys = list(self.plan.keys)
        count = max(1, math.ceil(self.entities / ENTITIES_PER_BUCKET))
        try:
            for bucket in range(count):
                part = self.events if count == 1 else self.events.where(
                    F.pmod(F.hash(*keys), F.lit(count)) == bucket)
                if not self.plan.is_aggregation:
                    yield [latest_frame(part, self.plan, self.end).orderBy(*keys).toArrow()]
                else:
                    yield [self._group(part, group) for group in self.plan.groups]
        finally:
            self.events.unpersist()

    def _group(self, events: DataFrame, group: Group) -> pa.Table:
        keys = list(self.plan.keys)
        names = [*keys, *(["__pos"] if group.hop else [])]
        events = group_events(events, group, self.end)
        table = tile_frame(events, group, keys).orderBy(*names).toArrow()
        if kernel_partials(group):
            rows = events.select(*names, "__ts", "__cr", *kernel_columns(group)).orderBy(*names, "__ts", "__cr")
            table = with_kernel_fields(table, rows.toArrow(), group, keys)
        return table.select([*names, *(f for f in group.fields if f in table.column_names)])
