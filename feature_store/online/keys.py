"""Online store keys: ``namespace NUL view-field NUL entity``, where each store lays them out as it likes.

The namespace (``{store_prefix}:v{LAYOUT_VERSION}:{project}:``) keeps projects, and layouts, apart in a
shared Redis; the view field (``{view}:{signature}``) keeps definitions apart, so a changed one never reads
old values; the entity is its packed key (encode.py). NUL occurs in neither the namespace (config.py
refuses it in a key_prefix; projects and views are identifiers) nor the view field (a hex signature), so
the split is unambiguous whatever bytes the entity holds.

SQLite keeps a key as one opaque blob. Redis keeps ``namespace entity`` as one hash with a field per view:
a read of 100 entities from 3 views is 100 hash lookups instead of 300 key lookups, and these cost Redis
about 3 us each at a million entities (memory latency, not our code: measured in docs/online.md).
"""

from __future__ import annotations

import functools

LAYOUT_VERSION = 5
DELTA = "+"  # after a view field: the field of the events pushed since the value was materialized (push/merge.py)
STORE = "__store"  # in place of a view name (names never start with __): the store's own identity
PUSHES = "__pushes"  # in place of a view name: idempotency records of pushes
SEP = b"\x00"


def key_prefix(store_prefix: str, project: str, view: str, signature: str = "") -> bytes:
    """What every key of the values of one definition of a view starts with: the prefix plus the packed
    entity key is the value's key."""
    return _namespace(store_prefix, project) + SEP + f"{view}:{signature}".encode() + SEP


def delta_prefix(prefix: bytes) -> bytes:
    """The keys of the pushed deltas of the values under ``prefix`` (a key_prefix)."""
    return prefix[:-1] + DELTA.encode() + SEP


OWN = b"\xc1"  # starts the "entity" of the store's own keys: never an entity's (0xc1 never starts msgpack)


def store_id_key(store_prefix: str, project: str) -> bytes:
    """The key of the project's identity in this store: a random id the first materialization writes. Registry
    state is kept per id, so a new store, or one that lost its data (the id with it), is rebuilt."""
    return key_prefix(store_prefix, project, STORE, "id") + OWN + b"id"


def view_prefix(store_prefix: str, project: str, view: str) -> bytes:
    """What the keys of every definition of a view start with (to delete them all)."""
    return _namespace(store_prefix, project) + SEP + f"{view}:".encode()


def stored_as(signature: str) -> str:
    """What the registry records of a view's online values (with its watermark): its definition's signature
    and the layout, so that values stored in an older layout, which no read finds, are rebuilt."""
    return f"{signature}/v{LAYOUT_VERSION}"


def _namespace(store_prefix: str, project: str, layout: int = LAYOUT_VERSION) -> bytes:
    return f"{store_prefix}:v{layout}:{project}:".encode()


def namespaces(store_prefix: str, project: str) -> list[bytes]:
    """What every key of the project starts with, in this layout and every earlier one (teardown). Each ends
    with the project name and a colon, so no other project's keys (names hold no colon) fall under it."""
    return [_namespace(store_prefix, project, layout) for layout in range(1, LAYOUT_VERSION + 1)]


def split_key(key: bytes) -> tuple[bytes, bytes]:
    """(Redis hash key, field) of a store key: ``namespace entity`` and the view field."""
    first = key.find(SEP)
    second = key.find(SEP, first + 1) if first >= 0 else -1
    if second < 0:
        raise ValueError(f"not an online store key (made by keys.key_prefix): {key!r}")
    return key[:first] + key[second + 1:], key[first + 1:second]


@functools.lru_cache(maxsize=4096)  # a read splits each of its views' prefixes: the same few, again and again
def split_prefix(prefix: bytes) -> tuple[bytes, bytes, bool]:
    """(namespace, view field or its start, whether it is the whole field) of a key_prefix or view_prefix."""
    first = prefix.find(SEP)
    if first < 0:
        raise ValueError(f"not an online store key prefix (made by keys.key_prefix): {prefix!r}")
    field = prefix[first + 1:]
    whole = field.endswith(SEP)
    if SEP in field[:-1]:
        raise ValueError(f"an online store key prefix must end at its view field: {prefix!r}")
    return prefix[:first], field[:-1] if whole else field, whole


def field_matches(field: bytes, start: bytes, whole: bool) -> bool:
    return field == start if whole else field.startswith(start)
