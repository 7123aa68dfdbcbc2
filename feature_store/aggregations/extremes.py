"""Min and Max: the smallest or largest non-null value of any orderable type; null when none.

NaN never reaches them (a NaN is a missing value: docs/semantics.md); the finishers still order a float NaN as
DuckDB does, the greatest value, so that any tile holding one finishes the same on every path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
from feature_store.aggregations.finishing import per_entity
from feature_store.aggregations.partials import FLOAT, OBJECT, Partial

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from feature_store.query import FeatureRequest


class Min(Aggregation):
    """Smallest non-null value; null when none."""

    function: ClassVar[str] = "min"
    kind: Literal["min"] = "min"

    def __init__(self, column: str, *, window: Duration, name: str = "", hop: Duration | None = None,
                 **data: Any) -> None:
        super().__init__(column, window=window, name=name, hop=hop, **data)


class Max(Aggregation):
    """Largest non-null value; null when none."""

    function: ClassVar[str] = "max"
    kind: Literal["max"] = "max"

    def __init__(self, column: str, *, window: Duration, name: str = "", hop: Duration | None = None,
                 **data: Any) -> None:
        super().__init__(column, window=window, name=name, hop=hop, **data)


def _nan_aware(smallest: bool) -> Callable[..., Any]:
    """min or max with NaN as the greatest value, as in DuckDB: max keeps it, min skips it unless all are."""
    def pick(values: list[float], default: Any) -> Any:
        if not values:
            return default
        numbers = [v for v in values if v == v]
        if len(numbers) == len(values):
            return min(numbers) if smallest else max(numbers)
        return min(numbers) if smallest and numbers else math.nan
    return pick


def _numeric(field: int, smallest: bool, storage: str) -> ManyFinisher:
    """Of numeric fields, for many entities at once."""
    import numpy as np

    def finish(batch: ManyTiles, sel: Selection) -> list[Any]:
        keep = batch.keep(sel.mask, field)
        values = batch.column(field)
        ufunc: np.ufunc
        if storage == FLOAT:
            ufunc, fill = (np.fmin, np.inf) if smallest else (np.maximum, -np.inf)
        else:
            info = np.iinfo(np.int64)
            ufunc, fill = (np.minimum, info.max) if smallest else (np.maximum, info.min)
        picked = batch.per_entity(ufunc, np.where(keep, values, fill))
        found = batch.per_entity(np.logical_or, keep)
        if storage == FLOAT and smallest:  # fmin skipped NaN: where there was nothing else, the minimum is NaN
            picked[batch.per_entity(np.add, (keep & ~np.isnan(values)).astype(np.int64)) == 0] = np.nan
        return [v if k else None for v, k in zip(picked.tolist(), found.tolist(), strict=True)]
    return finish


class ExtremeFunction(AggregationFunction):
    input_types = types.ORDERABLE

    def __init__(self, definition: type[Aggregation]) -> None:
        self.definition = definition  # type: ignore[misc]
        self.kind = definition.function  # type: ignore[misc]
        self.smallest = self.kind == "min"

    def partials(self, feature: Aggregation, input_type: str | None) -> tuple[Partial, ...]:
        return (Partial(self.kind, feature.column),)

    def output_type(self, feature: Aggregation, input_type: str | None) -> str:
        return types.value_type(input_type or "")

    def finish_many(self, feature: Aggregation, fields: Fields, output_type: str) -> ManyFinisher:
        i = fields.at(self.partials(feature, None)[0].fields[0])
        if fields.storage(i) == OBJECT:
            pick = min if self.smallest else max
            return per_entity(i, lambda xs: pick((x for x in xs if x is not None), default=None))
        return _numeric(i, self.smallest, fields.storage(i))

    def finish_one(self, feature: Aggregation, fields: Fields, output_type: str) -> OneFinisher:
        x = fields.at(self.partials(feature, None)[0].fields[0])
        pick = _nan_aware(self.smallest) if fields.storage(x) == FLOAT else (min if self.smallest else max)
        return lambda tiles, i: pick([v for v in tiles.column(x, i) if v is not None], default=None)

    def offline(self, window: OfflineWindow, request: FeatureRequest) -> pa.Array:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        from feature_store.kernel.primitives import I64_MAX, I64_MIN, group_extreme, ordinal_codes, range_reduce

        largest = not self.smallest
        t_lo, rq, re = window.ranges(request.window)
        tile_col = window.tile(self.partials(request.aggregation, None)[0].fields[0])
        rq, values = window.raw_values(request.column or "", rq, re)
        empty = I64_MIN if largest else I64_MAX
        if pa.types.is_floating(tile_col.type):
            fempty = -np.inf if largest else np.inf
            tile_v = pc.fill_null(tile_col.cast(pa.float64()), fempty).to_numpy(zero_copy_only=False)
            raw_v = values.cast(pa.float64()).to_numpy(zero_copy_only=False)
            tile = range_reduce(np.maximum if largest else np.minimum, tile_v, t_lo, window.t_hi, fempty)
            raw = group_extreme(rq, raw_v, window.n, largest, fempty)
            best = np.maximum(tile, raw) if largest else np.minimum(tile, raw)
            return pa.array(best, mask=best == fempty).cast(tile_col.type)
        if pa.types.is_integer(tile_col.type):
            codes = [pc.fill_null(tile_col, empty).to_numpy(zero_copy_only=False).astype(np.int64),
                     values.to_numpy(zero_copy_only=False).astype(np.int64)]
            dictionary = None
        else:  # strings, dates, times, booleans: compare by value order
            codes, dictionary = ordinal_codes([tile_col, values])
            codes[0] = np.where(codes[0] < 0, empty, codes[0])
        tile = range_reduce(np.maximum if largest else np.minimum, codes[0], t_lo, window.t_hi, empty)
        raw = group_extreme(rq, codes[1], window.n, largest, empty)
        best = np.maximum(tile, raw) if largest else np.minimum(tile, raw)
        missing = best == empty
        if dictionary is None:
            return pa.array(best, mask=missing).cast(tile_col.type)
        return pc.take(dictionary, pa.array(np.where(missing, 0, best), mask=missing))


register(ExtremeFunction(Min))
register(ExtremeFunction(Max))
