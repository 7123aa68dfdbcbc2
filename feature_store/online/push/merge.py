"""Pushed events into online values: atomically per entity, without ever making materialization wait.

An entity's value of a view is two fields of the store (keys.py):

* the *base* ``[end, folded, group values...]``, written by materialization (all events available before
  ``end``) with plain writes, never read first; and rewritten by pushes with their events folded in, so reads of
  pushed entities stay as fast as any;
* the *delta* ``[version, buckets]``, written by pushes only: every pushed event's single-event partials, also
  kept per *bucket* of its arrival time (a minute by default), ``[[bucket start, group rows...], ...]``.

A push reads both, drops the buckets before the base's ``end`` (materialization read those events from the
log), folds the others into the base unless the base says it holds them already (``folded`` equals the delta's
``version``), adds its events to both, and writes both with ``folded = version + 1``. When materialization then
overwrites the base (``folded`` -1), the events pushed at or after its ``end`` are still in the delta, and a read
folds them in (:meth:`PushTarget.fold`) until the next push to the entity does it for good. So pushes and
materializations commute, nothing is counted twice, and materialization never retries: a push that loses a
race with its write reads again (the store's atomic update).

A snapshot view's delta is the latest pushed row; a read takes the later of it and the base's row.

Groups are stored as tiles.py says; this module merges tiles as rows (``[position, *fields]``, in position
order; the cumulative group as its one row of fields) and converts when it decodes and encodes a value. The
buckets, which only this module reads, are stored as rows.
"""

from __future__ import annotations

import functools
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import msgpack

from feature_store.online.keys import delta_prefix
from feature_store.online.tiles.columnar import UNFOLDED, encode_key, expiry, plain
from feature_store.online.tiles.format import StoredTiles, decode_tiles, encode_tiles
from feature_store.push_rows import PushRows
from feature_store.query import Group, ViewQuery

Event = tuple[int, int, tuple[Any, ...]]  # event time, availability time (epoch us), values in column order
Written = tuple[bytes | None, int | None]  # a value (None: leave the field as it is) and its expiry (epoch ms)


def floor(value: int, hop: int) -> int:
    return value - value % hop


