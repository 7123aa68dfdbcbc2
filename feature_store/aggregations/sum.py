"""Sum: the sum of non-null values (an integer for integer columns, else a float); 0 when none."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from feature_store import types
from feature_store.aggregations.base import (
    Aggregation,
    AggregationFunction,
    Duration,
    Fields,
    ManyFinisher,
    OfflineWindow,
    OneFinisher,
    register,
)
from feature_store.aggregations.finishing import total
from feature_store.aggregations.partials import Partial

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from feature_store.query import FeatureRequest


class Sum(Aggregation):
    """Sum of non-null values; 0 when none."""

    function: ClassVar[str] = "sum"
    kind: Literal["sum"] = "sum"

    def __init__(self, column: str, *, window: Duration, name: str = "", hop: Duration | None = None,
                 **data: Any) -> None:
        super().__init__(column, window=window, name=name, hop=hop, **data)


def window_sums(window: OfflineWindow, column: str, field: str, t_lo: np.ndarray, rq: np.ndarray,
                re: np.ndarray) -> np.ndarray:
    """Per query, the sum of the column's values in the window: exact integer prefix sums over tiles, float
    sums reduced over the window's own tiles (an error relative to its values, not to a running total)."""
    import numpy as np

    from feature_store.kernel.primitives import prefix_range, range_reduce

    rq, values = window.raw_values(column, rq, re)
    tile_sums = window.tile(field)
    if tile_sums.dtype == np.int64:
        raw = np.zeros(window.n, dtype=np.int64)
        np.add.at(raw, rq, values.to_numpy(zero_copy_only=False).astype(np.int64))
        return prefix_range(tile_sums, t_lo, window.t_hi) + raw
    tiles = range_reduce(np.add, tile_sums, t_lo, window.t_hi, 0.0)
    return tiles + np.bincount(rq, weights=values.to_numpy(zero_copy_only=False).astype(np.float64),
                               minlength=window.n)


class SumFunction(AggregationFunction):
    kind = "sum"
    definition = Sum
    input_types = types.NUMERIC

    def partials(self, feature: Aggregation, input_type: str | None) -> tuple[Partial, ...]:
        return (Partial("sum", feature.column),)

    def output_type(self, feature: Aggregation, input_type: str | None) -> str:
        return "int64" if types.value_type(input_type or "") in types.INTEGERS else "float64"

    def empty(self, output_type: str) -> Any:
        return 0 if output_type == "int64" else 0.0

    def finish_many(self, feature: Aggregation, fields: Fields, output_type: str) -> ManyFinisher:
        return total(fields.at(self.partials(feature, None)[0].fields[0]), nullable=True)

    def finish_one(self, feature: Aggregation, fields: Fields, output_type: str) -> OneFinisher:
        s, zero = fields.at(self.partials(feature, None)[0].fields[0]), self.empty(output_type)
        # filter(None) drops nulls (an all-null tile) and zeros, which leave a sum unchanged, bit for bit
        return lambda tiles, i: sum(filter(None, tiles.column(s, i)), zero)

    def offline(self, window: OfflineWindow, request: FeatureRequest) -> pa.Array:
        import pyarrow as pa

        t_lo, rq, re = window.ranges(request.window)
        field = self.partials(request.aggregation, None)[0].fields[0]
        sums = window_sums(window, request.column or "", field, t_lo, rq, re)
        return pa.array(sums).cast(pa.int64() if request.output_type == "int64" else pa.float64())


register(SumFunction())
