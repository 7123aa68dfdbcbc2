"""CountDistinct: the number of distinct non-null values; 0 when none.

Distinct counts do not combine from per-tile counts: online, tiles keep their distinct values; a training set
reads every visible event of the window.
"""

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
from feature_store.aggregations.finishing import per_entity
from feature_store.aggregations.partials import Partial

if TYPE_CHECKING:
    import pyarrow as pa

    from feature_store.query import FeatureRequest


class CountDistinct(Aggregation):
    """Number of distinct non-null values; 0 when none."""

    function: ClassVar[str] = "count_distinct"
    kind: Literal["count_distinct"] = "count_distinct"

    def __init__(self, column: str, *, window: Duration, name: str = "", hop: Duration | None = None,
                 **data: Any) -> None:
        super().__init__(column, window=window, name=name, hop=hop, **data)


class CountDistinctFunction(AggregationFunction):
    kind = "count_distinct"
    definition = CountDistinct
    offline_tiles = False

    def partials(self, feature: Aggregation, input_type: str | None) -> tuple[Partial, ...]:
        return (Partial("set", feature.column),)

    def output_type(self, feature: Aggregation, input_type: str | None) -> str:
        return "int64"

    def empty(self, output_type: str) -> Any:
        return 0

    def finish_many(self, feature: Aggregation, fields: Fields, output_type: str) -> ManyFinisher:
        field = fields.at(self.partials(feature, None)[0].fields[0])
        return per_entity(field, lambda sets: len(set().union(*filter(None, sets))))

    def finish_one(self, feature: Aggregation, fields: Fields, output_type: str) -> OneFinisher:
        d = fields.at(self.partials(feature, None)[0].fields[0])
        return lambda tiles, i: len(set().union(*filter(None, tiles.column(d, i))))

    def offline(self, window: OfflineWindow, request: FeatureRequest) -> pa.Array:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        q, e = window.window_events(request.window)
        column = window.events[request.column or ""]
        valid = column.is_valid().to_numpy(zero_copy_only=False)[e]
        q, e = q[valid], e[valid]
        codes = pc.fill_null(pc.dictionary_encode(column).indices, -1).to_numpy(zero_copy_only=False)
        codes = codes.astype(np.int64)[e]
        width = int(codes.max()) + 1 if len(codes) else 1
        pairs = np.unique(q * width + codes)
        return pa.array(np.bincount(pairs // width, minlength=window.n), pa.int64())


register(CountDistinctFunction())
