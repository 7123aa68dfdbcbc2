"""Online materialization from Spark's executors: each partition encodes its entities' values with the online side's
own code (online/tiles/columnar.py: ``encode_values``) and writes them to the online store itself, in pipelined
batches; only a row of counts per partition comes back to the driver (offline/engine.py: ``write_online``).

The tiles are the ones SparkOnlineTiles hands the driver (online_tiles.py: the same events, the same Spark
aggregates, the same kernel code for sketches), brought together per entity instead of per bucket: every hop
group's tiles, with a group index ``__g`` and their fields renamed apart (``__f<g>_<field>``: groups may share
field names), and, for groups with kernel partials, the events of their tiles (``__ev`` true), are one union; it
is partitioned by the hash of the keys and sorted by (keys, group, tile or event, position, time), so that an
entity's rows of every group lie together, in the order ``encode_values`` and ``with_kernel_fields`` expect. A
snapshot view's latest rows are partitioned and sorted by key the same way.

Each partition cuts its sorted rows into chunks of about ``spark.featurestore.kernel.chunkRows`` rows, only
between entities; splits each chunk back into one table per group, adds the kernel fields, encodes, and writes the
values ``spark.featurestore.online.writeBatch`` entities (default 5,000) per pipelined write. The store is opened
once per partition from its typed config, shipped with the task: executors must reach it, so only stores that take
writes from other hosts qualify (``OnlineStore.remote_writes``: Redis and Redis Cluster; an SQLite file is the
driver's, written there). A task that fails and is retried writes the same values again: every write is a plain
overwrite of a value computed from the same events, so nothing is counted twice.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from feature_store.config import RedisOnlineConfig, SqliteOnlineConfig
from feature_store.errors import FeatureStoreError, OfflineStoreError, OnlineStoreUnavailable
from feature_store.kernel.tile_fields import computed_by_kernel, kernel_partials, with_kernel_fields
from feature_store.offline.engine import OnlineWritten
from feature_store.offline.spark.online_tiles import (
    group_events,
    kernel_columns,
    latest_frame,
    online_events,
    tile_frame,
)
from feature_store.online.tiles.columnar import encode_values
from feature_store.query import Group, ViewQuery

if TYPE_CHECKING:
    from feature_store.offline.spark.engine import SparkOfflineEngine

WRITE_BATCH = 5_000  # entities per pipelined write (the pipeline's BATCH on the driver path)
BATCH_CONF = "spark.featurestore.online.writeBatch"
GROUP, EVENT = "__g", "__ev"
COUNTS = pa.schema([("entities", pa.int64()), ("tiles", pa.int64())])  # a partition's one row back
COUNTS_DDL = "entities long, tiles long"


def field_column(index: int, field: str) -> str:
    """A group's field as it travels in the union (groups may have fields of the same name)."""
    return f"__f{index}_{field}"


def write_view(engine: SparkOfflineEngine, plan: ViewQuery, end: int, since: int | None,
               store: RedisOnlineConfig | SqliteOnlineConfig, prefix: bytes) -> OnlineWritten:
    """Compute, encode and write the view's online values as of ``end`` from the executors; return the counts."""
    if isinstance(store, SqliteOnlineConfig):  # a worker would open a file of its own at that path
        raise FeatureStoreError("an SQLite online store is a file of the driver's: Spark's executors cannot "
                                "write it (the driver writes SQLite values; see docs/spark.md)")
    keys = list(plan.keys)
    events = online_events(engine, plan, end, since)
    shared = plan.is_aggregation and (len(plan.groups) > 1 or any(kernel_partials(g) for g in plan.groups))
    if shared:  # read by every group's branch of the union: computed once
        events = events.persist()
    try:
        if plan.is_aggregation:
            rows = _union([frame for i, group in enumerate(plan.groups)
                           for frame in _group_frames(events, group, i, keys, end)])
            order = [c for c in (*keys, GROUP, EVENT, "__pos", "__ts", "__cr") if c in rows.columns]
        else:
            rows, order = latest_frame(events, plan, end), keys
        batch = int(engine.spark.conf.get(BATCH_CONF, None) or WRITE_BATCH)
        writer = PartitionWriter(plan, end, prefix, store, engine.chunk_rows, batch)
        parts = rows.repartition(engine.partitions, *keys).sortWithinPartitions(*order)
        try:
            counts = parts.mapInArrow(writer, COUNTS_DDL).collect()  # a row of counts per partition, nothing else
        except Exception as exc:  # Spark's own (py4j, a task's Python error): no write is known to have landed
            raise _failure(exc, plan.name) from exc
    finally:
        if shared:
            events.unpersist()
    return OnlineWritten(sum(int(row["entities"]) for row in counts), sum(int(row["tiles"]) for row in counts))


def _group_frames(events: DataFrame, group: Group, index: int, keys: list[str], end: int) -> list[DataFrame]:
    """The group's tiles (and the events of its kernel partials), marked with the group's index."""
    grouped = group_events(events, group, end)
    position = F.col("__pos") if group.hop else F.lit(0).cast("long").alias("__pos")
    marks = [F.lit(index).alias(GROUP), position]
    fields = [F.col(p).alias(field_column(index, p)) for partial in group.partials if not computed_by_kernel(partial)
              for p in partial.fields]
    frames = [tile_frame(grouped, group, keys).select(*keys, *marks, F.lit(False).alias(EVENT), *fields)]
    if kernel_partials(group):
        columns = [c for c in kernel_columns(group) if c not in keys]
        frames.append(grouped.select(*keys, *marks, F.lit(True).alias(EVENT), "__ts", "__cr", *columns))
    return frames


