"""Column-wise msgpack (online/packing.py) against msgpack-python, value by value.

Materialization packs whole Arrow columns with numpy and Arrow kernels; readers and pushes decode
with msgpack-python and build keys with it. These properties pin the two to the same bytes (keys)
and the same decoded values (everything)."""

from __future__ import annotations

import math
from typing import Any

import hiredis
import msgpack
import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from feature_store.online.keys import LAYOUT_VERSION, key_prefix
from feature_store.online.stores.redis.resp import NEVER_MS, resp_hsets
from feature_store.online.stores.writes import Batch, items_of
from feature_store.online.tiles.columnar import pack_key, plain
from feature_store.online.tiles.packing import BIN, array_headers, pack_elements, pack_keys

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
# the edges of every msgpack integer width, where an off-by-one would show
EDGES = st.sampled_from([0, 127, 128, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, 2**63 - 1, -1, -32, -33, -128,
                         -129, -32_768, -32_769, -(2**31), -(2**31) - 1, -(2**63)])
SETTINGS = settings(max_examples=200, deadline=None)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@SETTINGS
@given(st.lists(st.one_of(st.none(), INT64, EDGES), max_size=40))
def test_ints_are_packed_as_msgpack_python_packs_them(values: list[int | None]) -> None:
    packed = pack_elements(pa.array(values, pa.int64()), plain).to_pylist()
    assert packed == [msgpack.packb(v) for v in values]  # byte for byte: keys depend on it


@SETTINGS
@given(st.lists(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)), max_size=40),
       st.sampled_from([pa.float64(), pa.float32()]))
def test_floats_decode_to_the_same_values(values: list[float | None], kind: pa.DataType) -> None:
    array = pa.array(values, kind)
    packed = pack_elements(array, plain).to_pylist()
    assert all(_same(msgpack.unpackb(p), v) for p, v in zip(packed, array.to_pylist(), strict=True))


@SETTINGS
@given(st.lists(st.one_of(st.none(), st.text(max_size=40), st.text(min_size=250, max_size=300)), max_size=30))
def test_strings_are_packed_as_msgpack_python_packs_them(values: list[str | None]) -> None:
    assert pack_elements(pa.array(values, pa.string()), plain).to_pylist() == [msgpack.packb(v) for v in values]


@SETTINGS
@given(st.lists(st.one_of(st.none(), st.lists(st.one_of(st.none(), st.text(max_size=5)), max_size=20)),
                max_size=20), st.integers(0, 5))
def test_lists_and_slices_of_them(values: list[list[str | None] | None], start: int) -> None:
    array = pa.array(values, pa.list_(pa.string())).slice(min(start, len(values)))
    assert pack_elements(array, plain).to_pylist() == [msgpack.packb(v) for v in array.to_pylist()]


def test_other_types_go_through_msgpack_python_with_plain() -> None:
    array = pa.array([1, None, 3], pa.decimal128(5, 2))
    assert [msgpack.unpackb(p) for p in pack_elements(array, plain).to_pylist()] == [1.0, None, 3.0]
    stamps = pa.array([0, None], pa.timestamp("us", tz="UTC"))
    assert [msgpack.unpackb(p) for p in pack_elements(stamps, plain).to_pylist()] == [
        "1970-01-01T00:00:00+00:00", None]


@given(st.lists(st.integers(0, 70_000), max_size=30))
def test_array_headers(counts: list[int]) -> None:
    expected = [msgpack.packb([0] * n)[:-n] if n else msgpack.packb([]) for n in counts]
    assert array_headers(np.array(counts, dtype=np.int64)).to_pylist() == expected


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.text(max_size=40)), max_size=20))
def test_keys_are_what_the_reader_builds(keys: list[tuple[int, str]]) -> None:
    columns = [pa.array([k[0] for k in keys], pa.uint64()), pa.array([k[1] for k in keys], pa.string())]
    assert pack_keys(columns, b"p:", plain).to_pylist() == [b"p:" + pack_key(k) for k in keys]


def test_a_batch_is_written_as_its_items() -> None:
    prefix = key_prefix("fs", "proj", "view", "ab12")
    entities = [b"a", b"b\x00b"]
    keys = [prefix + entity for entity in entities]
    marker = (key_prefix("fs", "proj", "view", "ab12") + b"\xc1view", b"x", None)
    batch = Batch(pa.array(entities, pa.large_binary()), pa.array([b"\x01", b""], pa.large_binary()),
                  pa.array([None, 1_700_000_000_000], pa.int64()), prefix=prefix).with_items([marker])
    assert items_of(batch) == [(keys[0], b"\x01", None), (keys[1], b"", 1_700_000_000_000), marker]
    assert resp_hsets(batch) == resp_hsets(items_of(batch))  # the column-wise commands equal the Python ones
    assert resp_hsets(batch.slice(1, 2)) == resp_hsets(items_of(batch)[1:2])
    unsplit = Batch(batch.keys, batch.values)  # no prefix: the keys are split one by one
    assert resp_hsets(unsplit) == resp_hsets([(k, v, None) for k, v, _ in items_of(batch)[:2]])


def test_a_value_is_hset_into_its_entity_hash_which_expires_with_its_last_value() -> None:
    """HSET into the entity's hash, then PEXPIREAT NX and GT: one reply per command; no expiry is the year 9999."""
    prefix = key_prefix("fs", "proj", "view", "ab12")
    batch = Batch(pa.array([b"e1", b"e2"], pa.large_binary()), pa.array([b"v1", b"v2"], BIN),
                  pa.array([5, None], pa.int64()), prefix=prefix)
    commands = resp_hsets(batch)
    assert commands.count == 6
    reader = hiredis.Reader()
    reader.feed(commands.data)
    sent = [reader.gets() for _ in range(6)]
    assert reader.gets() is False
    name = f"fs:v{LAYOUT_VERSION}:proj:e1".encode()
    assert sent[:3] == [[b"HSET", name, b"view:ab12", b"v1"], [b"PEXPIREAT", name, b"5", b"NX"],
                        [b"PEXPIREAT", name, b"5", b"GT"]]
    assert sent[4][2:] == [str(NEVER_MS).encode(), b"NX"] and sent[5][1] == name[:-1] + b"2"
