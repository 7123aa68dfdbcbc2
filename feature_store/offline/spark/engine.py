"""The Spark offline engine: training sets and online values from the same compiled plans as DuckDB
(feature_store/query.py), computed by Spark's executors: training sets with the numpy kernel per key partition
(retrieval.py, kernel.py), online values as Spark aggregates of each partial's engine-neutral description
(online_tiles.py), encoded and written by the executors into a store they reach (online_writes.py), else handed to
the driver.

Offline tiles (``materialized_tiles=True``, tiles.py): ``materialize`` writes per view and hop the partial aggregates
of each (keys, tile) as parquet under ``warehouse`` (``tiles/<view>/hop=<us>/``, partitioned by buckets of at least a
day), incrementally from the previous watermark, committing a new manifest (watermark, definition signature, source
fingerprint) only once the data is in place, so a killed run leaves the previous state and the rerun continues
from it. Training sets read those tiles below the watermark and of the raw events only those after it (and the
few the kernel still reads one by one), with the values of the raw path; a changed definition or source file, or
``--full``, rebuilds them (docs/spark.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from feature_store.catalog import BatchSource, Catalog
from feature_store.definitions import FileSource
from feature_store.errors import EntityDataFrameError, FeatureStoreError, SchemaError
from feature_store.offline.engine import (
    Capabilities,
    MaterializeResult,
    OnlineTiles,
    OnlineWritten,
    ProgressCallback,
    check_recorded,
    from_us,
    source_fingerprint,
    to_us,
)
from feature_store.offline.entity_rows import check_key_types
from feature_store.offline.spark import sources
from feature_store.offline.spark.kernel import CHUNK_CONF, CHUNK_ROWS
from feature_store.offline.spark.online_tiles import SparkOnlineTiles
from feature_store.offline.spark.online_writes import write_view
from feature_store.offline.spark.retrieval import SparkRetrievalJob, entity_frame, final_frame, view_result
from feature_store.offline.spark.session import adopt_session, build_session
from feature_store.offline.spark.tiles import SparkTiles, StoredTiles
from feature_store.offline.spark.types import neutral
from feature_store.plan import view_signature
from feature_store.query import ViewQuery, compile_view
from feature_store.references import ResolvedFeature

if TYPE_CHECKING:
    from feature_store.config import RedisOnlineConfig, SparkOfflineConfig, SqliteOnlineConfig
    from feature_store.offline.push_log import PushLog


class SparkOfflineEngine:
    name: ClassVar[str] = "spark"
    capabilities: ClassVar[Capabilities] = Capabilities(sql_entity_rows=True, materialized_tiles=True,
                                                        sample_keys=True, writes_online=True)

    def __init__(self, config: SparkOfflineConfig, repo: Path, push_log: PushLog,
                 spark: SparkSession | None = None) -> None:
        self.config, self.repo, self.push_log = config, repo, push_log
        self._spark = adopt_session(spark) if spark is not None else None
        self._schemas: dict[str, dict[str, str]] = {}
        self._tiles: SparkTiles | None = None

    @property
    def spark(self) -> SparkSession:
        if self._spark is None:
            self._spark = build_session(self.config)
        return self._spark

    @property
    def partitions(self) -> int:
        return int(self.spark.conf.get("spark.sql.shuffle.partitions") or 8)

    @property
    def chunk_rows(self) -> int:
        """Rows a partition hands the kernel at once (more when one key has more: a key is never cut)."""
        return int(self.spark.conf.get(CHUNK_CONF, None) or CHUNK_ROWS)

    def close(self) -> None:
        """The session stays up: it is shared by every store of the process (Spark keeps one per JVM)."""

    # --- sources ------------------------------------------------------------------------------------------------

    def source_schema(self, source: BatchSource) -> dict[str, str]:
        key = source.model_dump_json()
        if key not in self._schemas:
            try:
                frame = sources.read_source(self.spark, source, self.repo)
            except FeatureStoreError:
                raise
            except Exception as exc:  # Spark's own (analysis, py4j): the source cannot be read
                raise SchemaError(f"source {source.name!r} cannot be read by Spark: {_first_line(exc)}",
                                  source=source.name) from exc
            self._schemas[key] = {f.name: neutral(f.dataType) for f in frame.schema.fields}
        return self._schemas[key]

    def fingerprint(self, source: BatchSource) -> dict[str, list[int]]:
        if not isinstance(source, FileSource) or "://" in source.path:
            return {}
        return source_fingerprint(source, self.repo)

    def _rows(self, source: BatchSource) -> DataFrame:
        return sources.read_source(self.spark, source, self.repo)

    def source_rows(self, source: BatchSource, start: datetime, end: datetime) -> pa.Table:
        ts = sources.epoch(source.timestamp_field, self.source_schema(source)[source.timestamp_field])
        return self._rows(source).where((ts >= to_us(start)) & (ts < to_us(end))).toArrow()

    def newest_event(self, source: BatchSource) -> datetime | None:
        row = self._rows(source).agg(F.max(source.timestamp_field)).first()
        value = None if row is None else row[0]
        return value if isinstance(value, datetime) else None

    # --- training sets ------------------------------------------------------------------------------------------

    def plan(self, catalog: Catalog, view: str, items: Sequence[ResolvedFeature]) -> ViewQuery:
        plan = compile_view(catalog, catalog.view(view), items)
        check_recorded(plan, self.source_schema(plan.source.batch))
        return plan

    def events(self, plan: ViewQuery, available_before: int | None = None, pushed_before: int | None = None,
               columns: Sequence[str] | None = None) -> DataFrame:
        rows = sources.rows_of(self.spark, plan, self.repo, self.push_log)
        return sources.events(rows, plan, available_before, pushed_before, columns)

    def historical_features(
        self, catalog: Catalog, entity_df: Any, features: Sequence[ResolvedFeature],
        available_before: datetime | None = None, pushed_before: datetime | None = None,
    ) -> SparkRetrievalJob:
        by_view: dict[str, list[ResolvedFeature]] = {}
        for item in features:
            by_view.setdefault(item.view.name, []).append(item)
        keys = list(dict.fromkeys(k for name in by_view for k in catalog.join_keys(catalog.view(name))))
        entities, passthrough, given = entity_frame(self.spark, entity_df, keys)
        clash = sorted(set(passthrough) & {f.output for f in features})
        if clash:
            raise EntityDataFrameError(f"entity columns {clash} have the same names as requested features; rename "
                                       "those columns or use full_feature_names=True.")
        cutoff = None if available_before is None else to_us(available_before)
        results = []
        for name, items in by_view.items():
            plan = self.plan(catalog, name, items)
            check_key_types(plan, {k: entities.schema[k].dataType.simpleString() for k in plan.keys})
            pushed = to_us(pushed_before) if pushed_before is not None and plan.source.push_source else None
            events = self.events(plan, cutoff, pushed)
            # Stored tiles hold everything available at their watermark: unusable for an earlier cutoff
            tiles = self.stored_tiles(catalog, plan) if cutoff is None else []
            results.append((plan, view_result(events, entities, plan, self.partitions, self.chunk_rows, tiles)))
        return SparkRetrievalJob(final_frame(entities, results, passthrough), given)

    # --- materialization ----------------------------------------------------------------------------------------

    @property
    def tiles(self) -> SparkTiles:
        if self._tiles is None:
            self._tiles = SparkTiles(self)
        return self._tiles

    def stored_tiles(self, catalog: Catalog, plan: ViewQuery) -> list[tuple[StoredTiles, DataFrame]]:
        """The view's usable stored tiles (same definition, same source files) of the requested hops."""
        if not plan.is_aggregation:
            return []
        files = self.fingerprint(plan.source.batch)
        stored = self.tiles.stored(plan, view_signature(catalog, plan.name), files)
        return [(tiles, self.tiles.read(tiles)) for tiles in stored.values()]

    def materialize(self, catalog: Catalog, views: Sequence[str], end: datetime, full: bool,
                    progress: ProgressCallback | None = None) -> list[MaterializeResult]:
        """Offline tiles of each aggregation view up to ``end`` (snapshot views keep none on Spark: their training
        sets read the latest rows from events)."""
        results: list[MaterializeResult] = []
        for name in views:
            definition = catalog.view(name)
            if not definition.is_aggregation:
                continue
            plan = self.plan(catalog, name, [ResolvedFeature(definition, f, f) for f in definition.feature_names])
            view_end = end
            if plan.source.push_source:  # never pass an event about to land in the log
                view_end = from_us(self.push_log.materialize_end(to_us(end), to_us(datetime.now(UTC))))
            files = self.fingerprint(plan.source.batch)
            results.extend(self.tiles.run(plan, view_signature(catalog, name), files, view_end, full, progress))
        return results

    def online_tiles(self, catalog: Catalog, view: str, end: int, since: int | None) -> OnlineTiles:
        definition = catalog.view(view)
        plan = self.plan(catalog, view, [ResolvedFeature(definition, f, f) for f in definition.feature_names])
        return SparkOnlineTiles(self, plan, end, since)

    def write_online(self, catalog: Catalog, view: str, end: int, since: int | None,
                     store: RedisOnlineConfig | SqliteOnlineConfig, prefix: bytes) -> OnlineWritten:
        """Encoded and written by the executors (online_writes.py); only counts come back."""
        definition = catalog.view(view)
        plan = self.plan(catalog, view, [ResolvedFeature(definition, f, f) for f in definition.feature_names])
        return write_view(self, plan, end, since, store, prefix)

    def sample_keys(self, catalog: Catalog, view: str, sample: int, seed: int) -> pa.Table:
        definition = catalog.view(view)
        first = definition.feature_names[0]
        plan = self.plan(catalog, view, [ResolvedFeature(definition, first, first)])
        keys = self.events(plan, columns=[]).select(*plan.keys).distinct()
        return keys.orderBy(F.rand(seed)).limit(sample).orderBy(*plan.keys).toArrow()

    def drop_materialized(self) -> list[str]:
        """Remove the offline tiles under ``warehouse`` (teardown); nothing else there is the engine's."""
        return self.tiles.drop()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
