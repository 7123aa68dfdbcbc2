"""Writes to Redis in its wire protocol (RESP), built column-wise for a batch of many values.

Redis keeps each entity's values of every view in one hash (online/keys.py): a value is ``HSET`` into its
field, and the hash expires when the last of its fields may (``PEXPIREAT ... NX`` then ``... GT``: the later
of the two expiries, whatever the order in which writers come). redis-py would spend 10-15 us per command
packing and parsing; Arrow kernels build a batch's commands in one pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from feature_store.online.keys import split_key, split_prefix
from feature_store.online.stores.writes import Batch, Item, Writes
from feature_store.online.tiles.packing import BIN, data_of, join, lit, offsets_of

NEVER_MS = 253_402_300_799_000  # 9999-12-31: the expiry of a hash holding a value that never expires


@dataclass(frozen=True)
class Commands:
    """Commands in RESP, back to back, and how many there are (one reply each)."""

    data: bytes
    count: int


# Redis before 7.0 has no PEXPIREAT options: the same rule as NX then GT, in one script call per value
LATER_EXPIRY_SCRIPT = b"""local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then return 0 end
local at = tonumber(ARGV[1])
if ttl >= 0 then
  local now = redis.call('TIME')
  if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + ttl >= at then return 0 end
end
return redis.call('PEXPIREAT', KEYS[1], at)"""


def resp_hsets(writes: Writes, scripted: bool = False) -> Commands:
    """The RESP encoding of the writes: per value ``HSET hash field value``, ``PEXPIREAT hash ms NX`` and
    ``PEXPIREAT hash ms GT`` (ms: its expiry, or NEVER_MS). NX gives a new hash (which HSET made without
    expiry) this value's; GT lengthens an older one's. No hash is ever left without expiry, so NX never
    shortens the life of another view's value. ``scripted`` (Redis before 7.0): both as one EVAL."""
    per_value = 2 if scripted else 3
    if not isinstance(writes, Batch):
        return Commands(_resp_items(writes, scripted), per_value * len(writes))
    if not writes.prefix or not len(writes.entities):  # nothing to build column-wise
        return resp_hsets(writes.items(), scripted)
    return Commands(_resp_batch(writes, scripted) + _resp_items(writes.extra, scripted), per_value * len(writes))


def resp_units(writes: Writes, scripted: bool = False) -> tuple[list[bytes], list[bytes], int]:
    """The commands of ``resp_hsets`` value by value, for a Redis Cluster to send each to the node of its hash:
    (hash names, each value's commands, how many commands a value has). A batch's are still built column-wise."""
    per_value = 2 if scripted else 3
    items: Sequence[Item] = writes.extra if isinstance(writes, Batch) else writes
    names: list[bytes] = []
    commands: list[bytes] = []
    if isinstance(writes, Batch) and writes.prefix and len(writes.entities):
        namespace, _, _ = split_prefix(writes.prefix)
        names = join([lit(namespace), writes.entities]).to_pylist()
        commands = batch_rows(writes, scripted).to_pylist()
    elif isinstance(writes, Batch):
        items = writes.items()
    for item in items:
        names.append(split_key(item[0])[0])
        commands.append(_resp_items([item], scripted))
    return names, commands, per_value


def hdel_units(keys: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
    """(hash name, one HDEL of its fields) per hash the keys are fields of."""
    fields: dict[bytes, list[bytes]] = {}
    for key in keys:
        name, field = split_key(key)
        fields.setdefault(name, []).append(field)
    return [(name, b"*%d\r\n$4\r\nHDEL\r\n%b%b" % (2 + len(own), _bulk(name), b"".join(map(_bulk, own))))
            for name, own in fields.items()]


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(data), data)


_HSET = b"*4\r\n$4\r\nHSET\r\n"
_PEXPIREAT = b"*4\r\n$9\r\nPEXPIREAT\r\n"
_EVAL = b"*5\r\n$4\r\nEVAL\r\n" + _bulk(LATER_EXPIRY_SCRIPT) + _bulk(b"1")


def _expiry(name: list[Any], ms: list[Any], scripted: bool, const: Callable[[bytes], Any]) -> list[Any]:
    """The pieces of the commands that give hash ``name`` (its bulk string's pieces) expiry ``ms`` unless it
    has a later one."""
    if scripted:
        return [const(_EVAL), *name, *ms]
    return [const(_PEXPIREAT), *name, *ms, const(b"$2\r\nNX\r\n"), const(_PEXPIREAT), *name, *ms,
            const(b"$2\r\nGT\r\n")]


def _resp_items(items: Sequence[Item], scripted: bool) -> bytes:
    parts = []
    for key, value, expire_at in items:
        name, field = split_key(key)
        ms = b"%d" % (NEVER_MS if expire_at is None else expire_at)
        parts += [_HSET, _bulk(name), _bulk(field), _bulk(value),
                  *_expiry([_bulk(name)], [_bulk(ms)], scripted, bytes)]
    return b"".join(parts)


def _decimal(array: pa.Array) -> pa.Array:
    return pc.cast(pc.cast(array, pa.string()), BIN)


def _bulks(array: pa.Array) -> list[pa.Array | pa.Scalar]:
    """The pieces of each row's RESP bulk string (``join`` them)."""
    return [lit(b"$"), _decimal(pc.binary_length(array)), lit(b"\r\n"), array, lit(b"\r\n")]


def _resp_batch(batch: Batch, scripted: bool) -> bytes:
    """The batch's commands, built column-wise: the hash names are the namespace and each key's entity."""
    return joined(batch_rows(batch, scripted))


def joined(commands: pa.Array) -> bytes:
    """The rows of a binary array, end to end."""
    offsets = offsets_of(commands)
    return data_of(commands)[offsets[0]:offsets[-1]].tobytes()


def batch_rows(batch: Batch, scripted: bool) -> pa.Array:
    """Per value of the batch, its commands."""
    namespace, field, _ = split_prefix(batch.prefix)
    name = _bulks(join([lit(namespace), batch.entities]))
    if batch.expire_at is None:
        ms = [lit(_bulk(b"%d" % NEVER_MS))]
    else:
        ms = _bulks(_decimal(pc.fill_null(batch.expire_at, NEVER_MS)))
    return join([lit(_HSET), *name, lit(_bulk(field)), *_bulks(batch.values), *_expiry(name, ms, scripted, lit)])
