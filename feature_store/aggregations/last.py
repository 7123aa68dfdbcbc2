"""Last: the value of the latest event by (timestamp, created) whose value is not null; among events tied on
both, the greatest value (the contract allows any one; this one is reproducible); null when none."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from feature_store import types
from feature_store.aggregations.base import (
    Aggregation,
    AggregationFunction,
    Duration,
    Fields,
    ManyFinisher,
    ManyTiles,
    OfflineWindow,
    OneFinisher,
    Selection,
    register,
)
from feature_store.aggregations.partials import OBJECT, Partial

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from feature_store.query import FeatureRequest


class Last(Aggregation):
    """Value of the latest event by (timestamp, created) whose value is not null; null when none."""

    function: ClassVar[str] = "last"
    kind: Literal["last"] = "last"

    def __init__(self, column: str, *, window: Duration, name: str = "", hop: Duration | None = None,
                 **data: Any) -> None:
        super().__init__(column, window=window, name=name, hop=hop, **data)


def _latest(values: Sequence[Any], times: Sequence[int | None]) -> Any:
    """The value of the latest tile with a non-null value. A tile's events lie in [position, position + hop),
    so the latest (ts, created) of the window is in that tile, which chose among its ties."""
    for j in range(len(times) - 1, -1, -1):
        if times[j] is not None:
            return values[j]
    return None


def _many(value: int, time: int, storage: str) -> ManyFinisher:
    import numpy as np

    def finish(batch: ManyTiles, sel: Selection) -> list[Any]:

        keep = batch.keep(sel.mask, time)
        latest = batch.per_entity(np.maximum, np.where(keep, batch.index, -1))
        if storage != OBJECT:
            values = batch.column(value)[np.maximum(latest, 0)].tolist()
            return [None if t < 0 else v for v, t in zip(values, latest.tolist(), strict=True)]
        columns = batch.objects(value)
        heads = batch.heads.tolist()
        return [None if t < 0 else columns[e][t - heads[e]] for e, t in enumerate(latest.tolist())]
    return finish


def _tie_run_start(kid: np.ndarray, key_t: np.ndarray, key_c: np.ndarray) -> np.ndarray:
    """For each tile, the first index of its run of tiles with a value and the same (key, ts, created).

    Tiles without a value (null) in between do not break a run: they never win a max anyway.
    """
    import numpy as np

    from feature_store.kernel.primitives import I64_MIN

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


class LastFunction(AggregationFunction):
    kind = "last"
    definition = Last

    def partials(self, feature: Aggregation, input_type: str | None) -> tuple[Partial, ...]:
        return (Partial("last", feature.column),)

    def output_type(self, feature: Aggregation, input_type: str | None) -> str:
        return types.value_type(input_type or "")

    def finish_many(self, feature: Aggregation, fields: Fields, output_type: str) -> ManyFinisher:
        value, time, _created = (fields.at(f) for f in self.partials(feature, None)[0].fields)
        return _many(value, time, fields.storage(value))

    def finish_one(self, feature: Aggregation, fields: Fields, output_type: str) -> OneFinisher:
        v, t, _c = (fields.at(f) for f in self.partials(feature, None)[0].fields)
        return lambda tiles, i: _latest(tiles.column(v, i), tiles.column(t, i))

    def offline(self, window: OfflineWindow, request: FeatureRequest) -> pa.Array:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        from feature_store.kernel.primitives import I64_MIN, group_last, ordinal_codes

        t_lo, rq, re = window.ranges(request.window)
        column = request.column or ""
        value, time, created = self.partials(request.aggregation, None)[0].fields
        key_t, key_c = window.tile(time), window.tile(created)
        (tile_code, raw_code), dictionary = ordinal_codes([window.tile(value), window.events[column]])
        tile_idx, tile_best = self._tiles(window, t_lo, key_t, key_c, tile_code)
        safe_tile = np.maximum(tile_idx, 0)
        tile_t = np.where(tile_idx >= 0, key_t[safe_tile] if len(key_t) else I64_MIN, I64_MIN)
        tile_c = np.where(tile_idx >= 0, key_c[safe_tile] if len(key_c) else I64_MIN, I64_MIN)
        # Raw part: the best visible event per query, by (ts, created, value).
        keep = window.valid(column)[re]
        rq, re = rq[keep], re[keep]
        pick = group_last(rq, window.ev_ts[re], window.ev_cr[re], window.n, raw_code[re])
        raw_idx = np.where(pick >= 0, re[np.maximum(pick, 0)] if len(re) else -1, -1)
        safe_raw = np.maximum(raw_idx, 0)
        raw_t = np.where(raw_idx >= 0, window.ev_ts[safe_raw] if len(window.ev_ts) else I64_MIN, I64_MIN)
        raw_c = np.where(raw_idx >= 0, window.ev_cr[safe_raw] if len(window.ev_cr) else I64_MIN, I64_MIN)
        raw_best = np.where(raw_idx >= 0, raw_code[safe_raw] if len(raw_code) else -1, -1)
        use_raw = (raw_idx >= 0) & ((tile_idx < 0) | (raw_t > tile_t) | ((raw_t == tile_t) & (
            (raw_c > tile_c) | ((raw_c == tile_c) & (raw_best > tile_best)))))
        best = np.where(use_raw, raw_best, tile_best)
        return pc.take(dictionary, pa.array(np.maximum(best, 0), mask=best < 0))

    @staticmethod
    def _tiles(window: OfflineWindow, t_lo: np.ndarray, key_t: np.ndarray, key_c: np.ndarray,
               tile_code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per query, the last tile with a value in [t_lo, t_hi) (-1: none), and the best value of its run of
        tiles tied on (ts, created)."""
        import numpy as np

        from feature_store.kernel.primitives import I64_MIN, last_valid_before, range_reduce

        prev = last_valid_before(key_t != I64_MIN)
        end = np.maximum(window.t_hi - 1, 0)
        tile_idx = np.where(window.t_hi > t_lo, prev[end], -1) if len(prev) else np.full(window.n, -1)
        tile_idx = np.where(tile_idx >= t_lo, tile_idx, -1)
        safe_tile = np.maximum(tile_idx, 0)
        tile_best = np.where(tile_idx >= 0, tile_code[safe_tile] if len(tile_code) else -1, -1)
        if len(key_t):  # ties on (ts, created) within the range: the greatest value (rare: only those queries)
            run_start = np.maximum(_tie_run_start(window.t_kid, key_t, key_c)[safe_tile], t_lo)
            tied = np.flatnonzero((tile_idx >= 0) & (run_start < safe_tile))
            if len(tied):
                tile_best[tied] = range_reduce(np.maximum, tile_code, run_start[tied], safe_tile[tied] + 1, -1)
        return tile_idx, tile_best


register(LastFunction())
