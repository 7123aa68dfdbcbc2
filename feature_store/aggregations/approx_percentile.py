"""ApproxPercentile: the value at quantile ``q`` of the window's non-null values, within ``relative_accuracy``;
null when none.

A DDSketch-style sketch: each value falls in a logarithmic bucket ``i = ceil(log_gamma(|x|))`` with
``gamma = (1 + a) / (1 - a)``, negatives in mirrored buckets and zero in one of its own; a tile keeps a count per
bucket. Counts add, so merging is exact and order-independent: online equals offline exactly. The result is the
representative value ``2 gamma^i / (gamma + 1)`` (signed) of the bucket that holds the value at 0-based rank
``floor(q (n - 1))`` of the sorted values: within ``a`` (relative) of that value, the exact one at rank
``q (n - 1)`` when it is a whole number, else one of its two neighbours. No interpolation.

Bucket indices are computed with Python's ``math.log`` on every path (pushes, materialization, training sets), so
the same value falls in the same bucket everywhere on a host.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field as Pydantic

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
from feature_store.aggregations.finishing import per_entity
from feature_store.aggregations.partials import OBJECT, Compute, Index, Partial, PartialKind, register_kind
from feature_store.durations import format_duration

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from feature_store.query import FeatureRequest

TINY = 1e-300  # |x| below this falls in the zero bucket (log would underflow the index range)
Buckets = dict[int, int]  # signed bucket key (see _encode) -> count; 0 is the zero bucket


class ApproxPercentile(Aggregation):
    """The ``q`` quantile of ``column``'s non-null values in the window, within ``relative_accuracy``."""

    function: ClassVar[str] = "approx_percentile"
    kind: Literal["approx_percentile"] = "approx_percentile"
    q: float = Pydantic(ge=0.0, le=1.0)
    relative_accuracy: float = Pydantic(0.01, gt=0.0, lt=1.0)

    def __init__(self, column: str, *, q: float, window: Duration, relative_accuracy: float = 0.01, name: str = "",
                 hop: Duration | None = None, **data: Any) -> None:
        super().__init__(column, q=q, window=window, relative_accuracy=relative_accuracy, name=name, hop=hop,
                         **data)

    def default_name(self) -> str:
        percent = f"{self.q * 100:g}".replace(".", "_").replace("-", "m")
        return f"{self.column}_p{percent}_{format_duration(self.window)}"


def gamma_of(accuracy: float) -> float:
    return (1.0 + accuracy) / (1.0 - accuracy)


def representative(key: int, gamma: float) -> float:
    """The value a bucket stands for: within the accuracy of every value in it (0 for the zero bucket)."""
    if key == 0:
        return 0.0
    index = _index(key)
    value = 2.0 * gamma ** index / (gamma + 1.0)
    return value if key > 0 else -value


def _index(key: int) -> int:
    """The bucket index of a signed key: keys are 4j + 1 for index j >= 0 and 4|j| - 1 for index j < 0."""
    k = abs(key)
    return (k - 1) // 4 if k % 4 == 1 else -((k + 1) // 4)


def _encode(index: int) -> int:
    return 4 * index + 1 if index >= 0 else 4 * (-index) - 1


def key_of(value: float, log_gamma: float) -> int:
    magnitude = abs(value)
    if magnitude < TINY:
        return 0
    key = _encode(math.ceil(math.log(magnitude) / log_gamma))
    return key if value > 0 else -key


def _order(key: int) -> tuple[int, int]:
    """Buckets in value order: negatives (larger magnitude first), zero, positives."""
    if key == 0:
        return (1, 0)
    return (2, _index(key)) if key > 0 else (0, -_index(key))


def add(into: Buckets, other: Iterable[tuple[int, int]]) -> None:
    for key, count in other:
        into[key] = into.get(key, 0) + count


def quantile(buckets: Buckets, q: float, gamma: float) -> float | None:
    total = sum(buckets.values())
    if total == 0:
        return None
    rank = math.floor(q * (total - 1))
    for key in sorted(buckets, key=_order):
        rank -= buckets[key]
        if rank < 0:
            return representative(key, gamma)
    return None  # not reached: the ranks add up to total


def _stored(buckets: Buckets) -> list[list[int]] | None:
    """As a field keeps it: [keys, counts] in key order (None: no value)."""
    if not buckets:
        return None
    keys = sorted(buckets)
    return [keys, [buckets[k] for k in keys]]


