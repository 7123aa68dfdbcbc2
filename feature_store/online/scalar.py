"""Finishing feature values of a few entities in plain Python, tile list by tile list.

numpy's fixed cost per call is more than a Python loop over a handful of entities costs, so reads of
few entities finish here, reads of many in combine.py, with the same semantics: at ``now`` a
feature with window W and hop H combines the tiles starting at or after ``floor_H(now - W)``.
An entity's group is read as Python lists (tiles.EntityTiles); the reader finds the first tile in
the window once per entity and window, and a finisher reads its partials' columns from there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from feature_store.aggregations import Count, CountDistinct, Last, Max, Mean, Min, StdDev, Sum
from feature_store.offline.sql import FeatureRequest
from feature_store.online.layout import FLOAT, Group
from feature_store.online.tiles import EntityTiles

# (an entity's tiles of the group, index of its first tile in the window) -> feature value
Finisher = Callable[[EntityTiles, int], Any]


def finisher(request: FeatureRequest, group: Group) -> Finisher:
    """A function from an entity's tiles and its first tile in the window to the feature value."""
    feature = request.feature
    column = getattr(feature, "column", None) or ""

    def at(name: str) -> int:
        return group.partials.index(f"{name}__{column}")

    if isinstance(feature, Count):
        n = at("n")
        return lambda tiles, i: sum(tiles.column(n, i))
    if isinstance(feature, Sum):
        s, zero = at("sum"), 0 if request.output_type == "BIGINT" else 0.0
        # filter(None) drops nulls (an all-null tile) and zeros, which leave a sum unchanged, bit for bit
        return lambda tiles, i: sum(filter(None, tiles.column(s, i)), zero)
    if isinstance(feature, Mean):
        n, s = at("n"), at("sum")
        return lambda tiles, i: _mean(tiles.column(n, i), tiles.column(s, i))
    if isinstance(feature, StdDev):
        n, m, m2 = at("n"), at("mean"), at("m2")
        return lambda tiles, i: _stddev(tiles.column(n, i), tiles.column(m, i), tiles.column(m2, i))
    if isinstance(feature, Last):
        v, t = at("last"), at("lastt")
        return lambda tiles, i: _last(tiles.column(v, i), tiles.column(t, i))
    if isinstance(feature, Min | Max):
        kind = "min" if isinstance(feature, Min) else "max"
        x = at(kind)
        pick = _nan_aware(kind) if group.kinds[x] == FLOAT else (min if kind == "min" else max)
        return lambda tiles, i: pick([v for v in tiles.column(x, i) if v is not None], default=None)
    if isinstance(feature, CountDistinct):
        d = at("set")
        return lambda tiles, i: len(set().union(*filter(None, tiles.column(d, i))))
    raise TypeError(f"no online finisher for {type(feature).__name__}")


def _mean(counts: Sequence[int], sums: Sequence[Any]) -> float | None:
    count = sum(counts)
    return None if count == 0 else sum(filter(None, sums)) / count


def _nan_aware(kind: str) -> Callable[..., Any]:
    """min or max with NaN as the greatest value, as in DuckDB: max keeps it, min skips it unless all are."""
    def pick(values: list[float], default: Any) -> Any:
        if not values:
            return default
        numbers = [v for v in values if v == v]
        if len(numbers) == len(values):
            return min(numbers) if kind == "min" else max(numbers)
        return min(numbers) if kind == "min" and numbers else math.nan
    return pick


def _stddev(counts: Sequence[int], means: Sequence[float | None], m2s: Sequence[float | None]) -> float | None:
    """The tiles' (count, mean, M2) merged exactly, as combine.py does: sum(M2_i) + sum(n_i (mean_i - mean)^2)."""
    parts = [(n, m, m2) for n, m, m2 in zip(counts, means, m2s, strict=True) if n and m is not None and m2 is not None]
    total = sum(n for n, _, _ in parts)
    if total < 2:
        return None
    centre = sum(n * m for n, m, _ in parts) / total
    acc = sum(m2 + n * (m - centre) * (m - centre) for n, m, m2 in parts)
    return math.sqrt(max(acc, 0.0) / (total - 1))


def _last(values: Sequence[Any], times: Sequence[int | None]) -> Any:
    """The value of the latest tile with a non-null value. A tile's events lie in [position, position + hop),
    so the latest (ts, created) of the window is in that tile, which chose among its ties."""
    for j in range(len(times) - 1, -1, -1):
        if times[j] is not None:
            return values[j]
    return None
