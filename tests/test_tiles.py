"""The stored form of a group's tiles (online/tiles), and the two ways a read finishes features from them:
numpy over many entities at once (each function's finish_many) and entity by entity in Python (finish_one).
Tiles are built from random events with the partials pushes compute (online/push/merge.py), nulls and NaN
included."""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feature_store.aggregations import (
    FLOAT,
    INT,
    OBJECT,
    Count,
    CountDistinct,
    Last,
    Max,
    Mean,
    Min,
    StdDev,
    Sum,
    function_of,
)
from feature_store.errors import PushDataError
from feature_store.online.push.merge import _single, merge_fields
from feature_store.online.tiles.batch import TileBatch, select
from feature_store.online.tiles.format import EntityTiles, Shape, StoredTiles, decode_tiles, encode_tiles
from feature_store.query import FeatureRequest, Group

HOP, WINDOW = 10, 40
COLUMNS = ("x", "i", "c")  # a float64, an int64 and a string column


def request(feature: Any, input_type: str | None) -> FeatureRequest:
    kind = function_of(feature).output_type(feature, input_type)
    return FeatureRequest(feature.name, feature.name, kind, input_type, feature.column, HOP, WINDOW, feature)


REQUESTS = [
    request(Count(window="1h", name="n"), None),
    request(Count("x", window="1h", name="nx"), "float64"),
    request(Sum("x", window="1h", name="sx"), "float64"),
    request(Sum("i", window="1h", name="si"), "int64"),
    request(Mean("x", window="1h", name="mx"), "float64"),
    request(StdDev("x", window="1h", name="dx"), "float64"),
    request(Min("x", window="1h", name="lox"), "float64"),
    request(Max("x", window="1h", name="hix"), "float64"),
    request(Min("i", window="1h", name="loi"), "int64"),
    request(Max("c", window="1h", name="hic"), "string"),
    request(Last("c", window="1h", name="lc"), "string"),
    request(Last("x", window="1h", name="lx"), "float64"),
    request(CountDistinct("c", window="1h", name="dc"), "string"),
]
GROUP = Group.of(HOP, REQUESTS)


def _merge(group: Group, a: Any, b: Any) -> list[Any]:
    return merge_fields(group, a, b)

values_x = st.one_of(st.none(), st.just(math.nan), st.floats(-1e6, 1e6, allow_nan=False))
values_i = st.one_of(st.none(), st.integers(-(2**59), 2**59))  # sums of 12 fit int64
values_c = st.one_of(st.none(), st.sampled_from(["a", "b", "c"]))
events = st.lists(st.tuples(st.integers(0, 99), st.integers(0, 5), st.tuples(values_x, values_i, values_c)),
                  max_size=12)


def tiles_of(drawn: list[tuple[int, int, tuple[Any, ...]]]) -> list[list[Any]]:
    """``[position, *partials]`` rows of the events, as pushes merge them."""
    tiles: dict[int, list[Any]] = {}
    for ts, late, values in drawn:
        single = _single(GROUP, COLUMNS, (ts, ts + late, values))
        position = ts - ts % HOP
        tiles[position] = single if position not in tiles else _merge(GROUP, tiles[position], single)
    return [[position, *tiles[position]] for position in sorted(tiles)]


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)
    return type(a) is type(b) and a == b


def test_an_integer_sum_beyond_64_bits_is_a_clear_error() -> None:
    row = [0, *_single(GROUP, COLUMNS, (0, 0, (None, 2**62, None)))]
    big = _merge(GROUP, row[1:], row[1:])
    big = _merge(GROUP, big, big)  # 2**64
    with pytest.raises(PushDataError, match="BIGINT"):
        encode_tiles(GROUP, [[0, *big]])


def test_an_integer_sum_beyond_64_bits_is_a_clear_error_when_a_push_edits_a_tile() -> None:
    row = [0, *_single(GROUP, COLUMNS, (0, 0, (None, 2**62, None)))]
    stored = StoredTiles(GROUP, encode_tiles(GROUP, [row]) or [])
    before = stored.stored()
    with pytest.raises(PushDataError, match="BIGINT"):
        stored.merge(row, lambda a, b: _merge(GROUP, a, b))  # 2**63: one more than the largest
    assert stored.stored() == before  # nothing half-edited


