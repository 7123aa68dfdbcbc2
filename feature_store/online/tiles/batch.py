"""One group's tiles of the entities of a read, as one matrix (tiles x words), and a window's selection of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from feature_store.aggregations import FLOAT
from feature_store.online.tiles.format import Shape

_ONE = np.uint64(1)


class TileBatch:
    """One group's tiles of the entities of a read that have any, as one matrix (tiles x words)."""

    def __init__(self, shape: Shape, rows: list[int], stored: list[Sequence[Any]]) -> None:
        self.shape = shape
        self.rows = rows  # the entity rows of the read, in batch order
        self.stored = stored  # their group values (for object columns)
        blocks = [value[0] for value in stored]
        self.words = np.frombuffer(b"".join(blocks), dtype="<i8").reshape(-1, shape.width)
        sizes = np.array(list(map(len, blocks)), dtype=np.int64)
        self.counts = sizes // (8 * shape.width)
        ends = sizes.cumsum() // (8 * shape.width)
        self.heads = ends - self.counts  # each entity's first tile
        self.lasts = ends - 1  # and its last one
        self._valid: dict[int, np.ndarray | None] = {}

    @property
    def positions(self) -> np.ndarray:
        return self.words[:, 0]

    @cached_property
    def index(self) -> np.ndarray:
        """Each tile's row in the batch."""
        return np.arange(len(self.words))

    @cached_property
    def last_positions(self) -> np.ndarray:
        """Per entity, the position of its last tile."""
        return self.words[self.lasts, 0]

    @cached_property
    def latest(self) -> list[int | None]:
        """Per entity, its latest event time: maxts__ (partial 0) of its last tile, whose events are the latest."""
        times: list[int | None] = self.words[self.lasts, 1].tolist()
        return times

    def column(self, partial: int) -> np.ndarray:
        values = self.words[:, self.shape.word(partial)]
        return values.view(np.float64) if self.shape.kinds[partial] == FLOAT else values

    def valid(self, partial: int) -> np.ndarray | None:
        """Per tile, whether numeric ``partial`` is not null; None when no tile has it null (the common case)."""
        if partial not in self._valid:
            column, bit = self.shape.validity(partial)
            flags = ((self.words[:, column].view(np.uint64) >> bit) & _ONE).astype(bool)
            self._valid[partial] = None if flags.all() else flags
        return self._valid[partial]

    def keep(self, mask: np.ndarray, *partials: int) -> np.ndarray:
        """The tiles of ``mask`` in which every one of the numeric ``partials`` is not null."""
        for partial in partials:
            flags = self.valid(partial)
            if flags is not None:
                mask = mask & flags
        return mask

    def objects(self, partial: int) -> list[Sequence[Any]]:
        """Per entity, the partial's object column."""
        k = self.shape.object_column(partial)
        return [value[k] for value in self.stored]

    def per_entity(self, ufunc: np.ufunc, values: np.ndarray) -> np.ndarray:
        """``ufunc`` reduced over each entity's tiles (every entity of a batch has at least one)."""
        return ufunc.reduceat(values, self.heads)


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
