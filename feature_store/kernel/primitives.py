"""Vectorized interval aggregation over sorted tiles and events (numpy, no per-row Python): the primitives.

DuckDB reads the sources and builds the tiles; this module answers, for every distinct query
(key, t), the aggregate over the tiles in ``[floor_H(t - W), floor_H(t))`` with binary searches
on (key, tile) and ``ufunc.reduceat`` / prefix sums, then adds the events that tiles cannot
answer for: those of the current partial tile ``[floor_H(t), t)`` and *late* events (created
after their tile ended), each checked against ``created < t``. See docs/semantics.md.

Integer quantities use exact integer prefix sums; floating-point sums use ``reduceat`` over the
window's own tiles, so their error is relative to the window's values, not to a running total.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

I64_MIN = np.iinfo(np.int64).min
I64_MAX = np.iinfo(np.int64).max


def floor_to(values: np.ndarray, hop: int) -> np.ndarray:
    return values - np.mod(values, hop)


@dataclass(frozen=True)
class Grid:
    """Maps (key id, time) to one sortable int64: key-major, then the hop-sized tile index."""

    base: int
    hop: int
    span: int

    @classmethod
    def covering(cls, tile_starts: np.ndarray, hop: int) -> Grid:
        if len(tile_starts) == 0:
            return cls(0, hop, 3)
        low, high = int(tile_starts.min()), int(tile_starts.max())
        return cls(low, hop, (high - low) // hop + 3)

    def code(self, kid: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Times before the first tile map to slot 0 and after the last to span-1, so searches clamp."""
        slot = np.clip(np.floor_divide(times - self.base, self.hop) + 1, 0, self.span - 1)
        return kid * self.span + slot


def expand(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (query, index) pairs with lo[q] <= index < hi[q], grouped by query."""
    counts = np.maximum(hi - lo, 0)
    total = int(counts.sum())
    query = np.repeat(np.arange(len(lo), dtype=np.int64), counts)
    offsets = np.repeat(lo - (np.cumsum(counts) - counts), counts)
    return query, offsets + np.arange(total, dtype=np.int64)


def range_reduce(ufunc: np.ufunc, values: np.ndarray, lo: np.ndarray, hi: np.ndarray, empty: object) -> np.ndarray:
    """ufunc over values[lo:hi] for every query; ``empty`` where the range is empty."""
    if len(lo) == 0:
        return np.empty(0, dtype=values.dtype)
    padded = np.concatenate([values, np.array([empty], dtype=values.dtype)])
    idx = np.empty(2 * len(lo), dtype=np.int64)
    idx[0::2], idx[1::2] = lo, hi
    idx = np.minimum(idx, len(values))
    reduced = ufunc.reduceat(padded, idx)[0::2]
    reduced[hi <= lo] = empty
    return reduced


def prefix_range(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Exact range sums of integers via a prefix sum."""
    prefix = np.concatenate([[0], np.cumsum(values, dtype=np.int64)])
    return prefix[hi] - prefix[lo]


def last_valid_before(valid: np.ndarray) -> np.ndarray:
    """For each i, the largest j <= i with valid[j], or -1."""
    marks = np.where(valid, np.arange(len(valid), dtype=np.int64), -1)
    return np.maximum.accumulate(marks) if len(marks) else marks


def ordinal_codes(arrays: Sequence[pa.Array]) -> tuple[list[np.ndarray], pa.Array]:
    """Encode values of any orderable type as int64 codes in value order (-1 for null), jointly."""
    chunks = [a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a for a in arrays]
    combined = pa.concat_arrays([c.cast(chunks[0].type) for c in chunks]) if chunks else pa.array([])
    encoded = pc.dictionary_encode(combined)
    dictionary = encoded.dictionary
    order = np.asarray(pc.array_sort_indices(dictionary))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    indices = encoded.indices.to_numpy(zero_copy_only=False)
    nulls = encoded.indices.is_null().to_numpy(zero_copy_only=False)
    codes = np.where(nulls, -1, rank[np.where(nulls, 0, indices).astype(np.int64)] if len(rank) else -1)
    out, start = [], 0
    for chunk in chunks:
        out.append(codes[start:start + len(chunk)].astype(np.int64))
        start += len(chunk)
    return out, dictionary.take(pa.array(order))


def group_last(query: np.ndarray, ts: np.ndarray, cr: np.ndarray, n_queries: int,
               tie_break: np.ndarray | None = None) -> np.ndarray:
    """Per query, the position (into the given pair arrays) with the greatest (ts, cr[, tie_break]), or -1."""
    best = np.full(n_queries, -1, dtype=np.int64)
    if len(query) == 0:
        return best
    keys = (cr, ts, query) if tie_break is None else (tie_break, cr, ts, query)
    order = np.lexsort(keys)
    q_sorted = query[order]
    ends = np.flatnonzero(np.append(q_sorted[1:] != q_sorted[:-1], True))
    best[q_sorted[ends]] = order[ends]
    return best


def group_extreme(query: np.ndarray, values: np.ndarray, n_queries: int, largest: bool, empty: object) -> np.ndarray:
    out = np.full(n_queries, empty, dtype=values.dtype)
    (np.maximum if largest else np.minimum).at(out, query, values)
    return out
