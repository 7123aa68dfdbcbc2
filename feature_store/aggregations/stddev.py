"""StdDev: the sample standard deviation (n - 1) of non-null values; null when fewer than two."""

from __future__ import annotations

import math
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
from feature_store.aggregations.partials import Partial

if TYPE_CHECKING:
    import pyarrow as pa

    from feature_store.query import FeatureRequest


class StdDev(Aggregation):
    """Sample standard deviation (n-1) of non-null values; null when fewer than two."""

    function: ClassVar[str] = "stddev"
    kind: Literal["stddev"] = "stddev"

    def __init__(self, column: str, *, window: Duration, name: str = "", hop: Duration | None = None,
                 **data: Any) -> None:
        super().__init__(column, window=window, name=name, hop=hop, **data)


def _stddev(counts: Sequence[int], means: Sequence[float | None], m2s: Sequence[float | None]) -> float | None:
    """The tiles' (count, mean, M2) merged exactly: sum(M2_i) + sum(n_i (mean_i - mean)^2)."""
    parts = [(n, m, m2) for n, m, m2 in zip(counts, means, m2s, strict=True) if n and m is not None and m2 is not None]
    total = sum(n for n, _, _ in parts)
    if total < 2:
        return None
    centre = sum(n * m for n, m, _ in parts) / total
    acc = sum(m2 + n * (m - centre) * (m - centre) for n, m, m2 in parts)
    return math.sqrt(max(acc, 0.0) / (total - 1))


class StdDevFunction(AggregationFunction):
    kind = "stddev"
    definition = StdDev
    input_types = types.NUMERIC

    def partials(self, feature: Aggregation, input_type: str | None) -> tuple[Partial, ...]:
        return (Partial("count", feature.column), Partial("moments", feature.column))

    def output_type(self, feature: Aggregation, input_type: str | None) -> str:
        return "float64"

    def _names(self, feature: Aggregation) -> tuple[str, str, str]:
        count, moments = self.partials(feature, None)
        return count.fields[0], moments.fields[0], moments.fields[1]

    def finish_many(self, feature: Aggregation, fields: Fields, output_type: str) -> ManyFinisher:
        import numpy as np

        n, mean, m2 = (fields.at(name) for name in self._names(feature))

        def finish(batch: ManyTiles, sel: Selection) -> list[Any]:

            keep = batch.keep(sel.mask, mean, m2)
            weights = np.where(keep, batch.column(n), 0).astype(np.float64)
            means = np.where(keep, batch.column(mean), 0.0)
            total = batch.per_entity(np.add, weights)
            centre = batch.per_entity(np.add, weights * means) / np.maximum(total, 1.0)
            deviation = means - np.repeat(centre, batch.counts)
            acc = batch.per_entity(np.add, np.where(keep, batch.column(m2), 0.0) + weights * deviation * deviation)
            spread = np.sqrt(np.maximum(acc, 0.0) / np.maximum(total - 1.0, 1.0)).tolist()
            return [s if t >= 2 else None for s, t in zip(spread, total.tolist(), strict=True)]
        return finish

    def finish_one(self, feature: Aggregation, fields: Fields, output_type: str) -> OneFinisher:
        n, m, m2 = (fields.at(name) for name in self._names(feature))
        return lambda tiles, i: _stddev(tiles.column(n, i), tiles.column(m, i), tiles.column(m2, i))

    def offline(self, window: OfflineWindow, request: FeatureRequest) -> pa.Array:
        import numpy as np
        import pyarrow as pa

        from feature_store.kernel.primitives import prefix_range, range_reduce

        t_lo, rq, re = window.ranges(request.window)
        n, mean, m2 = (window.tile(name) for name in self._names(request.aggregation))
        # A per-key shift keeps the sum of squared deviations free of cancellation.
        t_kid, q_kid = window.t_kid, window.q_kid
        keys = max(int(t_kid.max()) + 1 if len(t_kid) else 0, int(q_kid.max()) + 1 if window.n else 0)
        has = (n > 0).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            shift_k = np.nan_to_num(np.bincount(t_kid, mean * has, keys) / np.bincount(t_kid, has, keys))
        d = np.where(n > 0, mean - shift_k[t_kid], 0.0)
        nt = prefix_range(n, t_lo, window.t_hi).astype(np.float64)
        s1 = range_reduce(np.add, n * d, t_lo, window.t_hi, 0.0)
        s2 = range_reduce(np.add, m2 + n * d * d, t_lo, window.t_hi, 0.0)
        rq, values = window.raw_values(request.column or "", rq, re)
        x = values.to_numpy(zero_copy_only=False).astype(np.float64)
        nr = np.bincount(rq, minlength=window.n).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_r = np.bincount(rq, x, window.n) / nr
            m2_r = np.bincount(rq, (x - mean_r[rq]) ** 2, window.n)
            m2_t = np.where(nt > 0, s2 - s1 * s1 / nt, 0.0)
            mean_t = shift_k[q_kid] + s1 / nt
            cross = np.where((nt > 0) & (nr > 0), (mean_r - mean_t) ** 2 * nt * nr / (nt + nr), 0.0)
            total = nt + nr
            result = np.sqrt(np.maximum(m2_t + np.where(nr > 0, m2_r, 0.0) + cross, 0.0) / (total - 1))
        return pa.array(np.where(total >= 2, result, 0.0), mask=total < 2)


register(StdDevFunction())
