"""The offline evaluation of one hop group of an aggregation view, on arrays from an engine.

A hop group is the features of a view that share a hop H, hence the same tiles. For each distinct query
(key id, t) a function combines the tile part (tiles in ``[floor_H(t - W), floor_H(t))``) with the raw part
(events of the partial tile ``[floor_H(t), t)`` and late events in the window, each visible only when
``created < t``). :class:`HopWindows` finds both, once per window; each function's own module turns them into
values (``AggregationFunction.offline``), reading its partials' fields with :meth:`HopWindows.tile`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.aggregations import Partial
from feature_store.kernel.primitives import Grid, expand, floor_to
from feature_store.query import FeatureRequest


def _np(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return array.to_numpy(zero_copy_only=False)


class HopWindows:
    """Tiles and events of one view for one hop, and where each query falls within them.

    ``events`` arrive sorted by (key id, ts, created). Tiles are materialized tiles below the watermark, if any,
    plus one single-event tile per on-time event above it: a single event is its own partial aggregate, so no
    grouping pass is needed before answering queries.
    """

    def __init__(self, q_kid: np.ndarray, q_t: np.ndarray, events: pa.Table, hop: int,
                 partials: Sequence[Partial], materialized: tuple[pa.Table, int] | None = None) -> None:
        self.hop, self.q_kid, self.q_t = hop, q_kid, q_t
        self.n = len(q_t)
        self._fields = {name: (partial, k) for partial in partials for k, name in enumerate(partial.fields)}
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
        self._tile_cache: dict[str, Any] = {}
        self._ranges: dict[int | None, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._valid: dict[str, np.ndarray] = {}
        self.f_code = grid.code(q_kid, floor_to(q_t, hop))
        self.t_hi = np.searchsorted(self.t_code, self.f_code, "left")
        a = np.searchsorted(self.ev_code, self.f_code, "left")
        b = np.searchsorted(self.ev_code, self.f_code, "right")
        q, e = expand(a, b)
        keep = (self.ev_ts[e] < q_t[q]) & (self.ev_cr[e] < q_t[q])
        self.current = (q[keep], e[keep])

    def tile(self, field: str) -> Any:
        """A partial's field over all tiles in (key, tile) order (numpy, or Arrow for values of any type)."""
        if field not in self._tile_cache:
            partial, k = self._fields[field]
            single = partial.of.single(partial, k, self, self._single)
            if self._mat is None:
                value = single
            else:
                mat = partial.of.from_table(partial, k, self._mat[field])
                if isinstance(single, np.ndarray):
                    value = np.concatenate([np.asarray(mat), single])[self._perm]
                else:
                    value = pa.concat_arrays([pa.array(mat).cast(single.type), single]).take(pa.array(self._perm))
            self._tile_cache[field] = value
        return self._tile_cache[field]

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

    def valid(self, column: str) -> np.ndarray:
        if column not in self._valid:
            self._valid[column] = _np(self.events[column].is_valid())
        return self._valid[column]

    def raw_values(self, column: str, rq: np.ndarray, re: np.ndarray) -> tuple[np.ndarray, pa.Array]:
        """The (query, event) pairs whose event has a non-null value of the column, and those values."""
        keep = self.valid(column)[re]
        return rq[keep], pc.take(self.events[column], pa.array(re[keep]))


def evaluate_group(q_kid: np.ndarray, q_t: np.ndarray, events: pa.Table, hop: int,
                   requests: Sequence[FeatureRequest],
                   materialized: tuple[pa.Table, int] | None = None) -> dict[str, pa.Array]:
    partials = {p: None for r in requests for p in (*r.partials(), *(n for q in r.partials() for n in q.needs))}
    windows = HopWindows(q_kid, q_t, events, hop, list(partials), materialized)
    return {r.output: r.function.offline(windows, r) for r in requests}