def test_partial_kinds() -> None:
    kinds = dict(zip(GROUP.fields, GROUP.storages, strict=True))
    assert kinds["maxts__"] == kinds["n__"] == kinds["sum__i"] == kinds["min__i"] == kinds["lastt__c"] == INT
    assert kinds["sum__x"] == kinds["mean__x"] == kinds["m2__x"] == kinds["max__x"] == kinds["last__x"] == FLOAT
    assert kinds["max__c"] == kinds["last__c"] == kinds["set__c"] == OBJECT


@settings(max_examples=150, deadline=None)
@given(drawn=events)
def test_stored_tiles_round_trip(drawn: list[tuple[int, int, tuple[Any, ...]]]) -> None:
    rows = tiles_of(drawn)
    stored = encode_tiles(GROUP, rows)
    assert (stored is None) == (not rows)
    back = decode_tiles(GROUP, msgpack.unpackb(msgpack.packb(stored), use_list=False))
    assert len(back) == len(rows)
    for got, want in zip(back, rows, strict=True):
        assert all(same(g, w) or (isinstance(w, list) and sorted(g) == sorted(w))
                   for g, w in zip(got, want, strict=True)), (got, want)


@settings(max_examples=200, deadline=None)
@given(stored_events=events.filter(bool), pushed=events, reach=st.integers(0, 100))
def test_editing_stored_tiles_equals_encoding_them_again(stored_events: list[tuple[int, int, tuple[Any, ...]]],
                                                         pushed: list[tuple[int, int, tuple[Any, ...]]],
                                                         reach: int) -> None:
    """What a push does to a stored value (StoredTiles: drop the tiles before ``reach``, merge each pushed
    event's tile into the tile at its position or insert it) equals decoding every tile, merging as rows and
    encoding them all again: byte for byte, nulls, NaN and object columns included."""
    rows = {row[0]: row for row in tiles_of(stored_events) if row[0] >= reach}
    edited = StoredTiles(GROUP, msgpack.unpackb(msgpack.packb(encode_tiles(GROUP, tiles_of(stored_events)))))
    edited.drop_before(reach)
    for tile in tiles_of(pushed):
        if tile[0] < reach:
            continue
        old = rows.get(tile[0])
        rows[tile[0]] = tile if old is None else [tile[0], *_merge(GROUP, old[1:], tile[1:])]
        edited.merge(tile, lambda a, b: _merge(GROUP, a, b))
    expected = encode_tiles(GROUP, [rows[p] for p in sorted(rows)])
    assert edited.positions == sorted(rows)
    assert msgpack.packb(edited.stored()) == msgpack.packb(expected)


@settings(max_examples=150, deadline=None)
@given(entities=st.lists(events.filter(bool), min_size=1, max_size=6), now=st.integers(0, 150),
       unbounded=st.booleans())
def test_numpy_and_python_finishing_agree(entities: list[list[tuple[int, int, tuple[Any, ...]]]], now: int,
                                          unbounded: bool) -> None:
    """Every feature, every entity: the many-entity path equals the entity-by-entity one, NaN and nulls
    included (NaN is the greatest value, as in DuckDB)."""
    stored = [msgpack.unpackb(msgpack.packb(encode_tiles(GROUP, tiles_of(e))), use_list=False) for e in entities]
    shape = Shape.of(GROUP)
    start = None if unbounded else (now - WINDOW) - (now - WINDOW) % HOP
    batch = TileBatch(shape, list(range(len(stored))), stored)
    selection = select(batch, start)
    few = [EntityTiles(shape, value) for value in stored]
    firsts = [0 if start is None else bisect_left(t.positions, start) for t in few]
    for req in REQUESTS:
        many = req.function.finish_many(req.aggregation, GROUP, req.output_type)(batch, selection)
        finish = req.function.finish_one(req.aggregation, GROUP, req.output_type)
        empty = req.function.empty(req.output_type)
        one = [empty if i == t.count else finish(t, i) for t, i in zip(few, firsts, strict=True)]
        assert all(same(a, b) for a, b in zip(many, one, strict=True)), (req.output, many, one)
