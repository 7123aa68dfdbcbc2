"""What an online store writes: values under keys with an expiry, as Python items or as Arrow columns.

Pushes write a few items; materialization writes thousands of values at a time as a ``Batch`` of Arrow
columns, which Redis receives as one buffer of commands built by Arrow kernels (redis/resp.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyarrow as pa

from feature_store.online.tiles.packing import join, lit

Item = tuple[bytes, bytes, int | None]  # key, value, expire at (epoch ms) or None


@dataclass(frozen=True)
class Batch:
    """Values column by column (large_binary entity keys and values, int64 expiries in epoch ms or null),
    plus a few Python items written with them (a push marker). A value's key is ``prefix`` (a
    keys.key_prefix, or empty) and its entity: Redis splits the keys column-wise by knowing both."""

    entities: pa.Array
    values: pa.Array
    expire_at: pa.Array | None = None
    extra: tuple[Item, ...] = ()
    prefix: bytes = b""

    def __len__(self) -> int:
        return len(self.entities) + len(self.extra)

    @property
    def keys(self) -> pa.Array:
        return join([lit(self.prefix), self.entities]) if self.prefix else self.entities

    def slice(self, start: int, stop: int) -> Batch:
        expire = None if self.expire_at is None else self.expire_at.slice(start, stop - start)
        return Batch(self.entities.slice(start, stop - start), self.values.slice(start, stop - start), expire,
                     prefix=self.prefix)

    def with_items(self, items: Sequence[Item]) -> Batch:
        return Batch(self.entities, self.values, self.expire_at, (*self.extra, *items), self.prefix)

    def key_list(self) -> list[bytes]:
        return [*self.keys.to_pylist(), *(key for key, _, _ in self.extra)]

    def items(self) -> list[Item]:
        expire = [None] * len(self.entities) if self.expire_at is None else self.expire_at.to_pylist()
        return [*zip(self.keys.to_pylist(), self.values.to_pylist(), expire, strict=True), *self.extra]


Writes = Batch | Sequence[Item]
Compute = Callable[[list[bytes | None]], Writes]  # an atomic update: current values of keys -> the writes


def items_of(writes: Writes) -> Sequence[Item]:
    return writes.items() if isinstance(writes, Batch) else writes


def keys_of(writes: Writes) -> list[bytes]:
    return writes.key_list() if isinstance(writes, Batch) else [key for key, _, _ in writes]
