"""Snapshot features of a training set: per query, the latest row available before t (within the ttl)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.kernel.primitives import ordinal_codes
from feature_store.query import FeatureRequest

ARROW_TYPES = {
    "int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(), "float32": pa.float32(),
    "float64": pa.float64(), "string": pa.string(), "bool": pa.bool_(), "timestamp_tz": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
}


def _np(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return array.to_numpy(zero_copy_only=False)


def evaluate_snapshot(q_kid: np.ndarray, q_t: np.ndarray, rows: pa.Table, ttl: int | None,
                      requests: Sequence[FeatureRequest], field_order: Sequence[str]) -> dict[str, pa.Array]:
    """Per query, the row with the greatest (ts, created) among rows available before t, within ttl."""
    kid, ts, cr = _np(rows["__kid"]), _np(rows["__ts"]), _np(rows["__cr"])
    avail = np.maximum(ts, cr)
    times = np.unique(np.concatenate([avail, q_t]))
    width = len(times) + 1
    row_code = kid * width + np.searchsorted(times, avail)
    by_avail = np.argsort(row_code, kind="stable")
    rank = np.empty(len(kid), dtype=np.int64)
    # Key-major, so ranks of a key exceed those of earlier keys; rows tied on (ts, created) are ordered by
    # their values, so the pick never depends on how rows were stored or materialized.
    ties = [ordinal_codes([rows.column(name)])[0][0] for name in reversed(field_order)]
    by_recency = np.lexsort((*ties, cr, ts, kid))
    rank[by_recency] = np.arange(len(kid))
    best_so_far = np.maximum.accumulate(rank[by_avail]) if len(kid) else rank
    idx = np.searchsorted(row_code[by_avail], q_kid * width + np.searchsorted(times, q_t), "left") - 1
    safe = np.maximum(idx, 0)
    found = (idx >= 0) & (kid[by_avail][safe] == q_kid) if len(kid) else np.zeros(len(q_t), bool)
    row = by_recency[best_so_far[safe]] if len(kid) else safe
    if ttl is not None and len(kid):
        found &= ts[row] >= q_t - ttl
    picked = pa.array(row, mask=~found)
    return {r.output: pc.take(rows[r.column], picked).cast(ARROW_TYPES[r.output_type]) for r in requests}
