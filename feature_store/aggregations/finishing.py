"""Finishing helpers several functions share: totals of a field over a window, and Python per entity.

A read of many entities holds one group's tiles as a matrix (ManyTiles) and a window's selection of them; a
read of one entity holds its tiles as Python lists (OneTiles) and the index of its first tile in the window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from feature_store.aggregations.base import ManyFinisher, ManyTiles, Selection


def total(field: int, nullable: bool) -> ManyFinisher:
    """The sum of the field's non-null values in the window (0 when none, typed as the field)."""
    import numpy as np

    def finish(batch: ManyTiles, sel: Selection) -> list[Any]:
        values = batch.column(field)
        keep = batch.keep(sel.mask, field) if nullable else sel.mask
        totals: list[Any] = batch.per_entity(np.add, np.where(keep, values, values.dtype.type(0))).tolist()
        return totals
    return finish


def per_entity(field: int, aggregate: Callable[[Sequence[Any]], Any]) -> ManyFinisher:
    """Object fields: ``aggregate`` over each entity's values of the field in the window, in Python."""
    def finish(batch: ManyTiles, sel: Selection) -> list[Any]:
        return [aggregate(column[first:]) for column, first in zip(batch.objects(field), sel.firsts(batch),
                                                                  strict=True)]
    return finish
