"""Count: the number of events in the window, or of non-null values of a column; 0 when none."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

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
    import pyarrow as pa

    from feature_store.query import FeatureRequest


class Count(Aggregation):
    """Number of events in the window (or of non-null values of ``column``); 0 when none."""

    function: ClassVar[str] = "count"
    needs_column: ClassVar[bool] = False
    kind: Literal["count"] = "count"

    def __init__(self, column: str | None = None, *, window: Duration, name: str = "",
                 hop: Duration | None = None, **data: Any) -> None:
        super().__init__(column, window=window, name=name, hop=hop, **data)


class CountFunction(AggregationFunction):
    kind = "count"
    definition = Count

    def partials(self, feature: Aggregation, input_type: str | None) -> tuple[Partial, ...]:
        return (Partial("count", feature.column),)

    def output_type(self, feature: Aggregation, input_type: str | None) -> str:
        return "int64"

    def empty(self, output_type: str) -> Any:
        return 0

    def finish_many(self, feature: Aggregation, fields: Fields, output_type: str) -> ManyFinisher:
        return total(fields.at(self.partials(feature, None)[0].fields[0]), nullable=False)

    def finish_one(self, feature: Aggregation, fields: Fields, output_type: str) -> OneFinisher:
        n = fields.at(self.partials(feature, None)[0].fields[0])
        return lambda tiles, i: sum(tiles.column(n, i))

    def offline(self, window: OfflineWindow, request: FeatureRequest) -> pa.Array:
        import numpy as np
        import pyarrow as pa

        from feature_store.kernel.primitives import prefix_range

        t_lo, rq, re = window.ranges(request.window)
        if request.column:
            rq, _ = window.raw_values(request.column, rq, re)
        tiles = prefix_range(window.tile(self.partials(request.aggregation, None)[0].fields[0]), t_lo, window.t_hi)
        return pa.array(tiles + np.bincount(rq, minlength=window.n), pa.int64())


register(CountFunction())
