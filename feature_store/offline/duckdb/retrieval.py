"""Training sets in DuckDB: per requested view, tiles and events for the numpy kernel, then one join back onto
the entity rows in input order."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pyarrow as pa

from feature_store.errors import OfflineStoreError
from feature_store.identifiers import quote_literal
from feature_store.kernel.snapshot import evaluate_snapshot
from feature_store.kernel.window import evaluate_group
from feature_store.offline.duckdb import entity_input
from feature_store.offline.duckdb.entity_input import fetch_arrow
from feature_store.offline.duckdb.sql import (
    ENTITY_TABLE,
    KEYS_TABLE,
    Compiled,
    epoch_sql,
    final_sql,
    key_counts_sql,
    key_dictionary_sql,
    keyed_events_sql,
    materialized_tiles_sql,
    queries_sql,
)
from feature_store.offline.duckdb.types import neutral
from feature_store.offline.entity_rows import ArrowResult
from feature_store.query import FeatureRequest

if TYPE_CHECKING:

    from feature_store.offline.duckdb.engine import DuckDBOfflineEngine

EVENTS_PER_CHUNK = 2_000_000


class DuckDBRetrievalJob(ArrowResult):
    """A training-set query that runs when a result is asked for (each call runs it again)."""

    def __init__(self, engine: DuckDBOfflineEngine, entities: pa.Table, views: Sequence[Compiled],
                 passthrough: Sequence[str]) -> None:
        self._engine, self._entities, self._views, self._passthrough = engine, entities, views, passthrough

    def sql(self) -> str:
        """The final join; per-view results come from tiles and events (see feature_store/kernel)."""
        return final_sql(self._views, [f"__r{i}" for i in range(len(self._views))], self._passthrough)

    def _run(self, consume: Any) -> Any:
        with self._engine.cursor() as cur:
            cur.register("__entity_input", self._entities)
            try:
                types = dict(cur.execute("SELECT column_name, column_type FROM (DESCRIBE __entity_input)").fetchall())
                ts_type = neutral(str(types[entity_input.TIMESTAMP_COLUMN]))
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

    def to_parquet(self, path: str | Path) -> None:
        self._run(lambda cur, sql: cur.execute(f"COPY ({sql}) TO {quote_literal(str(path))} (FORMAT parquet)"))


def view_result(cur: duckdb.DuckDBPyConnection, view: Compiled) -> pa.Table:
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
        for request in view.plan.features:
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


def _evaluate_chunk(cur: duckdb.DuckDBPyConnection, view: Compiled, q_kid: np.ndarray, q_t: np.ndarray,
                    kids: tuple[int, int]) -> dict[str, pa.Array]:
    events = fetch_arrow(cur.sql(keyed_events_sql(view, kids)))
    plan = view.plan
    if not plan.is_aggregation:
        return evaluate_snapshot(q_kid, q_t, events, plan.ttl, plan.features, plan.field_order)
    outputs: dict[str, pa.Array] = {}
    groups: dict[int, list[FeatureRequest]] = {}
    for request in plan.features:
        groups.setdefault(request.hop, []).append(request)
    for hop, requests in sorted(groups.items()):
        table = view.materialized.get(hop)
        tiles = None if table is None else (
            fetch_arrow(cur.sql(materialized_tiles_sql(view, table, hop, kids))), table.watermark
        )
        outputs.update(evaluate_group(q_kid, q_t, events, hop, requests, tiles))
    return outputs
