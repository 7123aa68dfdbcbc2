"""LastK: the k latest non-null values, newest first, ordered by (timestamp, created, value) descending; ``[]`` when
none. Values tied on all three are kept as many times as they occur.

Its partial keeps a tile's k latest (ts, created, value) triples as three lists (one per field, so each list holds
one type); two tiles merge by keeping the k latest of both. Training sets read the window's events (no tiles).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field as Pydantic

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
from feature_store.aggregations.partials import OBJECT, Compute, Index, Partial, PartialKind, register_kind
from feature_store.durations import format_duration

if TYPE_CHECKING:
    import pyarrow as pa

    from feature_store.query import FeatureRequest

MAX_K = 1000


class LastK(Aggregation):
    """The ``k`` latest non-null values of ``column`` in the window, newest first; ``[]`` when none."""

    function: ClassVar[str] = "last_k"
    kind: Literal["last_k"] = "last_k"
    k: int = Pydantic(5, ge=1, le=MAX_K)

    def __init__(self, column: str, *, k: int = 5, window: Duration, name: str = "", hop: Duration | None = None,
                 **data: Any) -> None:
        super().__init__(column, k=k, window=window, name=name, hop=hop, **data)

    def default_name(self) -> str:
        return f"{self.column}_last{self.k}_{format_duration(self.window)}"


Triple = tuple[int, int, Any]  # (ts, created, value)


def latest(triples: Sequence[Triple], k: int) -> list[Triple]:
    """The k latest triples, latest first (ties on all three kept as often as they occur)."""
    return sorted(triples, reverse=True)[:k]


def _triples(values: Sequence[Any] | None, times: Sequence[int] | None,
             created: Sequence[int] | None) -> list[Triple]:
    if not values or times is None or created is None:
        return []
    return list(zip(times, created, values, strict=True))


class LatestK(PartialKind):
    """The k latest (ts, created, value) of a tile's non-null values: three lists, latest first."""

    name = "latest_k"
    prefixes = ("lastkv", "lastkt", "lastkc")

    def storage(self, partial: Partial, input_type: str | None) -> tuple[str, ...]:
        return (OBJECT, OBJECT, OBJECT)

    def compute(self, partial: Partial) -> tuple[Compute, ...]:
        return tuple(Compute("top_latest", partial.column, part, partial.param) for part in ("v", "t", "c"))

    def of_event(self, partial: Partial, value: Any, ts: int, created: int, storage: Sequence[str]) -> list[Any]:
        return [None, None, None] if value is None else [[value], [ts], [created]]

    def merge(self, partial: Partial, a: Sequence[Any], b: Sequence[Any], out: list[Any], at: Index) -> None:
        v, t, c = (at(name) for name in partial.fields)
        both = latest(_triples(a[v], a[t], a[c]) + _triples(b[v], b[t], b[c]), int(partial.param or 1))
        if not both:
            out[v], out[t], out[c] = None, None, None
            return
        out[t], out[c], out[v] = (list(column) for column in zip(*both, strict=True))


LATEST_K = register_kind(LatestK())


class LastKFunction(AggregationFunction):
    kind = "last_k"
    definition = LastK
    input_types = types.VALUES
    offline_tiles = False

    def partials(self, feature: Aggregation, input_type: str | None) -> tuple[Partial, ...]:
        return (Partial("latest_k", feature.column, _k(feature)),)

    def output_type(self, feature: Aggregation, input_type: str | None) -> str:
        return types.list_of(types.value_type(input_type or ""))

    def empty(self, output_type: str) -> Any:
        return []

    def _fields(self, feature: Aggregation, fields: Fields) -> tuple[int, int, int]:
        v, t, c = (fields.at(name) for name in self.partials(feature, None)[0].fields)
        return v, t, c

    def finish_many(self, feature: Aggregation, fields: Fields, output_type: str) -> ManyFinisher:
        v, t, c = self._fields(feature, fields)
        k = _k(feature)

        def finish(batch: ManyTiles, sel: Selection) -> list[Any]:
            out = []
            for values, times, created, first in zip(batch.objects(v), batch.objects(t), batch.objects(c),
                                                     sel.firsts(batch), strict=True):
                triples = [x for i in range(first, len(values)) for x in _triples(values[i], times[i], created[i])]
                out.append([value for _, _, value in latest(triples, k)])
            return out
        return finish

    def finish_one(self, feature: Aggregation, fields: Fields, output_type: str) -> OneFinisher:
        v, t, c = self._fields(feature, fields)
        k = _k(feature)

        def finish(tiles: Any, i: int) -> list[Any]:
            triples = [x for values, times, created in zip(tiles.column(v, i), tiles.column(t, i),
                                                           tiles.column(c, i), strict=True)
                       for x in _triples(values, times, created)]
            return [value for _, _, value in latest(triples, k)]
        return finish

    def offline(self, window: OfflineWindow, request: FeatureRequest) -> pa.Array:
        import numpy as np
        import pyarrow as pa

        from feature_store.kernel.primitives import ordinal_codes

        q, e = window.window_events(request.window)
        column = window.events[request.column or ""]
        keep = window.valid(request.column or "")[e]
        q, e = q[keep], e[keep]
        (codes,), _dictionary = ordinal_codes([column])
        # per query, events latest first: sort by query, then (ts, created, value) descending
        order = np.lexsort((-codes[e], -window.ev_cr[e], -window.ev_ts[e], q))
        q, e = q[order], e[order]
        starts = np.searchsorted(q, np.arange(window.n), "left")
        rank = np.arange(len(q)) - starts[q]
        chosen = rank < _k(request.aggregation)
        q, e = q[chosen], e[chosen]
        offsets = np.concatenate([[0], np.cumsum(np.bincount(q, minlength=window.n))]).astype(np.int32)
        values = column.take(pa.array(e, pa.int64()))
        return pa.ListArray.from_arrays(pa.array(offsets), values)


def _k(feature: Aggregation) -> int:
    return int(getattr(feature, "k", 1))


register(LastKFunction())