def _read(stored: Sequence[Any] | None) -> Iterable[tuple[int, int]]:
    return () if not stored else zip(stored[0], stored[1], strict=True)


class LogBuckets(PartialKind):
    """Counts of a tile's non-null values per logarithmic bucket of relative accuracy ``param``."""

    name = "log_buckets"
    prefixes = ("dd",)

    def storage(self, partial: Partial, input_type: str | None) -> tuple[str, ...]:
        return (OBJECT,)

    def compute(self, partial: Partial) -> tuple[Compute, ...]:
        return (Compute("kernel", partial.column, param=partial.param),)

    def _log_gamma(self, partial: Partial) -> float:
        return math.log(gamma_of(float(partial.param or 0.01)))

    def of_event(self, partial: Partial, value: Any, ts: int, created: int, storage: Sequence[str]) -> list[Any]:
        return [None if value is None else [[key_of(float(value), self._log_gamma(partial))], [1]]]

    def merge(self, partial: Partial, a: Sequence[Any], b: Sequence[Any], out: list[Any], at: Index) -> None:
        i = at(partial.fields[0])
        merged: Buckets = {}
        add(merged, _read(a[i]))
        add(merged, _read(b[i]))
        out[i] = _stored(merged)

    def kernel(self, partial: Partial, values: pa.Array, ts: np.ndarray, created: np.ndarray,
               starts: np.ndarray) -> list[Any]:
        python = values.to_pylist()
        log_gamma = self._log_gamma(partial)
        out: list[Any] = []
        for a, b in zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True):
            buckets: Buckets = {}
            add(buckets, ((key_of(float(v), log_gamma), 1) for v in python[a:b] if v is not None and v == v))
            out.append(_stored(buckets))
        return out


register_kind(LogBuckets())


class ApproxPercentileFunction(AggregationFunction):
    kind = "approx_percentile"
    definition = ApproxPercentile
    input_types = types.NUMERIC
    offline_tiles = False

    def partials(self, feature: Aggregation, input_type: str | None) -> tuple[Partial, ...]:
        return (Partial("log_buckets", feature.column, float(getattr(feature, "relative_accuracy", 0.01))),)

    def output_type(self, feature: Aggregation, input_type: str | None) -> str:
        return "float64"

    def _finish(self, feature: Aggregation) -> Any:
        q = float(getattr(feature, "q", 0.5))
        gamma = gamma_of(float(getattr(feature, "relative_accuracy", 0.01)))

        def finish(tiles: Sequence[Any]) -> float | None:
            buckets: Buckets = {}
            for stored in tiles:
                add(buckets, _read(stored))
            return quantile(buckets, q, gamma)
        return finish

    def finish_many(self, feature: Aggregation, fields: Fields, output_type: str) -> ManyFinisher:
        return per_entity(fields.at(self.partials(feature, None)[0].fields[0]), self._finish(feature))

    def finish_one(self, feature: Aggregation, fields: Fields, output_type: str) -> OneFinisher:
        field, finish = fields.at(self.partials(feature, None)[0].fields[0]), self._finish(feature)
        return lambda tiles, i: finish(tiles.column(field, i))

    def offline(self, window: OfflineWindow, request: FeatureRequest) -> pa.Array:
        import numpy as np
        import pyarrow as pa

        q, e = window.window_events(request.window)
        column = request.column or ""
        keep = window.valid(column)[e]
        q, e = q[keep], e[keep]
        order = np.argsort(q, kind="stable")
        q, e = q[order], e[order]
        values = window.events[column].take(pa.array(e, pa.int64())).cast(pa.float64()).to_pylist()
        bounds = np.searchsorted(q, np.arange(window.n + 1), "left").tolist()
        partial = self.partials(request.aggregation, None)[0]
        log_gamma = math.log(gamma_of(float(partial.param or 0.01)))
        finish = self._finish(request.aggregation)
        out = []
        for a, b in itertools.pairwise(bounds):
            buckets: Buckets = {}
            add(buckets, ((key_of(v, log_gamma), 1) for v in values[a:b]))
            out.append(finish([_stored(buckets)]) if buckets else None)
        return pa.array(out, pa.float64())


register(ApproxPercentileFunction())