@dataclass(frozen=True)
class PushTarget:
    """What a push needs to update one view's online values, compiled once per registry version."""

    view: str
    prefix: bytes
    keys: tuple[str, ...]
    columns: tuple[str, ...]  # the stored columns, in the order snapshot values and events hold them
    groups: tuple[Group, ...] | None  # None for snapshot views
    ttl: int | None
    ties: tuple[int, ...]  # snapshot columns that break (ts, created) ties, in declaration order
    bucket: int  # microseconds: pushed events are also kept per bucket of their availability time

    @classmethod
    def of(cls, plan: ViewQuery, prefix: bytes, bucket: int) -> PushTarget:
        columns = tuple(plan.columns)
        ties = tuple(columns.index(c) for c in plan.field_order)
        return cls(plan.name, prefix, plan.keys, columns, plan.groups if plan.is_aggregation else None, plan.ttl,
                   ties, bucket)

    @functools.cached_property  # every read of the view asks for it
    def delta(self) -> bytes:
        return delta_prefix(self.prefix)

    def events(self, rows: PushRows, pushed_at: int) -> list[tuple[bytes, Event]]:
        """(packed entity key, event) per pushed row, keys packed as materialization packs them."""
        keys = zip(*(rows.columns[k] for k in self.keys), strict=True)
        values = zip(*(rows.columns.get(c, [None] * rows.count) for c in self.columns), strict=True)
        return [
            (encode_key(b"", key), (ts, pushed_at, tuple(plain(v) for v in vals)))
            for key, ts, vals in zip(keys, rows.timestamps_us, values, strict=True)
        ]

    # --- pushes ---------------------------------------------------------------------------------

    def apply(self, base: bytes | None, delta: bytes | None, events: Sequence[Event],
              now_us: int) -> tuple[Written, Written]:
        """The base and delta with the events merged in, each with its expiry (epoch ms, None: never)."""
        if self.groups is None:
            rows = [_snapshot_row(e) for e in events]
            if delta is not None:
                rows.append(list(msgpack.unpackb(delta)))
            best = max(rows, key=self._order)
            return (None, None), (msgpack.packb(best, default=plain), self._snapshot_expiry(best, now_us))
        value = self._decode(base)
        version, buckets = self._pending(value, delta, now_us)
        for event in events:
            if event[1] < value[0]:  # available before the base's end: materialization counted it (a retry)
                continue
            self._merge_event(value, buckets, event, now_us)
        value[1] = version + 1
        stored = self._encode(value)
        expire = self._expiry(value, now_us)
        return (stored, expire), (msgpack.packb([version + 1, buckets], default=plain), expire)

    def fold(self, base: bytes | None, delta: bytes, now_us: int) -> bytes:
        """For reads: the base with what only the delta holds (the events pushed since it was materialized)."""
        if self.groups is None:
            row = list(msgpack.unpackb(delta))
            if base is not None:
                stored = list(msgpack.unpackb(base))
                if self._order(stored[1:]) >= self._order(row):
                    return base
            return msgpack.packb([0, *row], default=plain)
        value = self._decode(base)
        version, _buckets = self._pending(value, delta, now_us)
        value[1] = version
        return self._encode(value)

    def _pending(self, value: list[Any], delta: bytes | None, now_us: int) -> tuple[int, list[Any]]:
        """The delta's version and its buckets at or after the base's end, folded into the base unless it holds
        them already."""
        version, buckets = (0, []) if delta is None else msgpack.unpackb(delta)
        buckets = [b for b in buckets if b[0] >= value[0]]
        if value[1] != version:
            for bucket in buckets:
                self._combine(value, bucket, now_us)
        return version, buckets

    def _decode(self, blob: bytes | None) -> list[Any]:
        """The base with every bounded group as its tiles, edited tile by tile (tiles.StoredTiles), and the
        cumulative group as its row (None: no event)."""
        groups = self.groups or ()
        value: list[Any] = [0, UNFOLDED, *([None] * len(groups))] if blob is None else list(msgpack.unpackb(blob))
        for g, group in enumerate(groups):
            if group.hop:
                value[2 + g] = StoredTiles(group, value[2 + g])
            elif value[2 + g] is not None:
                value[2 + g] = decode_tiles(group, value[2 + g])[0][1:]
        return value

    def _encode(self, value: list[Any]) -> bytes:
        groups = self.groups or ()
        stored = list(value)
        for g, group in enumerate(groups):
            if group.hop:
                stored[2 + g] = stored[2 + g].stored()
            elif stored[2 + g] is not None:
                stored[2 + g] = encode_tiles(group, [[0, *stored[2 + g]]])
        return msgpack.packb(stored, default=plain)

    def _merge_event(self, value: list[Any], buckets: list[Any], event: Event, now_us: int) -> None:
        """Into the base's groups, and into the bucket of the event's availability time."""
        groups = self.groups or ()
        single = [0, 0, *(_single(group, self.columns, event) for group in groups)]
        if rows := self._positioned(single, event[0], now_us):
            self._combine(value, rows, now_us)
            start = floor(event[1], self.bucket)
            i = bisect_left([b[0] for b in buckets], start)
            if i == len(buckets) or buckets[i][0] != start:
                buckets.insert(i, [start, None, *([None] * len(groups))])
            self._combine(buckets[i], rows, now_us)

    def _positioned(self, single: list[Any], ts: int, now_us: int) -> list[Any] | None:
        """Per group, the event's partials as stored: a tile at its position, or the cumulative row;
        None when no window can reach the event any more (the offline log alone keeps it)."""
        out: list[Any] = single[:2]
        reachable = False
        for g, group in enumerate(self.groups or ()):
            if group.hop == 0:
                out.append(single[2 + g])
                reachable = True
                continue
            pos = floor(ts, group.hop)
            if pos >= floor(now_us - group.window, group.hop):
                out.append([[pos, *single[2 + g]]])
                reachable = True
            else:
                out.append(None)
        return out if reachable else None

    def _combine(self, value: list[Any], other: Sequence[Any], now_us: int) -> None:
        """value[2 + g] combined with other[2 + g] for every group: rows merged, tiles merged by position."""
        for g, group in enumerate(self.groups or ()):
            mine, theirs = value[2 + g], other[2 + g]
            if theirs is None:
                continue
            if group.hop == 0:
                value[2 + g] = list(theirs) if mine is None else merge_fields(group, mine, theirs)
                continue
            reach = floor(now_us - group.window, group.hop)
            if isinstance(mine, StoredTiles):  # a stored value's tiles: only the tiles merged are re-encoded
                mine.drop_before(reach)
                for tile in theirs:
                    if tile[0] >= reach:
                        mine.merge(tile, partial(merge_fields, group))
                continue
            tiles = [list(t) for t in (mine or []) if t[0] >= reach]  # a bucket's rows
            for tile in theirs:
                if tile[0] < reach:
                    continue
                i = bisect_left([t[0] for t in tiles], tile[0])
                if i < len(tiles) and tiles[i][0] == tile[0]:
                    tiles[i] = [tile[0], *merge_fields(group, tiles[i][1:], tile[1:])]
                else:
                    tiles.insert(i, list(tile))
            value[2 + g] = tiles or None

    def _expiry(self, value: list[Any], now_us: int) -> int | None:
        groups = self.groups or ()
        if any(g.hop == 0 for g in groups):
            return None
        ends = [value[2 + g].positions[-1] + group.hop + group.window for g, group in enumerate(groups)
                if value[2 + g].positions]
        return expiry(max(ends), now_us) if ends else expiry(now_us, now_us)

    def _snapshot_expiry(self, row: list[Any], now_us: int) -> int | None:
        return None if self.ttl is None else expiry(row[0] + self.ttl, now_us)

    def _order(self, row: Sequence[Any]) -> tuple[Any, ...]:
        """Latest (ts, created) first; ties go to the greatest values, nulls last, as offline."""
        return (row[0], row[1], *((row[2 + i] is not None, row[2 + i]) for i in self.ties))


def _snapshot_row(event: Event) -> list[Any]:
    return [event[0], event[1], *event[2]]


def _single(group: Group, columns: tuple[str, ...], event: Event) -> list[Any]:
    """The group's fields over one event, as materialization computes them: each partial's own ``of_event``."""
    ts, created, values = event
    row: list[Any] = []
    for kind, at, storages in _single_plan(group, columns):
        value = values[at] if at >= 0 else None
        row += kind.of.of_event(kind, value, ts, created, storages)
    return row


@functools.lru_cache(maxsize=1024)
def _single_plan(group: Group, columns: tuple[str, ...]) -> tuple[tuple[Any, int, tuple[str, ...]], ...]:
    """Per partial: it, the index of its column in an event's values (-1: none), and how its fields are stored."""
    plan = []
    for p in group.partials:
        storages = tuple(group.storages[group.at(name)] for name in p.fields)
        plan.append((p, columns.index(p.column) if p.column else -1, storages))
    return tuple(plan)


def merge_fields(group: Group, a: Sequence[Any], b: Sequence[Any]) -> list[Any]:
    """A group's fields of two disjoint sets of events combined (rows without the tile position)."""
    out = list(a)
    for p in group.partials:
        p.of.merge(p, a, b, out, group.at)
    return out
