"""Finishing feature values from online tiles at read time.

The same semantics as the offline engine: at ``now`` a feature with window W and hop H combines
the tiles starting at or after ``floor_H(now - W)``; every stored event was available before the
last materialization, so all of them are visible at any ``now`` after it.

A bounded group's value holds its tiles column by column (layout.py), so a feature is finished
from slices of its partials' columns: the reader finds the first tile in the window once per
window and entity, and sums, compares or merges the slices in C where it can.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from feature_store.aggregations import Count, CountDistinct, Last, Max, Mean, Min, StdDev, Sum
from feature_store.offline.sql import FeatureRequest
from feature_store.online.layout import Group

# (group value, index of the first tile in the window) -> feature value. A bounded group's value is
# [positions, partial columns...]; the cumulative group's is one partial row (the index is unused).
Finisher = Callable[[Sequence[Any], int], Any]
Aggregate = Callable[..., Any]  # partial columns (tiles in position order) -> feature value


def empty_value(request: FeatureRequest) -> Any:
    """What an empty window gives, typed like the feature: 0 for counts, 0 or 0.0 for sums, else null."""
    if isinstance(request.feature, Sum):
        return 0 if request.output_type == "BIGINT" else 0.0
    return 0 if isinstance(request.feature, Count | CountDistinct) else None


def finisher(request: FeatureRequest, group: Group) -> Finisher:
    """A function from a group's stored value and the first tile in the window to the feature value."""
    aggregate, names = _aggregate(request)
    if group.hop == 0:  # the cumulative row: each partial is a column of one tile
        k = tuple(group.partials.index(name) for name in names)
        return lambda row, _i: aggregate(*((row[j],) for j in k))
    # Bounded groups: column 0 holds the tile positions. Reads call these once per entity and feature:
    # the common aggregates get a closure of their own (one Python call), the others share the generic one.
    k = tuple(1 + group.partials.index(name) for name in names)
    feature = request.feature
    a, b = k[0], k[-1]
    if isinstance(feature, Count):
        return lambda columns, i: sum(columns[a][i:])
    if isinstance(feature, Sum):
        zero = empty_value(request)
        return lambda columns, i: sum(filter(None, columns[a][i:]), zero)
    if isinstance(feature, Last):  # no slices: scans back from the latest tile
        return lambda columns, i: _last(columns[a], columns[b], i)
    if len(k) == 1:
        return lambda columns, i: aggregate(columns[a][i:])
    if len(k) == 2:
        return lambda columns, i: aggregate(columns[a][i:], columns[b][i:])
    m = k[1]
    return lambda columns, i: aggregate(columns[a][i:], columns[m][i:], columns[b][i:])  # StdDev


def _aggregate(request: FeatureRequest) -> tuple[Aggregate, tuple[str, ...]]:
    """How a feature combines its partials over the tiles of its window, and which partials it reads."""
    feature = request.feature
    column = getattr(feature, "column", None) or ""
    if isinstance(feature, Count):
        return sum, (f"n__{column}",)
    if isinstance(feature, Sum):
        zero = empty_value(request)
        # filter(None) drops nulls (an all-null tile) and zeros, which leave a sum unchanged, bit for bit
        return (lambda sums: sum(filter(None, sums), zero)), (f"sum__{column}",)
    if isinstance(feature, Mean):
        return _mean, (f"n__{column}", f"sum__{column}")
    if isinstance(feature, Min | Max):
        pick = min if isinstance(feature, Min) else max
        return (lambda xs: _pick(pick, xs)), (f"{pick.__name__}__{column}",)
    if isinstance(feature, StdDev):
        return _stddev, (f"n__{column}", f"mean__{column}", f"m2__{column}")
    if isinstance(feature, Last):
        return (lambda values, times: _last(values, times, 0)), (f"last__{column}", f"lastt__{column}")
    if isinstance(feature, CountDistinct):
        return (lambda sets: len(set().union(*filter(None, sets)))), (f"set__{column}",)
    raise TypeError(f"no online finisher for {type(feature).__name__}")


def _mean(counts: Sequence[int], sums: Sequence[Any]) -> float | None:
    count = sum(counts)
    return None if count == 0 else sum(filter(None, sums)) / count


def _pick(pick: Callable[..., Any], xs: Sequence[Any]) -> Any:
    return pick((x for x in xs if x is not None), default=None) if None in xs else pick(xs, default=None)


def _stddev(counts: Sequence[int], means: Sequence[float], m2s: Sequence[float]) -> float | None:
    """Chan et al.'s parallel merge of (count, mean, M2) across tiles."""
    total, mean, acc = 0, 0.0, 0.0
    for count, m, m2 in zip(counts, means, m2s, strict=True):
        if not count:
            continue
        delta = m - mean
        new_total = total + count
        mean += delta * count / new_total
        acc += m2 + delta * delta * total * count / new_total
        total = new_total
    return None if total < 2 else math.sqrt(max(acc, 0.0) / (total - 1))


def _last(values: Sequence[Any], times: Sequence[int | None], first: int) -> Any:
    """The value of the latest tile from ``first`` on with a non-null value. A tile's events lie in [position,
    position + hop), so the latest (ts, created) of the window is in that tile, which chose among its ties."""
    for j in range(len(times) - 1, first - 1, -1):
        if times[j] is not None:
            return values[j]
    return None
