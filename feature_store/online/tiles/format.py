"""How a group's tiles are stored online, and read back for many entities at once.

An entity's group value is the msgpack array ``[block, object columns...]``. The block is bytes: per
tile (in position order) one row of 8-byte little-endian words: the tile's position, the group's
numeric partials (int64 or float64, layout.partial_kind) in partial order, then validity words (bit
``k % 64`` of word ``k // 64`` is set when numeric partial ``k`` is not null). Every other partial
(strings, decimals, dates, distinct sets) is a msgpack list with an element per tile, nil for null.
The cumulative group of unbounded windows is one tile at position 0.

Blocks of many entities concatenate into one (tiles x words) matrix, so a read finishes a feature
for every entity at once in numpy, with no Python object per tile (TileBatch); reads of a few
entities, and pushes, which merge a few tiles at a time, read an entity's words as Python lists
(EntityTiles), where numpy's fixed cost per call would dominate.
"""

from __future__ import annotations

import functools
import struct
import sys
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import chain
from typing import Any, Literal

import numpy as np

from feature_store.aggregations import FLOAT, OBJECT
from feature_store.errors import PushDataError
from feature_store.query import Group

_ONE = np.uint64(1)
_LITTLE = sys.byteorder == "little"


@dataclass(frozen=True)
class Shape:
    """Where each partial of a group lives: its word in a tile's row, or its object column."""

    kinds: tuple[str, ...]
    numeric: tuple[int, ...]  # partial indices stored as words, in order
    objects: tuple[int, ...]  # partial indices stored as msgpack lists, in order
    width: int  # words per tile: position, numeric partials, validity words

    @classmethod
    @functools.lru_cache(maxsize=1024)  # pushes ask per entity; bounded for servers that see many registries
    def of(cls, group: Group) -> Shape:
        numeric = tuple(i for i, kind in enumerate(group.storages) if kind != OBJECT)
        objects = tuple(i for i, kind in enumerate(group.storages) if kind == OBJECT)
        return cls(group.storages, numeric, objects, 1 + len(numeric) + -(-len(numeric) // 64))

    def word(self, partial: int) -> int:
        return self.plan[partial][2]

    def validity(self, partial: int) -> tuple[int, np.uint64]:
        """The word and bit that say whether numeric ``partial`` is not null."""
        return self.plan[partial][3], np.uint64(self.plan[partial][4])

    def object_column(self, partial: int) -> int:
        """The index of object ``partial`` in a stored group value."""
        return 1 + self.objects.index(partial)

    @cached_property
    def row_format(self) -> struct.Struct:
        """A tile's words: position, numeric partials (int64 or float64), validity words (unsigned)."""
        numeric = "".join("d" if self.kinds[i] == FLOAT else "q" for i in self.numeric)
        return struct.Struct(f"<q{numeric}{'Q' * (self.width - 1 - len(self.numeric))}")

    @cached_property
    def full(self) -> tuple[int, ...]:
        """Each validity word's value when every partial it covers is not null (as a signed int64)."""
        sizes = [min(64, len(self.numeric) - 64 * w) for w in range(self.width - 1 - len(self.numeric))]
        return tuple((1 << k) - 1 - (1 << 64 if k == 64 else 0) for k in sizes)

    @cached_property
    def plan(self) -> tuple[tuple[bool, bool, int, int, int], ...]:
        """Per partial: (object?, float?, its word or object column, its validity word, its bit there)."""
        out = []
        for i, kind in enumerate(self.kinds):
            if kind == OBJECT:
                out.append((True, False, self.object_column(i), 0, 0))
            else:
                slot = self.numeric.index(i)
                out.append((False, kind == FLOAT, 1 + slot, 1 + len(self.numeric) + slot // 64, slot % 64))
        return tuple(out)


def encode_tiles(group: Group, rows: Sequence[Sequence[Any]]) -> list[Any] | None:
    """``[position, *partials]`` rows (in position order) as the stored group value (None: no tile).

    Column by column, so that Python touches a value only in a column with nulls; the words are then
    packed row-major in one ``struct`` call."""
    if not rows:
        return None
    shape = Shape.of(group)
    count = len(rows)
    columns = list(zip(*rows, strict=True))
    words: list[Sequence[Any]] = [columns[0]]
    flags = [[0] * count for _ in range(shape.width - 1 - len(shape.numeric))]
    for slot, i in enumerate(shape.numeric):
        column, bit, word = columns[1 + i], 1 << slot % 64, flags[slot // 64]
        if None in column:
            zero = 0.0 if shape.kinds[i] == FLOAT else 0
            words.append([zero if v is None else v for v in column])
            for t, value in enumerate(column):
                if value is not None:
                    word[t] |= bit
        else:
            words.append(column)
            flags[slot // 64] = [f | bit for f in word]
    row_major = chain.from_iterable(zip(*words, *flags, strict=True))
    try:
        block = _rows_format(shape.row_format.format, count).pack(*row_major)
    except struct.error as exc:
        raise _too_big(group, exc) from exc
    return [block, *(list(columns[1 + i]) for i in shape.objects)]


def _too_big(group: Group, exc: struct.error) -> PushDataError:
    """Materialization's SQL cast fails on the same sums."""
    return PushDataError(
        f"a tile of partials {list(group.fields)} does not fit 64-bit words ({exc}): sums of integers must stay "
        "within BIGINT (64 bits). Push smaller values or sum a float column.", partials=list(group.fields),
    )


@functools.lru_cache(maxsize=1024)
def _rows_format(row: str, count: int) -> struct.Struct:
    return struct.Struct("<" + row.lstrip("<") * count)


def decode_tiles(group: Group, stored: Sequence[Any] | None) -> list[list[Any]]:
    """The stored group value as ``[position, *partials]`` rows, nulls as None."""
    if stored is None:
        return []
    return EntityTiles(Shape.of(group), stored).rows()


class EntityTiles:
    """One entity's stored group value as Python lists, for reads of a few entities: no numpy call, and a
    column is one slice of the block's words (in C), from any tile on."""

    __slots__ = ("_floats", "_ints", "_shape", "_stored", "_valid", "count", "latest", "positions")

    def __init__(self, shape: Shape, stored: Sequence[Any]) -> None:
        self._shape, self._stored = shape, stored
        self._ints: list[int] = _words(stored[0], "q")
        self._floats: list[Any] | None = None  # typeshed: memoryview.tolist() -> list[int], whatever the format
        self.count = len(self._ints) // shape.width
        width, first = shape.width, 1 + len(shape.numeric)
        self._valid = {w: self._ints[w::width].count(full) == self.count  # validity word all full: no null
                       for w, full in zip(range(first, width), shape.full, strict=True)}
        self.positions = self._ints[0::width]
        self.latest = self._ints[(self.count - 1) * width + 1]  # maxts__ (partial 0) of the last tile

    def column(self, partial: int, first: int = 0) -> list[Any]:
        """The partial's values of the tiles from ``first`` on, nulls as None."""
        is_object, is_float, at, word, bit = self._shape.plan[partial]
        if is_object:
            return list(self._stored[at][first:])
        width = self._shape.width
        if is_float:
            if self._floats is None:
                self._floats = _words(self._stored[0], "d")
            values: list[Any] = self._floats[first * width + at::width]
        else:
            values = self._ints[first * width + at::width]
        if self._valid[word]:
            return values
        flags = self._ints[first * width + word::width]
        return [v if flag >> bit & 1 else None for v, flag in zip(values, flags, strict=True)]

    def rows(self) -> list[list[Any]]:
        """``[position, *partials]`` per tile."""
        columns = [self.positions, *(self.column(i) for i in range(len(self._shape.kinds)))]
        return [list(row) for row in zip(*columns, strict=True)]


class StoredTiles:
    """One entity's stored group value edited tile by tile, for pushes: a pushed event changes one tile (or adds
    one) and drops those no window reaches any more, so only that tile is decoded and encoded again, not all."""

    __slots__ = ("_row", "block", "group", "objects", "positions", "shape")

    def __init__(self, group: Group, stored: Sequence[Any] | None) -> None:
        """``stored`` None: no tile yet."""
        self.group, self.shape = group, Shape.of(group)
        self.block = b"" if stored is None else bytes(stored[0])
        self.objects = [[] for _ in self.shape.objects] if stored is None else [list(c) for c in stored[1:]]
        self._row = 8 * self.shape.width
        self.positions: list[int] = _words(self.block, "q")[0::self.shape.width]

    def drop_before(self, reach: int) -> None:
        """Drop the tiles before position ``reach``."""
        k = bisect_left(self.positions, reach)
        if k:
            self.block = self.block[k * self._row:]
            self.objects = [column[k:] for column in self.objects]
            self.positions = self.positions[k:]

    def merge(self, row: Sequence[Any], combine: Callable[[Sequence[Any], Sequence[Any]], list[Any]]) -> None:
        """Tile ``row`` (``[position, *partials]``) into the tile at its position (``combine`` of the two tiles'
        partials), or inserted in position order."""
        i = bisect_left(self.positions, row[0])
        found = i < len(self.positions) and self.positions[i] == row[0]
        if found:
            row = [row[0], *combine(self._partials(i), row[1:])]
        end = i + 1 if found else i
        self.block = self.block[:i * self._row] + self._packed(row) + self.block[end * self._row:]
        for column, k in zip(self.objects, self.shape.objects, strict=True):
            column[i:end] = [row[1 + k]]
        if not found:
            self.positions.insert(i, row[0])

    def _partials(self, i: int) -> list[Any]:
        """Tile ``i``'s partials, nulls as None (EntityTiles.column, for one tile)."""
        words = self.shape.row_format.unpack_from(self.block, i * self._row)
        return [self.objects[at - 1][i] if is_object else (words[at] if words[word] >> bit & 1 else None)
                for is_object, _is_float, at, word, bit in self.shape.plan]

    def _packed(self, row: Sequence[Any]) -> bytes:
        """One tile's row of words (encode_tiles, for one tile)."""
        shape = self.shape
        words: list[Any] = [row[0]]
        flags = [0] * (shape.width - 1 - len(shape.numeric))
        for slot, i in enumerate(shape.numeric):
            value = row[1 + i]
            if value is None:
                words.append(0.0 if shape.kinds[i] == FLOAT else 0)
            else:
                words.append(value)
                flags[slot // 64] |= 1 << slot % 64
        try:
            return shape.row_format.pack(*words, *flags)
        except struct.error as exc:
            raise _too_big(self.group, exc) from exc

    def stored(self) -> list[Any] | None:
        """The group value as stored; None when no tile is left."""
        return [self.block, *self.objects] if self.positions else None


def _words(block: bytes, kind: Literal["q", "d"]) -> list[Any]:
    """The block's little-endian words as Python ints ("q") or floats ("d")."""
    if _LITTLE:  # memoryview casts read native order, without numpy's fixed cost
        return memoryview(block).cast(kind).tolist()
    words: list[Any] = np.frombuffer(block, dtype="<i8" if kind == "q" else "<f8").tolist()
    return words
