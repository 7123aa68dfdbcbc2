"""Finishing feature values from online tiles at read time.

The same semantics as the offline engine: at ``now`` a feature with window W and hop H combines
the tiles starting at or after ``floor_H(now - W)``; every stored event was available before the
last materialization, so all of them are visible at any ``now`` after it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from feature_store.aggregations import Count, CountDistinct, Last, Max, Mean, Min, StdDev, Sum
from feature_store.offline.sql import FeatureRequest
from feature_store.online.layout import Group

Finisher = Callable[[Sequence[Sequence[Any]]], Any]


def empty_value(request: FeatureRequest) -> Any:
    """What an empty window gives, typed like the feature: 0 for counts, 0 or 0.0 for sums, else null."""
    if isinstance(request.feature, Sum):
        return 0 if request.output_type == "BIGINT" else 0.0
    return 0 if isinstance(request.feature, Count | CountDistinct) else None


def finisher(request: FeatureRequest, group: Group) -> Finisher:
    """A function from the group's in-window tile rows to the feature value (rows: [pos, *partials])."""
    feature = request.feature
    column = getattr(feature, "column", None) or ""
    offset = 0 if group.hop == 0 else 1  # tile rows start with the tile position

    def at(name: str) -> int:
        return group.partials.index(name) + offset

    if isinstance(feature, Count):
        i = at(f"n__{column}")
        return lambda rows: sum(r[i] for r in rows)
    if isinstance(feature, Sum):
        i = at(f"sum__{column}")
        zero: Any = 0 if request.output_type == "BIGINT" else 0.0
        return lambda rows: sum((r[i] for r in rows if r[i] is not None), zero)
    if isinstance(feature, Mean):
        n, s = at(f"n__{column}"), at(f"sum__{column}")
        return lambda rows: _mean(rows, n, s)
    if isinstance(feature, Min | Max):
        i = at(f"{'min' if isinstance(feature, Min) else 'max'}__{column}")
        pick = min if isinstance(feature, Min) else max
        return lambda rows: pick((r[i] for r in rows if r[i] is not None), default=None)
    if isinstance(feature, StdDev):
        n, m, m2 = at(f"n__{column}"), at(f"mean__{column}"), at(f"m2__{column}")
        return lambda rows: _stddev(rows, n, m, m2)
    if isinstance(feature, Last):
        v, t, c = at(f"last__{column}"), at(f"lastt__{column}"), at(f"lastc__{column}")
        return lambda rows: _last(rows, v, t, c)
    if isinstance(feature, CountDistinct):
        i = at(f"set__{column}")
        return lambda rows: len({x for r in rows if r[i] for x in r[i]})
    raise TypeError(f"no online finisher for {type(feature).__name__}")


def _mean(rows: Sequence[Sequence[Any]], n: int, s: int) -> float | None:
    count = sum(r[n] for r in rows)
    return None if count == 0 else sum(r[s] for r in rows if r[s] is not None) / count


def _stddev(rows: Sequence[Sequence[Any]], n: int, m: int, m2: int) -> float | None:
    """Chan et al.'s parallel merge of (count, mean, M2) across tiles."""
    total, mean, acc = 0, 0.0, 0.0
    for r in rows:
        count = r[n]
        if not count:
            continue
        delta = r[m] - mean
        new_total = total + count
        mean += delta * count / new_total
        acc += r[m2] + delta * delta * total * count / new_total
        total = new_total
    return None if total < 2 else math.sqrt(max(acc, 0.0) / (total - 1))


def _last(rows: Sequence[Sequence[Any]], v: int, t: int, c: int) -> Any:
    best, key = None, None
    for r in rows:
        if r[t] is not None and (key is None or (r[t], r[c]) > key):
            best, key = r[v], (r[t], r[c])
    return best
