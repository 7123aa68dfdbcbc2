"""The DuckDB offline engine: sources and their types, training sets, offline tiles, and online tiles."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import duckdb
import pyarrow as pa

from feature_store.catalog import BatchSource, Catalog
from feature_store.config import DuckDBOfflineConfig, RedisOnlineConfig, SqliteOnlineConfig, resolve_path
from feature_store.definitions import DuckDBSource, FeatureView
from feature_store.errors import EntityDataFrameError, OfflineStoreError, SchemaError
from feature_store.identifiers import quote, quote_literal
from feature_store.offline.duckdb import entity_input
from feature_store.offline.duckdb.entity_input import fetch_arrow
from feature_store.offline.duckdb.materialize import Materializer, table_columns
from feature_store.offline.duckdb.online_tiles import DuckDBOnlineTiles
from feature_store.offline.duckdb.push_log import pushed_sql
from feature_store.offline.duckdb.retrieval import DuckDBRetrievalJob
from feature_store.offline.duckdb.scratch import scratch_cursor
from feature_store.offline.duckdb.sources import relation_sql
from feature_store.offline.duckdb.sql import Compiled, TileTable, epoch_sql, events_sql, keys_sql
from feature_store.offline.duckdb.types import neutral
from feature_store.offline.engine import (
    Capabilities,
    MaterializeResult,
    OnlineWritten,
    ProgressCallback,
    check_recorded,
    from_us,
    source_fingerprint,
    to_us,
)
from feature_store.offline.entity_rows import check_key_types
from feature_store.offline.push_log import PushLog
from feature_store.plan import view_signature
from feature_store.query import CREATED, PUSHED_ROW, ViewQuery, compile_view
from feature_store.references import ResolvedFeature


class DuckDBOfflineEngine:
    name: ClassVar[str] = "duckdb"
    capabilities: ClassVar[Capabilities] = Capabilities(sql_entity_rows=True, materialized_tiles=True,
                                                        sample_keys=True, writes_online=False)

    def __init__(self, config: DuckDBOfflineConfig, repo: Path, push_log: PushLog) -> None:
        self.config, self.repo, self.push_log = config, repo, push_log
        self._con: duckdb.DuckDBPyConnection | None = None
        self._lock = threading.Lock()
        self._schemas: dict[str, dict[str, str]] = {}

    # --- connection --------------------------------------------------------------------------

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            if self._con is None:
                path = resolve_path(self.repo, self.config.path)
                path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    self._con = duckdb.connect(str(path))
                except duckdb.Error as exc:
                    raise OfflineStoreError(f"cannot open the offline DuckDB database {path}: {exc}") from exc
                self._con.execute("SET TimeZone = 'UTC'")
                # DuckDB's own bar, printed over the CLI's: materialize reports its progress itself
                self._con.execute("SET enable_progress_bar = false")
                if self.config.memory_limit:
                    self._con.execute(f"SET memory_limit = {quote_literal(self.config.memory_limit)}")
                if self.config.threads:
                    self._con.execute(f"SET threads = {int(self.config.threads)}")
            return self._con

    def cursor(self) -> duckdb.DuckDBPyConnection:
        cur = self.con.cursor()
        cur.execute("SET TimeZone = 'UTC'")
        return cur

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def _describe_con(self, source: BatchSource) -> duckdb.DuckDBPyConnection:
        """Where a source's schema is read: files need no database file, which stays closed."""
        if isinstance(source, DuckDBSource):
            return self.con
        return scratch_cursor()

    # --- sources -----------------------------------------------------------------------------

    def source_schema(self, source: BatchSource) -> dict[str, str]:
        """Column types of a batch source, engine-neutral (feature_store/types.py)."""
        key = source.model_dump_json()
        if key not in self._schemas:
            relation = relation_sql(source, self.repo)
            try:
                rows = self._describe_con(source).execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
            except duckdb.Error as exc:
                raise SchemaError(
                    f"source {source.name!r} cannot be read by DuckDB: {exc}", source=source.name
                ) from exc
            self._schemas[key] = {str(r[0]): neutral(str(r[1])) for r in rows}
        return self._schemas[key]

    def source_rows(self, source: BatchSource, start: datetime, end: datetime) -> pa.Table:
        column = quote(source.timestamp_field)
        sql = (f"SELECT * FROM {relation_sql(source, self.repo)} WHERE {column} >= ?::TIMESTAMPTZ "
               f"AND {column} < ?::TIMESTAMPTZ")
        try:
            return fetch_arrow(self._describe_con(source).sql(sql, params=[start, end]))
        except duckdb.Error as exc:
            raise SchemaError(f"source {source.name!r} cannot be read by DuckDB: {exc}", source=source.name) from exc

    def newest_event(self, source: BatchSource) -> datetime | None:
        column = quote(source.timestamp_field)
        try:
            row = self._describe_con(source).execute(
                f"SELECT max({column}) FROM {relation_sql(source, self.repo)}").fetchone()
        except duckdb.Error as exc:
            raise SchemaError(f"source {source.name!r} cannot be read by DuckDB: {exc}", source=source.name) from exc
        value = row[0] if row else None
        if not isinstance(value, datetime):
            return None
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)

    def fingerprint(self, source: BatchSource) -> dict[str, list[int]]:
        return source_fingerprint(source, self.repo)

    def _relation(self, plan: ViewQuery) -> str:
        """A FROM-clause expression reading a view's rows; of a push source, its batch rows and pushed events."""
        source = plan.source
        batch_sql = relation_sql(source.batch, self.repo)
        if source.push_source is None:
            return batch_sql
        created = source.batch.created_timestamp_field or source.timestamp_field
        rows = (f"SELECT *, {epoch_sql(created, source.type_of(created))} AS {quote(CREATED)}, "
                f"FALSE AS {PUSHED_ROW} FROM {batch_sql}")
        pushed = pushed_sql(self.push_log, source.push_source, source.columns)
        return f"({rows})" if pushed is None else f"({rows} UNION ALL BY NAME {pushed})"

    def _check_recorded(self, plan: ViewQuery) -> None:
        check_recorded(plan, self.source_schema(plan.source.batch))

    def compiled(self, catalog: Catalog, view: FeatureView, items: Sequence[ResolvedFeature],
                 available_before: datetime | None = None, pushed_before: datetime | None = None,
                 materialized: bool = True) -> Compiled:
        """The view's plan with what DuckDB adds: its relation, usable tile tables and availability cut-offs."""
        plan = compile_view(catalog, view, items)
        self._check_recorded(plan)
        cutoff = None if available_before is None else to_us(available_before)
        pushed = to_us(pushed_before) if pushed_before is not None and plan.source.push_source else None
        # Materialized tiles hold everything available at their watermark: unusable for an earlier cutoff.
        tables = self.materialized_tables(catalog, view) if cutoff is None and materialized else {}
        return Compiled(plan, self._relation(plan), tables, cutoff, pushed)

    # --- training sets -----------------------------------------------------------------------

    def historical_features(
        self, catalog: Catalog, entity_df: Any, features: Sequence[ResolvedFeature],
        available_before: datetime | None = None, pushed_before: datetime | None = None,
    ) -> DuckDBRetrievalJob:
        by_view: dict[str, list[ResolvedFeature]] = {}
        for item in features:
            by_view.setdefault(item.view.name, []).append(item)
        keys = [k for name in by_view for k in catalog.join_keys(catalog.view(name))]
        table = entity_input.prepare(entity_input.to_arrow(entity_df, self.con), list(dict.fromkeys(keys)))
        clash = sorted(set(table.column_names) & {f.output for f in features})
        if clash:
            raise EntityDataFrameError(
                f"entity columns {clash} have the same names as requested features; rename those columns "
                "or use full_feature_names=True."
            )
        views = []
        for name, items in by_view.items():
            compiled = self.compiled(catalog, catalog.view(name), items, available_before, pushed_before)
            check_key_types(compiled.plan, {k: str(table.schema.field(k).type) for k in compiled.plan.keys})
            views.append(compiled)
        passthrough = [c for c in table.column_names if c != entity_input.ROW_ID]
        return DuckDBRetrievalJob(self, table, views, passthrough)

    # --- offline materialization -------------------------------------------------------------

    def materialized_tables(self, catalog: Catalog, view: FeatureView) -> dict[int, TileTable]:
        files = self.fingerprint(catalog.batch_source(catalog.source_of(view)))
        return Materializer(self.con).tables(view.name, view_signature(catalog, view.name), files)

    def materialize(
        self, catalog: Catalog, views: Sequence[str], end: Any, full: bool,
        progress: ProgressCallback | None = None,
    ) -> list[MaterializeResult]:
        results: list[MaterializeResult] = []
        materializer = Materializer(self.con)
        for name in views:
            view = catalog.view(name)
            query = self.compiled(catalog, view, [ResolvedFeature(view, f, f) for f in view.feature_names])
            files = self.fingerprint(query.plan.source.batch)
            view_end = end
            if query.plan.source.push_source:  # never pass an event about to land in the log
                view_end = from_us(self.push_log.materialize_end(to_us(end), to_us(datetime.now(UTC))))
            results.extend(materializer.run(query, view_signature(catalog, name), files, view_end, full, progress))
        return results

    # --- online values -----------------------------------------------------------------------

    def drop_materialized(self) -> list[str]:
        from feature_store.offline.duckdb.materialize import drop_materialized

        return drop_materialized(self.con)

    def online_tiles(self, catalog: Catalog, view: str, end: int, since: int | None) -> DuckDBOnlineTiles:
        definition = catalog.view(view)
        query = self.compiled(catalog, definition, [ResolvedFeature(definition, f, f)
                                                    for f in definition.feature_names])
        con = self.cursor()
        return DuckDBOnlineTiles(con, query, end, since, lambda table: table_columns(con, table))

    def write_online(self, catalog: Catalog, view: str, end: int, since: int | None,
                     store: RedisOnlineConfig | SqliteOnlineConfig, prefix: bytes) -> OnlineWritten:
        """DuckDB runs in this process: its values are written here, by the online side (online_tiles)."""
        raise OfflineStoreError("the DuckDB engine has no workers to write online values from "
                                "(capabilities.writes_online is false): use online_tiles")

    def sample_keys(self, catalog: Catalog, view: str, sample: int, seed: int) -> pa.Table:
        definition = catalog.view(view)
        query = self.compiled(catalog, definition, [ResolvedFeature(definition, definition.feature_names[0],
                                                                    definition.feature_names[0])])
        sql = (
            f"SELECT * FROM (SELECT DISTINCT {keys_sql(query)} FROM ({events_sql(query, [])})) "
            f"USING SAMPLE reservoir({int(sample)} ROWS) REPEATABLE ({int(seed)}) ORDER BY ALL"
        )
        with self.cursor() as con:
            return fetch_arrow(con.sql(sql))
