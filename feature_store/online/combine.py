"""Finishing feature values from online tiles at read time, for every entity of a read at once.

The same semantics as the offline engine: at ``now`` a feature with window W and hop H combines
the tiles starting at or after ``floor_H(now - W)``; every stored event was available before the
last materialization, so all of them are visible at any ``now`` after it.

A read puts one group's tiles of all its entities in one matrix (tiles.TileBatch); a feature is
then a few numpy reductions over the tiles in the window, per entity (``ufunc.reduceat``). Object
partials (strings, dates, distinct sets) are finished per entity in Python.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from feature_store.aggregations import Count, CountDistinct, Last, Max, Mean, Min, StdDev, Sum
from feature_store.offline.sql import FeatureRequest
from feature_store.online.layout import FLOAT, OBJECT, Group
from feature_store.online.tiles import TileBatch


@dataclass(frozen=True)
class Selection:
    """The tiles of a batch inside one window at ``now``."""

    mask: np.ndarray  # per tile
    inside: np.ndarray  # per entity: whether it has any tile in the window

    def firsts(self, batch: TileBatch) -> list[int]:
        """Per entity, its first tile in the window counted from its own first tile (an entity's tiles are in
        position order, so those in the window are its last ones)."""
        result: list[int] = (batch.counts - batch.per_entity(np.add, self.mask.astype(np.int64))).tolist()
        return result


def select(batch: TileBatch, start: int | None) -> Selection:
    """Tiles at or after ``start`` (None: all, the cumulative group)."""
    positions = batch.positions
    if start is None:
        return Selection(np.ones(len(positions), dtype=bool), np.ones(len(batch.rows), bool))
    return Selection(positions >= start, batch.last_positions >= start)


# (tiles of the entities that have any, the window's selection) -> a value per entity of the batch
Finisher = Callable[[TileBatch, Selection], list[Any]]


def empty_value(request: FeatureRequest) -> Any:
    """What an empty window gives, typed like the feature: 0 for counts, 0 or 0.0 for sums, else null."""
    if isinstance(request.feature, Sum):
        return 0 if request.output_type == "BIGINT" else 0.0
    return 0 if isinstance(request.feature, Count | CountDistinct) else None


def finisher(request: FeatureRequest, group: Group) -> Finisher:
    """A function from a read's tiles of ``group`` and a window's selection to the feature's values."""
    feature = request.feature
    column = getattr(feature, "column", None) or ""
    index = group.partials.index
    if isinstance(feature, Count):
        return _total(index(f"n__{column}"), nullable=False)
    if isinstance(feature, Sum):
        return _total(index(f"sum__{column}"), nullable=True)
    if isinstance(feature, Mean):
        return _mean(index(f"n__{column}"), index(f"sum__{column}"))
    if isinstance(feature, StdDev):
        return _stddev(index(f"n__{column}"), index(f"mean__{column}"), index(f"m2__{column}"))
    if isinstance(feature, Last):
        return _last(index(f"last__{column}"), index(f"lastt__{column}"), group.kinds[index(f"last__{column}")])
    if isinstance(feature, Min | Max):
        name = f"{'min' if isinstance(feature, Min) else 'max'}__{column}"
        i = index(name)
        if group.kinds[i] == OBJECT:
            pick = min if isinstance(feature, Min) else max
            return _per_entity(i, lambda xs: pick((x for x in xs if x is not None), default=None))
        return _extreme(i, isinstance(feature, Min), group.kinds[i])
    if isinstance(feature, CountDistinct):
        return _per_entity(index(f"set__{column}"), lambda sets: len(set().union(*filter(None, sets))))
    raise TypeError(f"no online finisher for {type(feature).__name__}")


def _total(i: int, nullable: bool) -> Finisher:
    """Count and Sum: the sum of the non-null partials in the window (0 when none, typed as the column)."""
    def finish(batch: TileBatch, sel: Selection) -> list[Any]:
        values = batch.column(i)
        keep = batch.keep(sel.mask, i) if nullable else sel.mask
        totals: list[Any] = batch.per_entity(np.add, np.where(keep, values, values.dtype.type(0))).tolist()
        return totals
    return finish


