"""Idempotency keys of pushes: a retried push with the same push id counts once, online and in training sets.

The online store keeps a *record* per (push source, push id) for ``push.idempotency_retention_seconds``:
``[state, pushed_at, digest, rows, to]``. The first attempt creates it (``PENDING``), reserving the push's
availability time; every attempt logs its rows with that time (never a later one), so all copies of a push in the
log are the same events at the same time and readers count each (push id, row) once (offline/duckdb/push_log.py).
Once a copy is durable the record says ``LOGGED`` and retries log no more. Online, each chunk of rows is merged
together with a chunk marker in one atomic update (online/push/writer.py): a retry skips the chunks that landed.

Why a reserved time: online merges drop events available before the base's end (materialization counted them from
the log), so the time an event is merged with online must be the time its counted copy carries in the log.

A copy must be written soon after its time (``lease``), before any materialization can pass that time (push
logs stay ``settle_seconds`` ahead of it). A retry that finds a ``PENDING`` record older than the lease waits until
no earlier attempt can still write (``stale``), then looks for a complete copy in the log: found, the record
becomes ``LOGGED``; not found, the retry reserves a new time and logs the push itself.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import msgpack

from feature_store.errors import PushDataError, PushIdConflictError
from feature_store.online.keys import OWN, PUSHES, key_prefix
from feature_store.online.stores.base import OnlineStore
from feature_store.online.stores.writes import Item

PENDING, LOGGED = 0, 1
MAX_PUSH_ID_LENGTH = 200


def check_push_id(push_id: str | None) -> str | None:
    if push_id is None:
        return None
    if not isinstance(push_id, str) or not 0 < len(push_id) <= MAX_PUSH_ID_LENGTH or not push_id.isprintable():
        raise PushDataError(
            f"push id {str(push_id)[:60]!r} is not 1 to {MAX_PUSH_ID_LENGTH} printable characters; send a unique "
            "id per push, e.g. a UUID.", push_id=str(push_id)[:MAX_PUSH_ID_LENGTH])
    return push_id


def digest(source: str, to: str, lines: bytes) -> bytes:
    """What a retry must repeat exactly: the source, ``to`` and the rows (their log lines at time 0)."""
    return hashlib.sha256(b"\x00".join([source.encode(), to.encode(), lines])).digest()[:16]


@dataclass(frozen=True)
class Record:
    state: int
    pushed_at: int
    digest: bytes
    rows: int
    to: str

    def packed(self) -> bytes:
        return msgpack.packb([self.state, self.pushed_at, self.digest, self.rows, self.to])

    @classmethod
    def unpacked(cls, blob: bytes) -> Record:
        state, pushed_at, dig, rows, to = msgpack.unpackb(blob)
        return cls(state, pushed_at, dig, rows, to)


@dataclass(frozen=True)
class Claim:
    record: Record
    duplicate: bool  # the push id was known before this attempt


class PushKeys:
    """The records and chunk markers of push ids in one project's online store."""

    def __init__(self, store: OnlineStore, store_prefix: str, project: str, retention_seconds: float,
                 settle_seconds: float) -> None:
        self.store, self.store_prefix, self.project = store, store_prefix, project
        self.retention_ms = int(retention_seconds * 1000)
        # Copies are written within lease of their time, well before a materialization (settle behind the clock)
        # can pass it; a PENDING record older than stale has no attempt left that can still write.
        self.lease_us = int(max(settle_seconds / 2, 0.5) * 1_000_000)
        self.stale_us = 2 * self.lease_us

    def record_key(self, source: str, push_id: str) -> bytes:
        # In Redis, one hash per push id holds its record and its chunk markers (fields of the same namespace).
        return key_prefix(self.store_prefix, self.project, PUSHES, source) + OWN + push_id.encode()

    def chunk_marker(self, source: str, push_id: str, start: int) -> Item:
        key = key_prefix(self.store_prefix, self.project, PUSHES, f"{source}/{start}") + OWN + push_id.encode()
        return key, b"1", self._expire()

    def _expire(self) -> int:
        return time.time_ns() // 1_000_000 + self.retention_ms

    def claim(self, source: str, push_id: str, dig: bytes, rows: int, to: str) -> Claim:
        """The push id's record, made now (PENDING, availability reserved) if there is none. Raises
        PushIdConflictError when it was pushed with other rows or another ``to``."""
        key = self.record_key(source, push_id)
        made = Record(PENDING, time.time_ns() // 1000, dig, rows, to)
        found: list[Record | None] = [None]

        def compute(current: Sequence[bytes | None]) -> list[Item]:
            found[0] = None if current[0] is None else Record.unpacked(current[0])
            return [] if found[0] is not None else [(key, made.packed(), self._expire())]

        self.store.update([key], compute)
        record = found[0]
        if record is None:
            return Claim(made, False)
        if (record.digest, record.rows, record.to) != (dig, rows, to):
            raise PushIdConflictError(
                f"push id {push_id!r} of push source {source!r} was used by an earlier push with other rows or "
                f"another 'to' ({record.rows} row(s), to={record.to!r}); a retry must send the same rows, and a new "
                "push needs a new id.", push_source=source, push_id=push_id)
        return Claim(record, True)

    def replace(self, source: str, push_id: str, old: Record, new: Record) -> Record:
        """The record set to ``new`` if it is still ``old``; returns the record as it is now (after)."""
        key = self.record_key(source, push_id)
        now: list[Record] = [new]

        def compute(current: Sequence[bytes | None]) -> list[Item]:
            record = None if current[0] is None else Record.unpacked(current[0])
            if record is not None and record != old:
                now[0] = record  # another attempt changed it first
                return []
            now[0] = new  # (None: the record expired meanwhile: made again)
            return [(key, new.packed(), self._expire())]

        self.store.update([key], compute)
        return now[0]
