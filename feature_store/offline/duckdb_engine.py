"""The DuckDB offline engine: source checks, training sets, and offline materialization."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import duckdb
import numpy as np
import pyarrow as pa

from feature_store.aggregations import ORDERABLE_TYPES, Aggregation, base_type
from feature_store.catalog import BatchSource, Catalog, SourceDef
from feature_store.config import DuckDBOfflineConfig, resolve_path
from feature_store.definitions import FIELD_TYPES, DuckDBSource, FeatureView, PushSource
from feature_store.durations import to_micros
from feature_store.errors import EntityDataFrameError, OfflineStoreError, SchemaError, closest
from feature_store.identifiers import quote_literal
from feature_store.offline import entity_input
from feature_store.offline.engine import MaterializeResult, ProgressCallback
from feature_store.offline.entity_input import fetch_arrow
from feature_store.offline.evaluate import evaluate_group, evaluate_snapshot
from feature_store.offline.materialize import Materializer, from_us, to_us
from feature_store.offline.push_log import CREATED, PushLog
from feature_store.offline.sources import relation_sql, source_fingerprint
from feature_store.offline.sql import (
    ENTITY_TABLE,
    KEYS_TABLE,
    PUSHED_ROW,
    FeatureRequest,
    TileTable,
    ViewQuery,
    epoch_sql,
    final_sql,
    key_counts_sql,
    key_dictionary_sql,
    keyed_events_sql,
    materialized_tiles_sql,
    queries_sql,
)
from feature_store.plan import view_signature
from feature_store.references import ResolvedFeature

if TYPE_CHECKING:  # pandas is imported by to_df: `feature-store plan` checks sources without it
    import pandas as pd
    import polars as pl

TIMESTAMP_TYPES = {"TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "DATE"}  # after base_type()


def _nullable_dtypes() -> dict[pa.DataType, Any]:
    import pandas as pd

    return {pa.int8(): pd.Int8Dtype(), pa.int16(): pd.Int16Dtype(), pa.int32(): pd.Int32Dtype(),
            pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}


class DuckDBRetrievalJob:
    """A training-set query that runs when a result is asked for (each call runs it again)."""

    def __init__(self, engine: DuckDBOfflineEngine, entities: pa.Table, views: Sequence[ViewQuery],
                 passthrough: Sequence[str]) -> None:
        self._engine, self._entities, self._views, self._passthrough = engine, entities, views, passthrough

    def sql(self) -> str:
        """The final join; per-view results come from tiles and events (see offline/evaluate.py)."""
        return final_sql(self._views, [f"__r{i}" for i in range(len(self._views))], self._passthrough)

    def _run(self, consume: Any) -> Any:
        with self._engine.cursor() as cur:
            cur.register("__entity_input", self._entities)
            try:
                types = dict(cur.execute("SELECT column_name, column_type FROM (DESCRIBE __entity_input)").fetchall())
                ts_type = str(types[entity_input.TIMESTAMP_COLUMN])
                cur.execute(
                    f"CREATE OR REPLACE TEMP TABLE {ENTITY_TABLE} AS SELECT *, "
                    f"{epoch_sql(entity_input.TIMESTAMP_COLUMN, ts_type)} AS __t FROM __entity_input"
                )
                for i, view in enumerate(self._views):
                    cur.register(f"__r{i}", view_result(cur, view))
                return consume(cur, self.sql())
            except duckdb.Error as exc:
                raise OfflineStoreError(f"the training-set query failed in DuckDB: {exc}") from exc

    def to_arrow(self) -> pa.Table:
        table: pa.Table = self._run(lambda cur, sql: fetch_arrow(cur.sql(sql)))
        return table

    def to_df(self) -> pd.DataFrame:
        """pandas; an int or bool column with nulls becomes nullable (Int64, boolean) instead of float/object."""
        table = self.to_arrow()
        df = table.to_pandas()
        nullable = _nullable_dtypes()
        for name in table.column_names:
            column = table.column(name)
            if column.null_count and column.type in nullable:
                df[name] = column.to_pandas(types_mapper=nullable.get)
        return df

    def to_polars(self) -> pl.DataFrame:
        """polars (the optional extra ``feature-store[polars]``); nullable integers stay integers."""
        return entity_input.arrow_to_polars(self.to_arrow())

    def to_parquet(self, path: str | Path) -> None:
        self._run(lambda cur, sql: cur.execute(f"COPY ({sql}) TO {quote_literal(str(path))} (FORMAT parquet)"))


EVENTS_PER_CHUNK = 2_000_000


def view_result(cur: duckdb.DuckDBPyConnection, view: ViewQuery) -> pa.Table:
    """Feature values of one view for the distinct (key, t) of the entity rows that have events.

    Keys are processed in chunks of about EVENTS_PER_CHUNK events, so memory stays bounded
    whatever the size of the source.
    """
    cur.execute(f"CREATE OR REPLACE TEMP TABLE {KEYS_TABLE} AS {key_dictionary_sql(view)}")
    queries = fetch_arrow(cur.sql(queries_sql(view)))
    q_kid, q_t = queries["__kid"].to_numpy(), queries["__t"].to_numpy()
    columns = queries.select([*view.keys, "__t"])
    parts = []
    for first, last in _kid_chunks(fetch_arrow(cur.sql(key_counts_sql())), EVENTS_PER_CHUNK):
        a, b = np.searchsorted(q_kid, first, "left"), np.searchsorted(q_kid, last, "left")
        if a == b:
            continue
        outputs = _evaluate_chunk(cur, view, q_kid[a:b], q_t[a:b], (first, last))
        part = columns.slice(a, b - a)
        for name, values in outputs.items():
            part = part.append_column(name, values)
        parts.append(part)
    if not parts:  # no entity row has a key with events: every value is the empty-window value
        empty = columns.slice(0, 0)
        for request in view.features:
            empty = empty.append_column(request.output, pa.array([], pa.null()))
        return empty
    return pa.concat_tables(parts)


def _kid_chunks(counts: pa.Table, per_chunk: int) -> list[tuple[int, int]]:
    """Contiguous key-id ranges [first, last) holding about per_chunk events each (a key is never split)."""
    n = counts["__n"].to_numpy()
    if len(n) == 0:
        return []
    ends = np.flatnonzero(np.diff(np.cumsum(n) // per_chunk, prepend=0) > 0) + 1
    bounds = [0, *[int(e) for e in ends if 0 < e < len(n)], len(n)]
    return list(itertools.pairwise(bounds))


def _evaluate_chunk(cur: duckdb.DuckDBPyConnection, view: ViewQuery, q_kid: np.ndarray, q_t: np.ndarray,
                    kids: tuple[int, int]) -> dict[str, pa.Array]:
    events = fetch_arrow(cur.sql(keyed_events_sql(view, kids)))
    if not view.is_aggregation:
        return evaluate_snapshot(q_kid, q_t, events, view.ttl, view.features, view.field_order)
    outputs: dict[str, pa.Array] = {}
    groups: dict[int, list[FeatureRequest]] = {}
    for request in view.features:
        groups.setdefault(request.hop, []).append(request)
    for hop, requests in sorted(groups.items()):
        table = view.materialized.get(hop)
        tiles = None if table is None else (
            fetch_arrow(cur.sql(materialized_tiles_sql(view, table, hop, kids))), table.watermark
        )
        outputs.update(evaluate_group(q_kid, q_t, events, hop, requests, tiles))
    return outputs


class DuckDBOfflineEngine:
    name: ClassVar[str] = "duckdb"

    def __init__(self, config: DuckDBOfflineConfig, repo: Path) -> None:
        self.config, self.repo = config, repo
        self._con: duckdb.DuckDBPyConnection | None = None
        self._lock = threading.Lock()
        self._schemas: dict[str, dict[str, str]] = {}
        self._scratch: duckdb.DuckDBPyConnection | None = None
        self.push_log = PushLog(resolve_path(repo, config.path).parent / "push_log", fsync=config.push_fsync)

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
        if self._scratch is not None:
            self._scratch.close()
            self._scratch = None
        self.push_log.close()

    def _describe_con(self, source: BatchSource) -> duckdb.DuckDBPyConnection:
        """Where a source's schema is read: files need no database file, so serving never locks it."""
        if isinstance(source, DuckDBSource):
            return self.con
        with self._lock:
            if self._scratch is None:
                self._scratch = duckdb.connect(":memory:")
                self._scratch.execute("SET TimeZone = 'UTC'")
            return self._scratch.cursor()

    # --- sources -----------------------------------------------------------------------------

    def source_schema(self, catalog: Catalog, source_name: str) -> dict[str, str]:
        """Column types of a source; a push source's are its batch source's plus the availability time."""
        source = catalog.sources[source_name]
        batch = catalog.batch_source(source)
        key = batch.model_dump_json()
        if key not in self._schemas:
            relation = relation_sql(batch, self.repo)
            try:
                rows = self._describe_con(batch).execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
            except duckdb.Error as exc:
                raise SchemaError(
                    f"source {batch.name!r} cannot be read by DuckDB: {exc}", source=batch.name
                ) from exc
            self._schemas[key] = {str(r[0]): str(r[1]) for r in rows}
        schema = self._schemas[key]
        return {**schema, CREATED: "BIGINT"} if isinstance(source, PushSource) else schema

    def relation(self, catalog: Catalog, source: SourceDef) -> str:
        """A FROM-clause expression reading a source; for a push source, its batch rows and pushed events."""
        batch = catalog.batch_source(source)
        if not isinstance(source, PushSource):
            return relation_sql(batch, self.repo)
        schema = self.source_schema(catalog, batch.name)
        created = batch.created_timestamp_field or batch.timestamp_field
        rows = (f"SELECT *, {epoch_sql(created, schema[created])} AS {CREATED}, FALSE AS {PUSHED_ROW} "
                f"FROM {relation_sql(batch, self.repo)}")
        pushed = self.push_log.relation_sql(source.name, schema)
        return f"({rows})" if pushed is None else f"({rows} UNION ALL BY NAME {pushed})"

    def check_view(self, catalog: Catalog, view_name: str) -> None:
        """Raise a SchemaError naming the view, column and fix when the source cannot feed the view."""
        view = catalog.view(view_name)
        source = catalog.batch_source(catalog.source_of(view))
        schema = self.source_schema(catalog, source.name)
        where = f"source {source.name!r} (used by feature view {view.name!r})"
        for field_name in filter(None, [source.timestamp_field, source.created_timestamp_field]):
            _require(schema, field_name, where)
            if base_type(schema[field_name]) not in TIMESTAMP_TYPES:
                raise SchemaError(
                    f"{where}: column {field_name!r} has type {schema[field_name]}, not a timestamp; convert it "
                    "when writing the data, or name the right column in timestamp_field/created_timestamp_field.",
                    source=source.name, column=field_name,
                )
        for key in catalog.join_keys(view):
            _require(schema, key, where)
        declared = catalog.source_of(view)
        for optional in declared.nullable if isinstance(declared, PushSource) else ():
            _require(schema, optional, f"source {source.name!r} (nullable= of push source {declared.name!r})")
        for feature in view.features:
            column = feature.column if isinstance(feature, Aggregation) else feature.name
            if column is None:
                continue
            _require(schema, column, where)
            allowed = feature.input_types if isinstance(feature, Aggregation) else None
            if allowed is not None and base_type(schema[column]) not in allowed:
                kinds = "numeric" if allowed is not ORDERABLE_TYPES else "orderable (numbers, strings, times)"
                raise SchemaError(
                    f"feature {feature.name!r} of view {view.name!r}: {type(feature).__name__} needs a {kinds} "
                    f"column, but {column!r} in {where} is {schema[column]}. Use Count, Last or CountDistinct "
                    "for such columns, or aggregate a numeric one.",
                    view=view.name, feature=feature.name, column=column,
                )

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
        queries = []
        for name, items in by_view.items():
            self.check_view(catalog, name)
            self._check_key_types(catalog, catalog.view(name), table)
            query = self.view_query(catalog, catalog.view(name), items, available_before)
            if pushed_before is not None and isinstance(catalog.source_of(catalog.view(name)), PushSource):
                query = replace(query, pushed_before=to_us(pushed_before))
            queries.append(query)
        passthrough = [c for c in table.column_names if c != entity_input.ROW_ID]
        return DuckDBRetrievalJob(self, table, queries, passthrough)

    def _check_key_types(self, catalog: Catalog, view: FeatureView, table: pa.Table) -> None:
        schema = self.source_schema(catalog, view.source_name)
        for key in catalog.join_keys(view):
            given, wanted = str(table.schema.field(key).type), schema[key]
            if entity_input.key_family(given) != entity_input.key_family(wanted):
                raise EntityDataFrameError(
                    f"join key {key!r} is {given} in the entity rows but {wanted} in source "
                    f"{view.source_name!r} (view {view.name!r}), so no row could match; convert the entity "
                    "column to the source's type.",
                    column=key, view=view.name,
                )

    def view_query(self, catalog: Catalog, view: FeatureView, items: Sequence[ResolvedFeature],
                   available_before: datetime | None = None, materialized: bool = True) -> ViewQuery:
        """How to compute ``items`` of a view; ``materialized=False`` never opens the database file."""
        declared = catalog.source_of(view)
        source = catalog.batch_source(declared)
        cutoff = None if available_before is None else to_us(available_before)
        schema = self.source_schema(catalog, declared.name)
        requests = tuple(self._request(view, view.feature(i.feature), i.output, schema) for i in items)
        return ViewQuery(
            name=view.name,
            keys=catalog.join_keys(view),
            source_sql=self.relation(catalog, declared),
            timestamp_field=source.timestamp_field,
            created_field=CREATED if isinstance(declared, PushSource) else source.created_timestamp_field,
            features=requests,
            is_aggregation=view.is_aggregation,
            ttl=None if view.ttl is None else to_micros(view.ttl),
            column_types=schema,
            # Materialized tiles hold everything available at their watermark: unusable for an earlier cutoff.
            materialized=self.materialized_tables(catalog, view) if cutoff is None and materialized else {},
            available_before=cutoff,
            field_order=() if view.is_aggregation else view.feature_names,
        )

    @staticmethod
    def _request(view: FeatureView, feature: Any, output: str, schema: dict[str, str]) -> FeatureRequest:
        if isinstance(feature, Aggregation):
            input_type = schema[feature.column] if feature.column else None
            return FeatureRequest(
                feature, output, input_type, feature.output_type(input_type),
                hop=to_micros(feature.effective_hop(view.hop)),
                window=None if feature.window is None else to_micros(feature.window),
            )
        return FeatureRequest(feature, output, schema[feature.name], FIELD_TYPES[feature.dtype])

    # --- offline materialization -------------------------------------------------------------

    def materialized_tables(self, catalog: Catalog, view: FeatureView) -> dict[int, TileTable]:
        files = source_fingerprint(catalog.batch_source(catalog.source_of(view)), self.repo)
        return Materializer(self).tables(view.name, view_signature(catalog, view.name), files)

    def materialize(
        self, catalog: Catalog, views: Sequence[str], end: Any, full: bool,
        progress: ProgressCallback | None = None,
    ) -> list[MaterializeResult]:
        results: list[MaterializeResult] = []
        materializer = Materializer(self)
        for name in views:
            self.check_view(catalog, name)
            view = catalog.view(name)
            all_features = [ResolvedFeature(view, f, f) for f in view.feature_names]
            query = self.view_query(catalog, view, all_features)
            files = source_fingerprint(catalog.batch_source(catalog.source_of(view)), self.repo)
            view_end = end
            if isinstance(catalog.source_of(view), PushSource):  # never pass an event about to land in the log
                view_end = from_us(self.push_log.materialize_end(to_us(end), to_us(datetime.now(UTC))))
            results.extend(materializer.run(query, view_signature(catalog, name), files, view_end, full, progress))
        return results


def _require(schema: dict[str, str], column: str, where: str) -> None:
    if column not in schema:
        raise SchemaError(
            f"{where} has no column {column!r}.{closest(column, schema)} Columns: {sorted(schema)}.",
            column=column,
        )
