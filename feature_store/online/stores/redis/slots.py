"""Redis Cluster hash slots: of one key, of a column of keys at once, and hash tags that land in a given slot.

A key's slot is CRC16 (XMODEM, what ``binascii.crc_hqx`` computes) of the key, or of its hash tag (the bytes
between its first ``{`` and the next ``}``, when not empty), modulo 16384.
"""

from __future__ import annotations

import threading
from binascii import crc_hqx

import numpy as np
import pyarrow as pa
from redis.crc import key_slot

from feature_store.online.tiles.packing import data_of, offsets_of

SLOTS = 16384
_CRC_TABLE = np.array([crc_hqx(bytes([byte]), 0) for byte in range(256)], dtype=np.uint32)
_OPEN_BRACE = ord("{")


def slot_of(name: bytes) -> int:
    """The slot of a key (redis.crc.key_slot, without its search for a hash tag where there is no brace)."""
    return key_slot(name) if b"{" in name else crc_hqx(name, 0) & (SLOTS - 1)


def slots_of(namespace: bytes, entities: pa.Array) -> np.ndarray:
    """The slot of ``namespace + entity`` for each entity of a large_binary array, vectorized: CRC16 runs byte
    position by byte position over all rows at once, from the namespace's CRC (CRC is streamed); keys with a
    brace (a hash tag may apply) are done one by one. ``namespace`` must hold no brace (config.py)."""
    offsets = offsets_of(entities).astype(np.int64)
    data = data_of(entities)
    starts, lengths = offsets[:-1], np.diff(offsets)
    crc = np.full(len(entities), crc_hqx(namespace, 0), dtype=np.uint32)
    for position in range(int(lengths.max(initial=0))):
        rows = np.nonzero(lengths > position)[0]
        byte = data[starts[rows] + position].astype(np.uint32)
        before = crc[rows]
        crc[rows] = ((before << 8) & 0xFFFF) ^ _CRC_TABLE[((before >> 8) ^ byte) & 0xFF]
    slots = crc & (SLOTS - 1)
    used = data[offsets[0]:offsets[-1]]
    if len(used) and (used == _OPEN_BRACE).any():
        braced = np.unique(np.searchsorted(offsets, offsets[0] + np.nonzero(used == _OPEN_BRACE)[0], "right") - 1)
        for row in braced:
            slots[row] = key_slot(namespace + data[offsets[row]:offsets[row + 1]].tobytes())
    return slots


_TAGS: list[bytes] = []
_TAGS_LOCK = threading.Lock()


def slot_tag(slot: int) -> bytes:
    """A short hash tag whose keys land in ``slot`` (a table of all 16384, made once: ~0.1 s)."""
    if not _TAGS:
        with _TAGS_LOCK:
            if not _TAGS:
                found: dict[int, bytes] = {}
                number = 0
                while len(found) < SLOTS:
                    tag = b"%x" % number
                    found.setdefault(key_slot(tag), tag)
                    number += 1
                _TAGS.extend(found[s] for s in range(SLOTS))
    return _TAGS[slot]
