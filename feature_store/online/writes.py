"""What an online store writes: values under keys with an expiry, as Python items or as Arrow columns.

Pushes write a few items; materialization writes thousands of values at a time as a ``Batch`` of
Arrow columns, which Redis receives as one buffer of ``SET`` commands built by Arrow kernels (redis-py
would spend 10-15 us per command packing and parsing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from feature_store.online.packing import BIN, data_of, join, lit, offsets_of

Item = tuple[bytes, bytes, int | None]  # key, value, expire at (epoch ms) or None


@dataclass(frozen=True)
class Batch:
    """Values column by column (large_binary keys and values, int64 expiries in epoch ms or null),
    plus a few Python items written with them (a push marker)."""

    keys: pa.Array
    values: pa.Array
    expire_at: pa.Array | None = None
    extra: tuple[Item, ...] = ()

    def __len__(self) -> int:
        return len(self.keys) + len(self.extra)

    def slice(self, start: int, stop: int) -> Batch:
        expire = None if self.expire_at is None else self.expire_at.slice(start, stop - start)
        return Batch(self.keys.slice(start, stop - start), self.values.slice(start, stop - start), expire)

    def with_items(self, items: Sequence[Item]) -> Batch:
        return Batch(self.keys, self.values, self.expire_at, (*self.extra, *items))

    def key_list(self) -> list[bytes]:
        return [*self.keys.to_pylist(), *(key for key, _, _ in self.extra)]

    def items(self) -> list[Item]:
        expire = [None] * len(self.keys) if self.expire_at is None else self.expire_at.to_pylist()
        return [*zip(self.keys.to_pylist(), self.values.to_pylist(), expire, strict=True), *self.extra]


Writes = Batch | Sequence[Item]


def items_of(writes: Writes) -> Sequence[Item]:
    return writes.items() if isinstance(writes, Batch) else writes


def keys_of(writes: Writes) -> list[bytes]:
    return writes.key_list() if isinstance(writes, Batch) else [key for key, _, _ in writes]


@dataclass(frozen=True)
class Commands:
    """Commands in RESP, back to back, and how many there are (one reply each)."""

    data: bytes
    count: int


def resp_sets(writes: Writes) -> Commands:
    """The RESP encoding of the writes: ``SET key value [PXAT ms]`` per write, except that a batch's values
    without an expiry go as ``MSET`` of up to MSET_KEYS keys (Redis spends about half as much per key)."""
    if not isinstance(writes, Batch):
        return Commands(_resp_items(writes), len(writes))
    if not len(writes.keys):
        data, count = b"", 0
    elif writes.expire_at is None:
        data, count = _resp_mset(writes.keys, writes.values)
    else:
        data, count = _resp_sets(writes.keys, writes.values, writes.expire_at), len(writes.keys)
    return Commands(data + _resp_items(writes.extra), count + len(writes.extra))


MSET_KEYS = 256  # a command of a few hundred KB: Redis serves other clients between two of them


def _resp_items(items: Sequence[Item]) -> bytes:
    parts = []
    for key, value, expire_at in items:
        if expire_at is None:
            parts.append(b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(key), key, len(value), value))
        else:
            ms = b"%d" % expire_at
            parts.append(b"*5\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$4\r\nPXAT\r\n$%d\r\n%b\r\n"
                         % (len(key), key, len(value), value, len(ms), ms))
    return b"".join(parts)


def _decimal(array: pa.Array) -> pa.Array:
    return pc.cast(pc.cast(array, pa.string()), BIN)


def _key_value(keys: pa.Array, values: pa.Array) -> list[pa.Array | pa.Scalar]:
    """The pieces of each row's key and value as two RESP bulk strings (``join`` them)."""
    return [lit(b"$"), _decimal(pc.binary_length(keys)), lit(b"\r\n"), keys, lit(b"\r\n$"),
            _decimal(pc.binary_length(values)), lit(b"\r\n"), values, lit(b"\r\n")]


def _resp_mset(keys: pa.Array, values: pa.Array) -> tuple[bytes, int]:
    pairs = join(_key_value(keys, values))
    data, offsets = data_of(pairs), offsets_of(pairs)
    parts = []
    for start in range(0, len(keys), MSET_KEYS):
        stop = min(start + MSET_KEYS, len(keys))
        parts += [b"*%d\r\n$4\r\nMSET\r\n" % (1 + 2 * (stop - start)), data[offsets[start]:offsets[stop]].tobytes()]
    return b"".join(parts), len(parts) // 2


def _resp_sets(keys: pa.Array, values: pa.Array, expire_at: pa.Array) -> bytes:
    """``SET`` per row, with ``PXAT`` where the row has an expiry: per row a head and a tail, so the values,
    most of the bytes, are copied once."""
    ms = _decimal(expire_at)
    expiring = expire_at.is_valid()
    head = pc.if_else(expiring, lit(b"*5\r\n$3\r\nSET\r\n"), lit(b"*3\r\n$3\r\nSET\r\n"))
    pxat = join([lit(b"$4\r\nPXAT\r\n$"), _decimal(pc.binary_length(ms)), lit(b"\r\n"), ms, lit(b"\r\n")])
    commands = join([head, *_key_value(keys, values), pc.if_else(expiring, pxat, lit(b""))])
    offsets = offsets_of(commands)
    return data_of(commands)[offsets[0]:offsets[-1]].tobytes()