def _mean(n: int, s: int) -> Finisher:
    def finish(batch: TileBatch, sel: Selection) -> list[Any]:
        counts = batch.per_entity(np.add, np.where(sel.mask, batch.column(n), 0))
        sums = batch.column(s)
        totals = batch.per_entity(np.add, np.where(batch.keep(sel.mask, s), sums, sums.dtype.type(0)))
        means = (totals / np.maximum(counts, 1)).tolist()
        return [m if c else None for m, c in zip(means, counts.tolist(), strict=True)]
    return finish


def _stddev(n: int, mean: int, m2: int) -> Finisher:
    """The tiles' (count, mean, M2) merged exactly: M2 = sum(M2_i) + sum(n_i (mean_i - mean)^2)."""
    def finish(batch: TileBatch, sel: Selection) -> list[Any]:
        keep = batch.keep(sel.mask, mean, m2)
        weights = np.where(keep, batch.column(n), 0).astype(np.float64)
        means = np.where(keep, batch.column(mean), 0.0)
        total = batch.per_entity(np.add, weights)
        centre = batch.per_entity(np.add, weights * means) / np.maximum(total, 1.0)
        deviation = means - np.repeat(centre, batch.counts)
        acc = batch.per_entity(np.add, np.where(keep, batch.column(m2), 0.0) + weights * deviation * deviation)
        spread = np.sqrt(np.maximum(acc, 0.0) / np.maximum(total - 1.0, 1.0)).tolist()
        return [s if t >= 2 else None for s, t in zip(spread, total.tolist(), strict=True)]
    return finish


def _extreme(i: int, smallest: bool, kind: str) -> Finisher:
    """Min or Max of numeric partials. NaN is the greatest value, as in DuckDB: Max keeps it, Min skips it."""
    def finish(batch: TileBatch, sel: Selection) -> list[Any]:
        keep = batch.keep(sel.mask, i)
        values = batch.column(i)
        ufunc: np.ufunc
        if kind == FLOAT:
            ufunc, fill = (np.fmin, np.inf) if smallest else (np.maximum, -np.inf)
        else:
            info = np.iinfo(np.int64)
            ufunc, fill = (np.minimum, info.max) if smallest else (np.maximum, info.min)
        picked = batch.per_entity(ufunc, np.where(keep, values, fill))
        found = batch.per_entity(np.logical_or, keep)
        if kind == FLOAT and smallest:  # fmin skipped NaN: where there was nothing else, the minimum is NaN
            picked[batch.per_entity(np.add, (keep & ~np.isnan(values)).astype(np.int64)) == 0] = np.nan
        return [v if k else None for v, k in zip(picked.tolist(), found.tolist(), strict=True)]
    return finish


def _last(value: int, time: int, kind: str) -> Finisher:
    """The value of the latest tile in the window with a non-null value. A tile's events lie in [position,
    position + hop), so the latest (ts, created) of the window is in that tile, which chose among its ties."""
    def finish(batch: TileBatch, sel: Selection) -> list[Any]:
        keep = batch.keep(sel.mask, time)
        latest = batch.per_entity(np.maximum, np.where(keep, batch.index, -1))
        if kind != OBJECT:
            values = batch.column(value)[np.maximum(latest, 0)].tolist()
            return [None if t < 0 else v for v, t in zip(values, latest.tolist(), strict=True)]
        columns = batch.objects(value)
        heads = batch.heads.tolist()
        return [None if t < 0 else columns[e][t - heads[e]] for e, t in enumerate(latest.tolist())]
    return finish


def _per_entity(i: int, aggregate: Callable[[Sequence[Any]], Any]) -> Finisher:
    """Object partials: ``aggregate`` over each entity's tiles in the window, in Python."""
    def finish(batch: TileBatch, sel: Selection) -> list[Any]:
        return [aggregate(column[first:]) for column, first in zip(batch.objects(i), sel.firsts(batch), strict=True)]
    return finish
