"""msgpack for whole Arrow columns: values for millions of entities without a Python object per value.

Materialization used to convert every tile to Python objects and pack them one by one, which cost
most of its time. Here numeric and string columns are packed in numpy and Arrow kernels, element by
element (integers at the smallest width msgpack-python would choose, floats as float64, strings with
their headers, nulls as nil), and per-entity values are joined from per-row pieces with Arrow's
``binary_join_element_wise``. Anything else (timestamps, decimals, nested lists) goes through the
same msgpack packer as before, value by value. ``msgpack.unpackb`` of a value built here gives what
it gives for the same Python values packed by msgpack-python: reads and pushes need no change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

BIN = pa.large_binary()
NIL = b"\xc0"

# (lowest, highest, tag, payload dtype): msgpack-python's choice of width for an integer
_INT_CLASSES: tuple[tuple[int, int, int | None, str | None], ...] = (
    (0, 127, None, None),  # positive fixint: the value is the byte
    (-32, -1, None, None),  # negative fixint
    (128, 255, 0xCC, ">u1"),
    (256, 65_535, 0xCD, ">u2"),
    (65_536, 2**32 - 1, 0xCE, ">u4"),
    (2**32, 2**63 - 1, 0xCF, ">u8"),
    (-128, -33, 0xD0, ">i1"),
    (-32_768, -129, 0xD1, ">i2"),
    (-(2**31), -32_769, 0xD2, ">i4"),
    (-(2**63), -(2**31) - 1, 0xD3, ">i8"),
)


def lit(data: bytes) -> pa.Scalar:
    return pa.scalar(data, BIN)


def join(pieces: Sequence[pa.Array | pa.Scalar]) -> pa.Array:
    """Row by row, the concatenation of the pieces (arrays of one length, or scalars)."""
    if len(pieces) == 1:
        return pieces[0]
    return pc.binary_join_element_wise(*pieces, lit(b""))


def from_buffers(data: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """A large_binary array whose row i is ``data[offsets[i]:offsets[i + 1]]``."""
    return pa.Array.from_buffers(BIN, len(offsets) - 1, [None, pa.py_buffer(np.ascontiguousarray(offsets, np.int64)),
                                                         pa.py_buffer(np.ascontiguousarray(data, np.uint8))])


def spans(elements: pa.Array, starts: np.ndarray) -> pa.Array:
    """Row i: the packed elements ``starts[i]`` to ``starts[i + 1]`` back to back (``starts`` ascending), without
    copying them: lists, and an entity's tiles, are runs of consecutive elements."""
    return from_buffers(data_of(elements), offsets_of(elements)[starts])


def _valid(array: pa.Array) -> np.ndarray:
    if array.null_count == 0:
        return np.ones(len(array), dtype=bool)
    return np.asarray(array.is_valid().to_numpy(zero_copy_only=False), dtype=bool)


Class = tuple[np.ndarray, int | None, str | None]  # (mask, tag or None: the value is the byte, payload dtype)


def _fixed(values: np.ndarray, tag: int | None, dtype: str | None) -> pa.Array:
    """Every element in one width class: a fixed-width record per element, no index arithmetic."""
    if tag is None or dtype is None:
        return from_buffers((values & 0xFF).astype(np.uint8), np.arange(len(values) + 1, dtype=np.int64))
    records = np.empty(len(values), dtype=[("tag", "u1"), ("value", dtype)])
    records["tag"] = tag
    records["value"] = values
    width = records.dtype.itemsize
    return from_buffers(records.view(np.uint8), np.arange(len(values) + 1, dtype=np.int64) * width)


def _by_class(payloads: np.ndarray, valid: np.ndarray, classes: Sequence[Class]) -> pa.Array:
    """Elements of several width classes (nil where not valid), from each element's 8 big-endian bytes.

    Each element is laid out right-aligned in a row of 9 bytes: its tag just before the payload it keeps
    (the low-order bytes, which are also the narrower big-endian value, signed or not); a boolean mask
    then takes each row's last ``width`` bytes, in order, in one pass.
    """
    rows = np.empty((len(payloads), 9), dtype=np.uint8)
    rows[:, 1:] = payloads
    widths = np.ones(len(payloads), dtype=np.int64)
    for mask, tag, dtype in classes:
        if tag is not None and dtype is not None:
            size = np.dtype(dtype).itemsize
            widths[mask] = 1 + size
            rows[mask, 8 - size] = tag
    rows[~valid, 8] = NIL[0]
    offsets = np.zeros(len(payloads) + 1, dtype=np.int64)
    np.cumsum(widths, out=offsets[1:])
    return from_buffers(rows[np.arange(9) >= (9 - widths)[:, None]], offsets)


def _big_endian(values: np.ndarray, dtype: str) -> np.ndarray:
    return values.astype(dtype).view(np.uint8).reshape(len(values), 8)