def _union(frames: Sequence[DataFrame]) -> DataFrame:
    union = frames[0]
    for frame in frames[1:]:
        union = union.unionByName(frame, allowMissingColumns=True)
    return union


def _failure(exc: Exception, view: str) -> FeatureStoreError:
    """The error of a failed write job, as the store's own error when a task could not reach the store."""
    text = str(exc)
    lines = [line.strip() for line in text.splitlines() if "Error" in line or "Exception" in line]
    ours = [line.partition(": ")[2] for line in lines if line.startswith("feature_store.errors.")]
    reason = ours[-1] if ours else lines[-1] if lines else text[:500]
    message = f"writing the online values of view {view!r} from Spark's executors failed: {reason}"
    if "OnlineStoreUnavailable" in text or "OnlineStoreConflict" in text:
        return OnlineStoreUnavailable(message + " (every executor must reach online_store.url)", view=view)
    return OfflineStoreError(message, view=view)


# --- on the executors ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionWriter:
    """What each partition runs (``mapInArrow``): its sorted rows, cut between entities, encoded and written."""

    plan: ViewQuery
    end: int
    prefix: bytes
    store: RedisOnlineConfig
    chunk_rows: int
    batch: int

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from feature_store.online.stores import open_online_store

        store = None
        entities = tiles = 0
        try:
            for chunk in key_chunks(batches, self.plan.keys, self.chunk_rows):
                values, count = encode_values(self.tables(chunk), self.prefix, self.plan, self.end)
                if store is None:  # once per partition, and not at all for an empty one
                    store = open_online_store(self.store, Path("."))
                for start in range(0, len(values), self.batch):
                    store.write(values.slice(start, min(start + self.batch, len(values))))
                entities += len(values)
                tiles += count
        finally:
            if store is not None:
                store.close()
        yield pa.RecordBatch.from_pylist([{"entities": entities, "tiles": tiles}], schema=COUNTS)

    def tables(self, chunk: pa.Table) -> list[pa.Table]:
        """The chunk as ``encode_values`` takes it: one table per group (the snapshot rows as they are)."""
        if not self.plan.is_aggregation:
            return [chunk]
        keys = list(self.plan.keys)
        group_of, is_event = chunk.column(GROUP), chunk.column(EVENT)
        tables = []
        for index, group in enumerate(self.plan.groups):
            mine = pc.equal(group_of, index)
            rows = chunk.filter(pc.and_(mine, pc.invert(is_event)))
            names = [*keys, *(["__pos"] if group.hop else [])]
            columns = {name: rows.column(name) for name in names}
            for partial in group.partials:
                if not computed_by_kernel(partial):
                    columns.update({f: rows.column(field_column(index, f)) for f in partial.fields})
            table = pa.table(columns)
            if kernel_partials(group):
                table = with_kernel_fields(table, chunk.filter(pc.and_(mine, is_event)), group, keys)
            tables.append(table.select([*names, *(f for f in group.fields if f in table.column_names)]))
        return tables


def key_chunks(batches: Iterator[pa.RecordBatch], keys: Sequence[str], chunk_rows: int) -> Iterator[pa.Table]:
    """Rows sorted by key, as tables of about ``chunk_rows`` rows cut only where a key starts (an entity with more
    rows is gathered whole); only the last batch gathered is looked at for a cut, so gathering stays linear."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        previous = pending[-1] if pending else None
        pending.append(batch)
        rows += batch.num_rows
        if rows < chunk_rows:
            continue
        start = _last_key_start(batch, previous, keys)
        cut = rows - batch.num_rows + start
        if start < 0 or cut == 0:  # no key starts here (or only the first): keep gathering
            continue
        table = pa.Table.from_batches(pending)
        yield table.slice(0, cut)
        rest = table.slice(cut)
        pending, rows = [b for b in rest.to_batches() if b.num_rows], rest.num_rows
    if rows:
        yield pa.Table.from_batches(pending)


def _last_key_start(batch: pa.RecordBatch, previous: pa.RecordBatch | None, keys: Sequence[str]) -> int:
    """Where in ``batch`` its last key starts, -1 when all its rows continue the previous batch's last key."""
    rows = pa.Table.from_batches([batch])
    if previous is not None:
        rows = pa.concat_tables([pa.Table.from_batches([previous.slice(previous.num_rows - 1)]), rows])
    changed = np.zeros(rows.num_rows, dtype=bool)
    changed[0] = previous is None
    for key in keys:
        column = rows.column(key).combine_chunks()
        differs = pc.not_equal(column.slice(1), column.slice(0, rows.num_rows - 1)).fill_null(True)
        changed[1:] |= np.asarray(differs.to_numpy(zero_copy_only=False), dtype=bool)
    found = np.flatnonzero(changed)
    if not len(found):
        return -1
    return int(found[-1]) - (rows.num_rows - batch.num_rows)
