"""Mean: the sum of non-null values over their count; null when none."""

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
from feature_store.aggregations.partials import Partial
from feature_store.aggregations.sum import window_sums

if TYPE_CHECKING:
    import pyarrow as pa

    from feature_store.query import FeatureRequest


class Mean(Aggregation):
    """Mean of non-null values; null when none."""

    function: ClassVar[str] = "mean"
    kind: Literal["mean"] = "mean"

    def __init__(self, column: str, *, window: Duration, name: str = "", hop: Duration | None = None,
                 **data: Any) -> None:
        super().__init__(column, window=window, name=name, hop=hop, **data)


def _mean(counts: Sequence[int], sums: Sequence[Any]) -> float | None:
    count = sum(counts)
    return None if count == 0 else sum(filter(None, sums)) / count


class MeanFunction(AggregationFunction):
    kind = "mean"
    definition = Mean
    input_types = types.NUMERIC

    def partials(self, feature: Aggregation, input_type: str | None) -> tuple[Partial, ...]:
        return (Partial("count", feature.column), Partial("sum", feature.column))

    def output_type(self, feature: Aggregation, input_type: str | None) -> str:
        return "float64"

    def _fields(self, feature: Aggregation, fields: Fields) -> tuple[int, int]:
        count, total = self.partials(feature, None)
        return fields.at(count.fields[0]), fields.at(total.fields[0])

    def finish_many(self, feature: Aggregation, fields: Fields, output_type: str) -> ManyFinisher:
        import numpy as np

        n, s = self._fields(feature, fields)

        def finish(batch: ManyTiles, sel: Selection) -> list[Any]:

            counts = batch.per_entity(np.add, np.where(sel.mask, batch.column(n), 0))
            sums = batch.column(s)
            totals = batch.per_entity(np.add, np.where(batch.keep(sel.mask, s), sums, sums.dtype.type(0)))
            means = (totals / np.maximum(counts, 1)).tolist()
            return [m if c else None for m, c in zip(means, counts.tolist(), strict=True)]
        return finish

    def finish_one(self, feature: Aggregation, fields: Fields, output_type: str) -> OneFinisher:
        n, s = self._fields(feature, fields)
        return lambda tiles, i: _mean(tiles.column(n, i), tiles.column(s, i))

    def offline(self, window: OfflineWindow, request: FeatureRequest) -> pa.Array:
        import numpy as np
        import pyarrow as pa

        from feature_store.kernel.primitives import prefix_range

        count, total = (p.fields[0] for p in self.partials(request.aggregation, None))
        t_lo, rq, re = window.ranges(request.window)
        column = request.column or ""
        sums = window_sums(window, column, total, t_lo, rq, re).astype(np.float64)
        n = prefix_range(window.tile(count), t_lo, window.t_hi)
        rn, _ = window.raw_values(column, rq, re)
        n = n + np.bincount(rn, minlength=window.n)
        with np.errstate(invalid="ignore", divide="ignore"):
            return pa.array(sums / np.maximum(n, 1), mask=n == 0)


register(MeanFunction())