def pack_ints(values: np.ndarray, valid: np.ndarray) -> pa.Array:
    """Each int64 (nil where not valid) as msgpack-python packs it."""
    if len(values) and valid.all():
        low, high = int(values.min()), int(values.max())
        for lo, hi, tag, dtype in _INT_CLASSES:
            if lo <= low and high <= hi:
                return _fixed(values, tag, dtype)
    classes = [(valid & (values >= lo) & (values <= hi), tag, dtype) for lo, hi, tag, dtype in _INT_CLASSES]
    return _by_class(_big_endian(values, ">i8"), valid, classes)


def pack_floats(values: np.ndarray, valid: np.ndarray) -> pa.Array:
    """Each value as a msgpack float64 (nil where not valid)."""
    if valid.all():
        return _fixed(values, 0xCB, ">f8")
    return _by_class(_big_endian(values, ">f8"), valid, [(valid, 0xCB, ">f8")])


def _headers(lengths: np.ndarray, small: tuple[int, int], wide: tuple[tuple[int, int, str], ...]) -> pa.Array:
    """Length headers: one byte ``base | n`` below ``limit``, else a tag and a big-endian length."""
    base, limit = small
    if len(lengths) and int(lengths.max()) < limit:  # short strings and arrays, the usual case: one byte each
        return _fixed(lengths | base, None, None)
    classes: list[Class] = [(lengths < limit, None, None)]
    low = limit
    for tag, high, dtype in wide:
        classes.append(((lengths >= low) & (lengths < high), tag, dtype))
        low = high
    small_values = lengths | base * (lengths < limit)
    return _by_class(_big_endian(small_values, ">i8"), np.ones(len(lengths), dtype=bool), classes)


def array_header(count: int) -> bytes:
    """The msgpack header of an array of ``count`` elements."""
    return bytes(array_headers(np.array([count], dtype=np.int64))[0].as_py())


def array_headers(counts: np.ndarray) -> pa.Array:
    """msgpack array headers for arrays of ``counts`` elements."""
    return _headers(counts, (0x90, 16), ((0xDC, 2**16, ">u2"), (0xDD, 2**32, ">u4")))


def bin_headers(lengths: np.ndarray) -> pa.Array:
    """msgpack bin headers for byte strings of ``lengths`` bytes."""
    return _headers(lengths, (0, 0), ((0xC4, 2**8, ">u1"), (0xC5, 2**16, ">u2"), (0xC6, 2**32, ">u4")))


def _string_headers(lengths: np.ndarray) -> pa.Array:
    return _headers(lengths, (0xA0, 32), ((0xD9, 2**8, ">u1"), (0xDA, 2**16, ">u2"), (0xDB, 2**32, ">u4")))


def pack_strings(array: pa.Array) -> pa.Array:
    data = pc.cast(array, BIN)
    lengths = pc.binary_length(data).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    return join([_string_headers(lengths), data]).fill_null(lit(NIL))


def pack_generic(array: pa.Array, default: Callable[[Any], Any]) -> pa.Array:
    """Value by value through msgpack-python: the types numpy and Arrow do not pack here."""
    pack = msgpack.Packer(autoreset=True, default=default).pack
    return pa.array([pack(value) for value in array.to_pylist()], BIN)


def pack_elements(array: pa.Array, default: Callable[[Any], Any]) -> pa.Array:
    """Each element of a column (lists of such columns too) as its msgpack bytes."""
    kind = array.type
    if pa.types.is_integer(kind) and not (pa.types.is_uint64(kind) and len(array)
                                          and (pc.max(array).as_py() or 0) >= 2**63):
        valid = _valid(array)
        values = array.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        return pack_ints(values, valid)
    if pa.types.is_floating(kind):
        valid = _valid(array)
        return pack_floats(array.fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64), valid)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return pack_strings(array)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        offsets = array.offsets.to_numpy().astype(np.int64)
        elements = pack_elements(array.values, default)
        packed = join([array_headers(np.diff(offsets)), spans(elements, offsets)])
        return pc.if_else(array.is_valid(), packed, lit(NIL)) if array.null_count else packed
    return pack_generic(array, default)


def offsets_of(array: pa.Array) -> np.ndarray:
    """A large_binary array's offsets as int64, from its first row."""
    buffer = array.buffers()[1]
    return np.frombuffer(buffer, dtype=np.int64)[array.offset:array.offset + len(array) + 1]


def data_of(array: pa.Array) -> np.ndarray:
    buffer = array.buffers()[2]
    return np.frombuffer(buffer, dtype=np.uint8) if buffer is not None else np.zeros(0, np.uint8)


def pack_keys(columns: Sequence[pa.Array], prefix: bytes, default: Callable[[Any], Any]) -> pa.Array:
    """Per row ``prefix + msgpack([key values...])``, byte for byte what the reader builds."""
    header = bytes([0x90 | len(columns)])
    return join([lit(prefix + header), *(pack_elements(column, default) for column in columns)])
