"""Per-feature evaluation of one hop group of an aggregation view, on arrays from DuckDB.

A hop group is the features of a view that share a hop H, hence the same tiles. For each
distinct query (key id, t) it combines the tile part (tiles in ``[floor_H(t - W), floor_H(t))``)
with the raw part (events of the partial tile ``[floor_H(t), t)`` and late events in the
window, each visible only when ``created < t``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.aggregations import Count, CountDistinct, Last, Max, Mean, Min, StdDev, Sum
from feature_store.offline.kernel import (
    I64_MAX,
    I64_MIN,
    Grid,
    expand,
    floor_to,
    group_extreme,
    group_last,
    last_valid_before,
    ordinal_codes,
    prefix_range,
    range_reduce,
)
from feature_store.offline.sql import FeatureRequest


def _np(array: pa.Array | pa.ChunkedArray, fill: object = None) -> np.ndarray:
    if fill is not None:
        array = pc.fill_null(array, fill)
    return array.to_numpy(zero_copy_only=False)


def _is_float(t: pa.DataType) -> bool:
    return pa.types.is_floating(t)


def _is_int(t: pa.DataType) -> bool:
    return pa.types.is_integer(t)


class HopGroup:
    """Tiles and events of one view for one hop, and where each query falls within them.

    ``events`` arrive sorted by (key id, ts, created). Tiles are materialized tiles below the
    watermark, if any, plus one single-event tile per on-time event above it: a single event is
    its own partial aggregate, so no grouping pass is needed before answering queries.
    """

    def __init__(self, q_kid: np.ndarray, q_t: np.ndarray, events: pa.Table, hop: int,
                 materialized: tuple[pa.Table, int] | None = None) -> None:
        self.hop, self.q_kid, self.q_t = hop, q_kid, q_t
        self.n = len(q_t)
        self.events = {name: events.column(name).combine_chunks() for name in events.column_names}
        ev_kid, self.ev_ts, self.ev_cr = (_np(self.events[c]) for c in ("__kid", "__ts", "__cr"))
        ev_tile = floor_to(self.ev_ts, hop)
        tiles_table, watermark = materialized if materialized else (None, None)
        starts = ev_tile if tiles_table is None else np.concatenate([ev_tile, _np(tiles_table["__pos"])])
        self.grid = grid = Grid.covering(starts, hop)
        self.ev_code = grid.code(ev_kid, ev_tile)
        if len(self.ev_code) > 1 and not np.all(self.ev_code[1:] >= self.ev_code[:-1]):
            raise ValueError("events must be sorted by key id and timestamp")  # an engine bug, not user input
        on_time = self.ev_cr < ev_tile + hop
        self.late = np.flatnonzero(~on_time)
        self.late_code = self.ev_code[self.late]
        if watermark is not None:
            on_time &= ev_tile >= watermark
        self._single = np.flatnonzero(on_time)  # events that stand for their own tile
        self._mat = None if tiles_table is None else {
            name: tiles_table.column(name).combine_chunks() for name in tiles_table.column_names
        }
        t_kid = ev_kid[self._single]
        t_code = self.ev_code[self._single]
        self._perm: np.ndarray | None = None
        if self._mat is not None:
            m_kid = _np(self._mat["__kid"])
            t_kid = np.concatenate([m_kid, t_kid])
            t_code = np.concatenate([grid.code(m_kid, _np(self._mat["__pos"])), t_code])
            self._perm = np.argsort(t_code, kind="stable")
            t_kid, t_code = t_kid[self._perm], t_code[self._perm]
        self.t_kid, self.t_code = t_kid, t_code
        self._tile_cache: dict[str, np.ndarray | pa.Array] = {}
        self._ranges: dict[int | None, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._valid: dict[str, np.ndarray] = {}
        self.f_code = grid.code(q_kid, floor_to(q_t, hop))
        self.t_hi = np.searchsorted(self.t_code, self.f_code, "left")
        a = np.searchsorted(self.ev_code, self.f_code, "left")
        b = np.searchsorted(self.ev_code, self.f_code, "right")
        q, e = expand(a, b)
        keep = (self.ev_ts[e] < q_t[q]) & (self.ev_cr[e] < q_t[q])
        self.current = (q[keep], e[keep])

    def tile(self, name: str) -> Any:
        """A partial-aggregate column over all tiles in (key, tile) order (numpy or Arrow)."""
        if name not in self._tile_cache:
            single = self._single_partial(name)
            if self._mat is None:
                value = single
            else:
                mat = self._materialized_partial(self._mat, name)
                if isinstance(single, np.ndarray):
                    value = np.concatenate([np.asarray(mat), single])[self._perm]
                else:
                    value = pa.concat_arrays([pa.array(mat).cast(single.type), single]).take(pa.array(self._perm))
            self._tile_cache[name] = value
        return self._tile_cache[name]

    def _single_partial(self, name: str) -> np.ndarray | pa.Array:
        kind, _, column = name.partition("__")
        idx = self._single
        if kind == "n" and not column:
            return np.ones(len(idx), dtype=np.int64)
        values = self.events[column]
        valid = self.valid(column)[idx]
        if kind == "n":
            return valid.astype(np.int64)
        if kind in ("sum", "mean"):
            filled = _np(values, 0)[idx]
            return filled.astype(np.int64 if kind == "sum" and _is_int(values.type) else np.float64)
        if kind == "m2":
            return np.zeros(len(idx), dtype=np.float64)
        if kind in ("lastt", "lastc"):
            times = self.ev_ts if kind == "lastt" else self.ev_cr
            return np.where(valid, times[idx], I64_MIN)
        return pc.take(values, pa.array(idx))  # min, max, last: any type

    @staticmethod
    def _materialized_partial(mat: dict[str, pa.Array], name: str) -> np.ndarray | pa.Array:
        kind, _, column = name.partition("__")
        if kind in ("lastt", "lastc"):
            key = mat[f"lastk__{column}"]
            return _np(pc.struct_field(key, "t" if kind == "lastt" else "c"), I64_MIN).astype(np.int64)
        values = mat[name]
        if kind in ("min", "max", "last"):
            return values
        if kind == "sum" and _is_int(values.type):
            return _np(values, 0).astype(np.int64)
        return _np(values, 0).astype(np.int64 if kind == "n" else np.float64)

    def start_code(self, window: int | None) -> np.ndarray:
        if window is None:
            return self.q_kid * self.grid.span
        return self.grid.code(self.q_kid, floor_to(self.q_t - window, self.hop))

    def ranges(self, window: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tile range start per query, and the raw (query, event) pairs visible in the window."""
        if window not in self._ranges:
            self._ranges[window] = self._compute_ranges(window)
        return self._ranges[window]

    def _compute_ranges(self, window: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s_code = self.start_code(window)
        t_lo = np.searchsorted(self.t_code, s_code, "left")
        lo = np.searchsorted(self.late_code, s_code, "left")
        hi = np.searchsorted(self.late_code, self.f_code, "left")
        q, li = expand(lo, hi)
        e = self.late[li]
        keep = self.ev_cr[e] < self.q_t[q]
        rq = np.concatenate([self.current[0], q[keep]])
        re = np.concatenate([self.current[1], e[keep]])
        return t_lo, rq, re

    def window_events(self, window: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Every visible (query, event) pair of the window, for aggregates that tiles cannot combine."""
        lo = np.searchsorted(self.ev_code, self.start_code(window), "left")
        hi = np.searchsorted(self.ev_code, self.f_code, "right")
        q, e = expand(lo, hi)
        keep = (self.ev_ts[e] < self.q_t[q]) & (self.ev_cr[e] < self.q_t[q])
        return q[keep], e[keep]

    # --- features --------------------------------------------------------------------------

    def evaluate(self, request: FeatureRequest) -> pa.Array:
        feature = request.feature
        if isinstance(feature, CountDistinct):
            return self._count_distinct(request)
        t_lo, rq, re = self.ranges(request.window)
        handler: dict[type, Callable[..., pa.Array]] = {
            Count: self._count, Sum: self._sum, Mean: self._mean, Min: self._extreme, Max: self._extreme,
            Last: self._last, StdDev: self._stddev,
        }
        return handler[type(feature)](request, t_lo, rq, re)

    def _column(self, request: FeatureRequest) -> str:
        return str(getattr(request.feature, "column", None) or "")

    def valid(self, column: str) -> np.ndarray:
        if column not in self._valid:
            self._valid[column] = _np(self.events[column].is_valid())
        return self._valid[column]

    def _raw_values(self, request: FeatureRequest, rq: np.ndarray, re: np.ndarray) -> tuple[np.ndarray, pa.Array]:
        """Pairs whose event has a non-null value, and those values."""
        column = self._column(request)
        keep = self.valid(column)[re]
        return rq[keep], pc.take(self.events[column], pa.array(re[keep]))

    def _tile_n(self, name: str, t_lo: np.ndarray) -> np.ndarray:
        return prefix_range(self.tile(name), t_lo, self.t_hi)

    def _count(self, request: FeatureRequest, t_lo: np.ndarray, rq: np.ndarray, re: np.ndarray) -> pa.Array:
        column = self._column(request)
        if column:
            rq, _ = self._raw_values(request, rq, re)
        tile = self._tile_n(f"n__{column}", t_lo)
        return pa.array(tile + np.bincount(rq, minlength=self.n), pa.int64())

    def _sums(self, request: FeatureRequest, t_lo: np.ndarray, rq: np.ndarray, re: np.ndarray) -> np.ndarray:
        column = self._column(request)
        rq, values = self._raw_values(request, rq, re)
        tile_sums = self.tile(f"sum__{column}")
        if tile_sums.dtype == np.int64:
            raw = np.zeros(self.n, dtype=np.int64)
            np.add.at(raw, rq, _np(values).astype(np.int64))
            return prefix_range(tile_sums, t_lo, self.t_hi) + raw
        tile = range_reduce(np.add, tile_sums, t_lo, self.t_hi, 0.0)
        return tile + np.bincount(rq, weights=_np(values).astype(np.float64), minlength=self.n)

    def _sum(self, request: FeatureRequest, t_lo: np.ndarray, rq: np.ndarray, re: np.ndarray) -> pa.Array:
        return pa.array(self._sums(request, t_lo, rq, re)).cast(pa.int64() if request.output_type == "BIGINT"
                                                                else pa.float64())

    def _mean(self, request: FeatureRequest, t_lo: np.ndarray, rq: np.ndarray, re: np.ndarray) -> pa.Array:
        total = self._sums(request, t_lo, rq, re).astype(np.float64)
        n = self._tile_n(f"n__{self._column(request)}", t_lo)
        rn, _ = self._raw_values(request, rq, re)
        n = n + np.bincount(rn, minlength=self.n)
        with np.errstate(invalid="ignore", divide="ignore"):
            return pa.array(total / np.maximum(n, 1), mask=n == 0)

    def _extreme(self, request: FeatureRequest, t_lo: np.ndarray, rq: np.ndarray, re: np.ndarray) -> pa.Array:
        largest = isinstance(request.feature, Max)
        column = self._column(request)
        tile_col = self.tile(f"{'max' if largest else 'min'}__{column}")
        rq, values = self._raw_values(request, rq, re)
        empty = I64_MIN if largest else I64_MAX
        if _is_float(tile_col.type):
            tile_v = _np(tile_col.cast(pa.float64()), -np.inf if largest else np.inf)
            raw_v = _np(values.cast(pa.float64()))
            fempty = -np.inf if largest else np.inf
            tile = range_reduce(np.maximum if largest else np.minimum, tile_v, t_lo, self.t_hi, fempty)
            raw = group_extreme(rq, raw_v, self.n, largest, fempty)
            best = np.maximum(tile, raw) if largest else np.minimum(tile, raw)
            return pa.array(best, mask=best == fempty).cast(tile_col.type)
        if _is_int(tile_col.type):
            codes = [_np(tile_col, empty).astype(np.int64), _np(values).astype(np.int64)]
            dictionary = None
        else:  # strings, dates, times, booleans: compare by value order
            codes, dictionary = ordinal_codes([tile_col, values])
            codes[0] = np.where(codes[0] < 0, empty, codes[0])
        tile = range_reduce(np.maximum if largest else np.minimum, codes[0], t_lo, self.t_hi, empty)
        raw = group_extreme(rq, codes[1], self.n, largest, empty)
        best = np.maximum(tile, raw) if largest else np.minimum(tile, raw)
        missing = best == empty
        if dictionary is None:
            return pa.array(best, mask=missing).cast(tile_col.type)
        return pc.take(dictionary, pa.array(np.where(missing, 0, best), mask=missing))

    def _last(self, request: FeatureRequest, t_lo: np.ndarray, rq: np.ndarray, re: np.ndarray) -> pa.Array:
        """The value of the latest event by (ts, created); among events tied on both, the greatest value,
        so that results never depend on how the data happened to be grouped into tiles."""
        column = self._column(request)
        key_t, key_c = self.tile(f"lastt__{column}"), self.tile(f"lastc__{column}")
        (tile_code, raw_code), dictionary = ordinal_codes([self.tile(f"last__{column}"), self.events[column]])
        # Tile part: the last tile with a value in [t_lo, t_hi), then the best value of its run of ties.
        prev = last_valid_before(key_t != I64_MIN)
        end = np.maximum(self.t_hi - 1, 0)
        tile_idx = np.where(self.t_hi > t_lo, prev[end], -1) if len(prev) else np.full(self.n, -1)
        tile_idx = np.where(tile_idx >= t_lo, tile_idx, -1)
        safe_tile = np.maximum(tile_idx, 0)
        tile_best = np.where(tile_idx >= 0, tile_code[safe_tile] if len(tile_code) else -1, -1)
        if len(key_t):  # ties on (ts, created) within the range: the greatest value (rare: only those queries)
            run_start = np.maximum(_tie_run_start(self.t_kid, key_t, key_c)[safe_tile], t_lo)
            tied = np.flatnonzero((tile_idx >= 0) & (run_start < safe_tile))
            if len(tied):
                tile_best[tied] = range_reduce(np.maximum, tile_code, run_start[tied], safe_tile[tied] + 1, -1)
        tile_t = np.where(tile_idx >= 0, key_t[safe_tile] if len(key_t) else I64_MIN, I64_MIN)
        tile_c = np.where(tile_idx >= 0, key_c[safe_tile] if len(key_c) else I64_MIN, I64_MIN)
        # Raw part: the best visible event per query, by (ts, created, value).
        keep = self.valid(column)[re]
        rq, re = rq[keep], re[keep]
        pick = group_last(rq, self.ev_ts[re], self.ev_cr[re], self.n, raw_code[re])
        raw_idx = np.where(pick >= 0, re[np.maximum(pick, 0)] if len(re) else -1, -1)
        safe_raw = np.maximum(raw_idx, 0)
        raw_t = np.where(raw_idx >= 0, self.ev_ts[safe_raw] if len(self.ev_ts) else I64_MIN, I64_MIN)
        raw_c = np.where(raw_idx >= 0, self.ev_cr[safe_raw] if len(self.ev_cr) else I64_MIN, I64_MIN)
        raw_best = np.where(raw_idx >= 0, raw_code[safe_raw] if len(raw_code) else -1, -1)
        use_raw = (raw_idx >= 0) & ((tile_idx < 0) | (raw_t > tile_t) | ((raw_t == tile_t) & (
            (raw_c > tile_c) | ((raw_c == tile_c) & (raw_best > tile_best)))))
        best = np.where(use_raw, raw_best, tile_best)
        return pc.take(dictionary, pa.array(np.maximum(best, 0), mask=best < 0))

    def _stddev(self, request: FeatureRequest, t_lo: np.ndarray, rq: np.ndarray, re: np.ndarray) -> pa.Array:
        column = self._column(request)
        n, mean, m2 = (self.tile(f"{kind}__{column}") for kind in ("n", "mean", "m2"))
        # A per-key shift keeps the sum of squared deviations free of cancellation.
        keys = max(int(self.t_kid.max()) + 1 if len(self.t_kid) else 0, int(self.q_kid.max()) + 1 if self.n else 0)
        has = (n > 0).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            shift_k = np.nan_to_num(np.bincount(self.t_kid, mean * has, keys) / np.bincount(self.t_kid, has, keys))
        d = np.where(n > 0, mean - shift_k[self.t_kid], 0.0)
        nt = prefix_range(n, t_lo, self.t_hi).astype(np.float64)
        s1 = range_reduce(np.add, n * d, t_lo, self.t_hi, 0.0)
        s2 = range_reduce(np.add, m2 + n * d * d, t_lo, self.t_hi, 0.0)
        rq, values = self._raw_values(request, rq, re)
        x = _np(values).astype(np.float64)
        nr = np.bincount(rq, minlength=self.n).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_r = np.bincount(rq, x, self.n) / nr
            m2_r = np.bincount(rq, (x - mean_r[rq]) ** 2, self.n)
            m2_t = np.where(nt > 0, s2 - s1 * s1 / nt, 0.0)
            mean_t = shift_k[self.q_kid] + s1 / nt
            cross = np.where((nt > 0) & (nr > 0), (mean_r - mean_t) ** 2 * nt * nr / (nt + nr), 0.0)
            total = nt + nr
            result = np.sqrt(np.maximum(m2_t + np.where(nr > 0, m2_r, 0.0) + cross, 0.0) / (total - 1))
        return pa.array(np.where(total >= 2, result, 0.0), mask=total < 2)

    def _count_distinct(self, request: FeatureRequest) -> pa.Array:
        q, e = self.window_events(request.window)
        column = self.events[self._column(request)]
        valid = _np(column.is_valid())[e]
        q, e = q[valid], e[valid]
        codes = _np(pc.dictionary_encode(column).indices, -1).astype(np.int64)[e]
        width = int(codes.max()) + 1 if len(codes) else 1
        pairs = np.unique(q * width + codes)
        return pa.array(np.bincount(pairs // width, minlength=self.n), pa.int64())


def evaluate_group(q_kid: np.ndarray, q_t: np.ndarray, events: pa.Table, hop: int,
                   requests: Sequence[FeatureRequest],
                   materialized: tuple[pa.Table, int] | None = None) -> dict[str, pa.Array]:
    group = HopGroup(q_kid, q_t, events, hop, materialized)
    return {r.output: group.evaluate(r) for r in requests}


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
    return {r.output: pc.take(rows[r.feature.name], picked).cast(_arrow_type(r.output_type)) for r in requests}


def _arrow_type(duckdb_type: str) -> pa.DataType:
    return {
        "TINYINT": pa.int8(), "SMALLINT": pa.int16(), "INTEGER": pa.int32(), "BIGINT": pa.int64(),
        "FLOAT": pa.float32(), "DOUBLE": pa.float64(), "VARCHAR": pa.string(), "BOOLEAN": pa.bool_(),
        "TIMESTAMP WITH TIME ZONE": pa.timestamp("us", tz="UTC"), "DATE": pa.date32(),
    }[duckdb_type]


def _tie_run_start(kid: np.ndarray, key_t: np.ndarray, key_c: np.ndarray) -> np.ndarray:
    """For each tile, the first index of its run of tiles with a value and the same (key, ts, created).

    Tiles without a value (null) in between do not break a run: they never win a max anyway.
    """
    start = np.zeros(len(kid), dtype=np.int64)
    valid = np.flatnonzero(key_t != I64_MIN)
    if len(valid) == 0:
        return start
    k, t, c = kid[valid], key_t[valid], key_c[valid]
    change = np.ones(len(valid), dtype=bool)
    change[1:] = (k[1:] != k[:-1]) | (t[1:] != t[:-1]) | (c[1:] != c[:-1])
    run_first = valid[np.maximum.accumulate(np.where(change, np.arange(len(valid)), 0))]
    start[valid] = run_first
    return start
