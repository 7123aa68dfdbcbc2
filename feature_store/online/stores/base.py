"""The online store protocol: opaque values under binary keys, each with an expiry, and the capability flags
the code that depends on a store reads.

Everything a store holds is written by materialization and pushes and read back by the reader. Keys carry the
project name and a layout version (online/keys.py), so projects can share one Redis and a new layout never
misreads an old one. Stores: SQLite (the embedded default, sqlite.py) and Redis (redis/).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from typing import ClassVar, Protocol

from feature_store.online.stores.writes import Compute, Writes


class OnlineStore(Protocol):
    name: ClassVar[str]
    # True: a value is gone from its expiry on. False (Redis): it lives at least that long, and as long as
    # any value written before under its entity (expiries only lengthen); reads enforce windows and ttl anyway.
    exact_expiry: ClassVar[bool]
    # True (Redis): an update reads, computes and writes while other writers go on, and starts over when one
    # changed its keys meanwhile, so pushes update in small chunks (a retry redoes little). False (SQLite): an
    # update holds the store's write lock, so a push updates in one transaction.
    optimistic_updates: ClassVar[bool]
    # True (Redis): any host that reaches its URL writes the same store, so an engine's workers can write values
    # themselves (Capabilities.writes_online). False (SQLite): a file on this host's disk; a worker elsewhere
    # opening the same path would write a file of its own, so materialization writes here.
    remote_writes: ClassVar[bool]

    def write(self, writes: Writes) -> None: ...

    def update(self, keys: Sequence[bytes], compute: Compute) -> None:
        """Atomically: read ``keys``, then write what ``compute`` makes of their current values."""
        ...

    def update_each(self, updates: Sequence[tuple[Sequence[bytes], Compute]]) -> None:
        """``update`` of each (keys, compute), each atomic on its own, in any order (a Redis Cluster runs them at
        once); when one fails, others may have been applied."""
        ...

    def transaction_groups(self, keys: Sequence[bytes]) -> list[list[int]]:
        """The positions of ``keys``, grouped so that each group's keys can be one ``update`` (one slot of a Redis
        Cluster); one group of them all where an update may span any keys."""
        ...

    def colocated(self, key: bytes, near: bytes) -> bytes:
        """A key standing for ``key`` that one ``update`` can hold together with ``near`` (same value, another
        place); ``key`` itself where an update may span any keys."""
        ...

    def read(self, keys: Sequence[bytes]) -> list[bytes | None]: ...

    def read_views(self, views: Sequence[tuple[bytes, Sequence[bytes]]]) -> list[bytes | None]:
        """``read`` of the keys ``prefix + entity`` of every (prefix, entities) pair, pair after pair: how
        the reader asks for views' values, which a store may lay out by entity (Redis does)."""
        ...

    async def read_async(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """``read`` for code on an asyncio event loop (the feature server)."""
        ...

    async def read_views_async(self, views: Sequence[tuple[bytes, Sequence[bytes]]]) -> list[bytes | None]: ...

    def delete_prefix(self, prefix: bytes) -> int: ...

    def delete_prefixes(self, prefixes: Sequence[bytes], keep: Collection[bytes] = ()) -> int:
        """Delete every key under any of the prefixes except those in ``keep``; return how many."""
        ...

    def scan(self, prefix: bytes) -> Iterator[list[tuple[bytes, bytes]]]:
        """Every (key, value) under the prefix of one view's values (keys.key_prefix), in batches."""
        ...

    def purge_expired(self, prefix: bytes) -> int:
        """Delete the keys under a prefix whose expiry has passed; return how many (Redis: 0, it expires them)."""
        ...

    def delete(self, keys: Sequence[bytes]) -> int:
        """Delete these keys; return how many there were."""
        ...

    def delete_namespace(self, namespace: bytes) -> int:
        """Delete everything stored under a namespace (keys.namespace: one project in one layout), whatever its
        layout; return how many stored objects went (teardown)."""
        ...

    def ping(self) -> None: ...

    def close(self) -> None: ...


class SingleNode:
    """What a store whose one transaction may span any keys (SQLite, one Redis node) answers for the methods a
    Redis Cluster needs: every update is one group, a key is colocated with any other, updates run one by one."""

    def update(self, keys: Sequence[bytes], compute: Compute) -> None:
        raise NotImplementedError

    def update_each(self, updates: Sequence[tuple[Sequence[bytes], Compute]]) -> None:
        for keys, compute in updates:
            self.update(keys, compute)

    def transaction_groups(self, keys: Sequence[bytes]) -> list[list[int]]:
        return [list(range(len(keys)))] if keys else []  # an update may span any keys

    def colocated(self, key: bytes, near: bytes) -> bytes:
        return key
