"""Pushed events into online values: tiles and latest rows updated in place, atomically per entity.

An aggregation view's value gains the event's single-event partials in the tile of its timestamp
(and in the cumulative row), exactly what materialization would compute from the same events.
The same partials are also added to a *pushed* bucket of the event's availability time (a minute by
default). Materialization rewrites a value from the offline store, where every logged push
available before its ``end`` already is; its ``end`` is a multiple of the bucket, so the old
value's buckets at or after ``end`` hold exactly the pushes it has not seen, and are merged again:
nothing is lost and nothing is counted twice, whichever finishes first. The buckets are bounded by
the time between materializations, not by the number of pushes.

Value layout (see layout.py): ``[end, group values..., pushed]``, pushed = ``[[bucket start, group
values...], ...]`` in bucket order. Groups are stored as tiles.py says; this module merges tiles as
rows (``[position, *partials]``, in position order; the cumulative group as its one row of partials)
and converts when it decodes and encodes a value. The pushed buckets, which only this module reads,
are stored as rows.

Every push also rewrites the view's *marker* key. Materialization writes a batch of values in one
transaction that watches only that key (push source views, MergingWriter): when no push landed
meanwhile, that is as safe as watching every key of the batch, without the cost of watching
thousands of keys (Redis 7.0's WATCH is quadratic in the keys a transaction watches: 0.6 s for
5,000); when one did, the batch is written again watching its own keys, in small batches. A batch
reads its keys first, to keep what pushes stored in them, except in a rebuild while the marker holds
the rebuild's own value (MergingWriter).
"""

from __future__ import annotations

import functools
import os
from bisect import bisect_left
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import msgpack

from feature_store.offline.sql import ViewQuery
from feature_store.online.encode import encode_key
from feature_store.online.encode import expiry as _expiry
from feature_store.online.encode import plain as _plain
from feature_store.online.layout import FLOAT, INT, Group, Layout, floor
from feature_store.online.stores import Compute, OnlineStore
from feature_store.online.tiles import StoredTiles, decode_tiles, encode_tiles
from feature_store.online.writes import Batch, Item, Writes, items_of, keys_of
from feature_store.push_rows import PushRows

Event = tuple[int, int, tuple[Any, ...]]  # event time, availability time (epoch us), values in column order
MARKER = b"\xc1"  # after a view's key prefix: the marker key. No entity key has it (0xc1 never starts msgpack)
WATCHED_BATCH = 200  # keys per transaction when a batch is written watching its own keys


def marker_key(prefix: bytes, view: str) -> bytes:
    """The view's marker key. With the view's name after MARKER, Redis keeps each view's marker in a hash
    of its own, so pushes to one view never disturb a materialization of another that watches its marker."""
    return prefix + MARKER + view.encode()


@dataclass(frozen=True)
class PushTarget:
    """What a push needs to update one view's online values, compiled once per registry version."""

    view: str
    prefix: bytes
    keys: tuple[str, ...]
    columns: tuple[str, ...]  # the stored columns, in the order snapshot values and events hold them
    layout: Layout | None  # None for snapshot views
    ttl: int | None
    ties: tuple[int, ...]  # snapshot columns that break (ts, created) ties, in declaration order
    bucket: int  # microseconds: pushed events are also kept per bucket of their availability time

    @classmethod
    def of(cls, full: ViewQuery, prefix: bytes, bucket: int) -> PushTarget:
        columns = tuple(full.columns)
        layout = Layout.of(full) if full.is_aggregation else None
        ties = tuple(columns.index(c) for c in full.field_order)
        return cls(full.name, prefix, full.keys, columns, layout, full.ttl, ties, bucket)

    def events(self, rows: PushRows, pushed_at: int) -> list[tuple[bytes, Event]]:
        """(key, event) per pushed row, keys encoded as materialization encodes them."""
        keys = zip(*(rows.columns[k] for k in self.keys), strict=True)
        values = zip(*(rows.columns.get(c, [None] * rows.count) for c in self.columns), strict=True)
        return [
            (encode_key(self.prefix, key), (ts, pushed_at, tuple(_plain(v) for v in vals)))
            for key, ts, vals in zip(keys, rows.timestamps_us, values, strict=True)
        ]

    # --- pushes ---------------------------------------------------------------------------------

    def apply(self, blob: bytes | None, events: Sequence[Event], now_us: int) -> tuple[bytes, int | None]:
        """The stored value with the events merged in, and its expiry (epoch ms, None: never)."""
        if self.layout is None:
            rows = [_snapshot_row(e) for e in events]
            if blob is not None:
                rows.append(list(msgpack.unpackb(blob)))
            best = max(rows, key=self._order)
            return msgpack.packb(best, default=_plain), self._snapshot_expiry(best, now_us)
        value = self._decode(blob)
        for event in events:
            self._merge_event(value, event, now_us)
        return self._encode(value), self._expiry(value, now_us)

    @property
    def marker(self) -> bytes:
        """The key every push to the view rewrites (see the module docstring)."""
        return marker_key(self.prefix, self.view)

    def remerge(self, fresh: bytes, old: bytes, end: int, now_us: int) -> tuple[bytes, int | None] | None:
        """A value materialized up to ``end`` (a multiple of the bucket) with what only the old one holds:
        the buckets of events pushed at or after ``end``. None when the fresh value already holds everything."""
        if self.layout is None:
            old_row, new_row = list(msgpack.unpackb(old)), list(msgpack.unpackb(fresh))
            if old_row[1] >= end and self._order(old_row) > self._order(new_row):
                return old, self._snapshot_expiry(old_row, now_us)
            return None
        groups = self.layout.groups
        stored = msgpack.unpackb(old)
        if len(stored) == 1 + len(groups):  # as materialized: nothing pushed since
            return None
        pending = [b for b in stored[-1] if b[0] >= end]
        if not pending:
            return None
        value = self._decode(fresh)
        for bucket in pending:
            self._combine(value, bucket, now_us)
        value[-1] = pending
        return self._encode(value), self._expiry(value, now_us)

    def _decode(self, blob: bytes | None) -> list[Any]:
        """The stored value with every bounded group as its tiles, edited tile by tile (tiles.StoredTiles), and
        the cumulative group as its row (None: no event), and its pushed buckets."""
        groups = self.layout.groups if self.layout else ()
        value: list[Any] = [0, *([None] * len(groups))] if blob is None else list(msgpack.unpackb(blob))
        for g, group in enumerate(groups):
            if group.hop:
                value[1 + g] = StoredTiles(group, value[1 + g])
            elif value[1 + g] is not None:
                value[1 + g] = decode_tiles(group, value[1 + g])[0][1:]
        if len(value) == 1 + len(groups):  # as materialized: nothing pushed since
            value.append([])
        return value

    def _encode(self, value: list[Any]) -> bytes:
        """The value as stored (tiles.py); the pushed buckets stay rows."""
        groups = self.layout.groups if self.layout else ()
        stored = list(value)
        for g, group in enumerate(groups):
            if group.hop:
                stored[1 + g] = stored[1 + g].stored()
            elif stored[1 + g] is not None:
                stored[1 + g] = encode_tiles(group, [[0, *stored[1 + g]]])
        return msgpack.packb(stored, default=_plain)

    def _merge_event(self, value: list[Any], event: Event, now_us: int) -> None:
        """Into the served groups, and into the pushed-events bucket of the event's availability time."""
        groups = self.layout.groups if self.layout else ()
        single = [0, *(_single(group, self.columns, event) for group in groups)]
        if group_rows := self._positioned(single, event[0], now_us):
            self._combine(value, group_rows, now_us)
            start = floor(event[1], self.bucket)
            buckets = value[-1]
            i = bisect_left([b[0] for b in buckets], start)
            if i == len(buckets) or buckets[i][0] != start:
                buckets.insert(i, [start, *([None] * len(groups))])
            self._combine(buckets[i], group_rows, now_us)

    def _positioned(self, single: list[Any], ts: int, now_us: int) -> list[Any] | None:
        """Per group, the event's partials as stored: a tile at its position, or the cumulative row;
        None when no window can reach the event any more (the offline log alone keeps it)."""
        groups = self.layout.groups if self.layout else ()
        out: list[Any] = [single[0]]
        reachable = False
        for g, group in enumerate(groups):
            if group.hop == 0:
                out.append(single[1 + g])
                reachable = True
                continue
            pos = floor(ts, group.hop)
            if pos >= floor(now_us - group.window, group.hop):
                out.append([[pos, *single[1 + g]]])
                reachable = True
            else:
                out.append(None)
        return out if reachable else None

    def _combine(self, value: list[Any], other: Sequence[Any], now_us: int) -> None:
        """value[1 + g] combined with other[1 + g] for every group: rows merged, tiles merged by position."""
        groups = self.layout.groups if self.layout else ()
        for g, group in enumerate(groups):
            mine, theirs = value[1 + g], other[1 + g]
            if theirs is None:
                continue
            if group.hop == 0:
                value[1 + g] = list(theirs) if mine is None else _merge(group, mine, theirs)
                continue
            reach = floor(now_us - group.window, group.hop)
            if isinstance(mine, StoredTiles):  # a stored value's tiles: only the tiles merged are re-encoded
                mine.drop_before(reach)
                for tile in theirs:
                    if tile[0] >= reach:
                        mine.merge(tile, partial(_merge, group))
                continue
            tiles = [list(t) for t in (mine or []) if t[0] >= reach]  # a pushed bucket's rows
            for tile in theirs:
                if tile[0] < reach:
                    continue
                i = bisect_left([t[0] for t in tiles], tile[0])
                if i < len(tiles) and tiles[i][0] == tile[0]:
                    tiles[i] = [tile[0], *_merge(group, tiles[i][1:], tile[1:])]
                else:
                    tiles.insert(i, list(tile))
            value[1 + g] = tiles or None

    def _expiry(self, value: list[Any], now_us: int) -> int | None:
        groups = self.layout.groups if self.layout else ()
        if any(g.hop == 0 for g in groups):
            return None
        ends = [value[1 + g].positions[-1] + group.hop + group.window for g, group in enumerate(groups)
                if value[1 + g].positions]
        return _expiry(max(ends), now_us) if ends else _expiry(now_us, now_us)

    def _snapshot_expiry(self, row: list[Any], now_us: int) -> int | None:
        return None if self.ttl is None else _expiry(row[0] + self.ttl, now_us)

    def _order(self, row: Sequence[Any]) -> tuple[Any, ...]:
        """Latest (ts, created) first; ties go to the greatest values, nulls last, as offline."""
        return (row[0], row[1], *((row[2 + i] is not None, row[2 + i]) for i in self.ties))


def _snapshot_row(event: Event) -> list[Any]:
    return [event[0], event[1], *event[2]]


def _single(group: Group, columns: tuple[str, ...], event: Event) -> list[Any]:
    """The group's partials over one event: [maxts, *partials], as materialization computes them (compute.py)."""
    ts, created, values = event
    row: list[Any] = []
    for kind, at, stored in _single_plan(group, columns):
        v = values[at] if at >= 0 else None
        if kind == "maxts":
            row.append(ts)
        elif kind == "n":
            row.append(1 if at < 0 or v is not None else 0)
        elif v is None:  # every other partial of a null value is null (SQL aggregates skip nulls)
            row.append(None)
        elif kind == "sum":
            row.append(int(v) if stored == INT else float(v))
        elif kind == "mean":
            row.append(float(v))
        elif kind == "m2":
            row.append(0.0)
        elif kind == "lastt":
            row.append(ts)
        elif kind == "lastc":
            row.append(created)
        elif kind == "set":
            row.append([v])
        else:  # min, max, last: as their kind stores them (decimals as floats, narrower ints as ints)
            row.append(int(v) if stored == INT else float(v) if stored == FLOAT else v)
    return row


@functools.lru_cache(maxsize=1024)
def _single_plan(group: Group, columns: tuple[str, ...]) -> tuple[tuple[str, int, str], ...]:
    """Per partial: its kind, the index of its column in an event's values (-1: none), how it is stored."""
    plan = []
    for name, stored in zip(group.partials, group.kinds, strict=True):
        kind, _, column = name.partition("__")
        plan.append((kind, columns.index(column) if column else -1, stored))
    return tuple(plan)


def _merge(group: Group, a: Sequence[Any], b: Sequence[Any]) -> list[Any]:
    """Partials of two disjoint sets of events combined (rows without the tile position)."""
    out = list(a)
    for i, kind, j, k in _merge_plan(group):
        x, y = a[i], b[i]
        if kind in ("maxts", "min", "max"):
            out[i] = y if x is None else x if y is None else (min(x, y) if kind == "min" else max(x, y))
        elif kind in ("n", "sum"):
            out[i] = y if x is None else x if y is None else x + y
        elif kind == "set":
            out[i] = y if not x else x if not y else list(dict.fromkeys([*x, *y]))
        elif kind == "mean":  # j, k: the column's count and M2
            out[i], out[k] = _chan(a[j], x, a[k], b[j], y, b[k])
        elif kind == "last" and b[j] is not None and (a[j] is None or (b[j], b[k], y) > (a[j], a[k], x)):
            out[i], out[j], out[k] = y, b[j], b[k]  # j, k: its time and created time
    return out


@functools.lru_cache(maxsize=1024)
def _merge_plan(group: Group) -> tuple[tuple[int, str, int, int], ...]:
    """Per partial that merges: its index, kind, and the partials it merges with (a mean's count and M2, a
    last value's time and created time); M2s and last times change with their mean or value."""
    names = group.partials
    plan = []
    for i, name in enumerate(names):
        kind, _, column = name.partition("__")
        if kind == "mean":
            plan.append((i, kind, names.index(f"n__{column}"), names.index(f"m2__{column}")))
        elif kind == "last":
            plan.append((i, kind, names.index(f"lastt__{column}"), names.index(f"lastc__{column}")))
        elif kind not in ("m2", "lastt", "lastc"):
            plan.append((i, kind, -1, -1))
    return tuple(plan)


def _chan(na: int, ma: float | None, m2a: float | None, nb: int, mb: float | None,
          m2b: float | None) -> tuple[float | None, float | None]:
    """Mean and M2 of two parts (Chan et al.), each given by count, mean and M2."""
    if not nb or mb is None or m2b is None:
        return ma, m2a
    if not na or ma is None or m2a is None:
        return mb, m2b
    n = na + nb
    delta = mb - ma
    return ma + delta * nb / n, m2a + m2b + delta * delta * na * nb / n


def write_pushes(store: OnlineStore, targets: Sequence[PushTarget], rows: PushRows, pushed_at: int,
                 now_us: int) -> int:
    """Merge pushed rows into every target view's values in one atomic update; returns entities updated."""
    work: dict[bytes, tuple[PushTarget, list[Event]]] = {}
    for target in targets:
        for key, event in target.events(rows, pushed_at):
            work.setdefault(key, (target, []))[1].append(event)
    keys = list(work)
    markers = {target.marker for target, _ in work.values()}
    done: dict[bytes, tuple[bytes | None, Item]] = {}  # per key: the stored value merged last, and the result

    def compute(current: Sequence[bytes | None]) -> list[Item]:
        items: list[Item] = []
        for key, blob in zip(keys, current, strict=True):
            merged = done.get(key)
            if merged is None or merged[0] != blob:  # a retry merges again only the keys another writer changed
                target, events = work[key]
                value, expire = target.apply(blob, events, now_us)
                merged = done[key] = (blob, (key, value, expire))
            items.append(merged[1])
        # in the same transaction: a materialization writing meanwhile sees its marker change, and retries
        return items + [(marker, os.urandom(8), None) for marker in markers]

    store.update(keys, compute)
    return len(keys)


class _Contended(Exception):
    """A push landed while a batch was being merged: write it again watching its own keys."""


class MergingWriter:
    """The online store as materialization sees it for a push source's view: every write keeps what
    was pushed at or after ``end``, atomically with the concurrent pushes of the same entities."""

    name: ClassVar[str] = "merging"
    one_round_trip_reads: ClassVar[bool] = True
    exact_expiry: ClassVar[bool] = False  # that of the wrapped store, which a class attribute cannot say

    def __init__(self, store: OnlineStore, target: PushTarget, end: int, now_us: int, rebuild: bool = False,
                 armed: bytes | None = None) -> None:
        self.store, self.target, self.end, self.now_us = store, target, end, now_us
        # While the marker holds this value, no stored value of the view holds anything to keep, so a batch needs
        # no read of its keys: from a rebuild's start (the marker absent, or ``armed`` before the keys were
        # deleted; every push rewrites it) to the first batch that finds it otherwise. Empty: read every batch.
        self._clean: list[bytes | None] = [armed] if rebuild else []

    def read(self, keys: Sequence[bytes]) -> list[bytes | None]:
        return self.store.read(keys)

    def read_views(self, views: Sequence[tuple[bytes, Sequence[bytes]]]) -> list[bytes | None]:
        return self.store.read_views(views)

    async def read_async(self, keys: Sequence[bytes]) -> list[bytes | None]:
        return await self.store.read_async(keys)

    async def read_views_async(self, views: Sequence[tuple[bytes, Sequence[bytes]]]) -> list[bytes | None]:
        return await self.store.read_views_async(views)

    def update(self, keys: Sequence[bytes], compute: Compute) -> None:
        self.store.update(keys, compute)

    def ping(self) -> None:
        self.store.ping()

    def close(self) -> None:
        """The wrapped store belongs to the caller."""

    def write(self, writes: Writes) -> None:
        """The batch in one transaction that watches the view's marker alone; if a push (or another
        materialization) rewrote the marker meanwhile, again in small transactions watching their keys."""
        done: dict[bytes, tuple[bytes | None, Item]] = {}
        calls, unread = 0, False
        token = os.urandom(8)  # concurrent materializations conflict
        marker = (self.target.marker, token, None)
        clean = self._clean
        self._clean = []  # unless this batch is written without a push landing meanwhile, as below

        def compute(watched: Sequence[bytes | None]) -> Writes:
            nonlocal calls, unread
            calls += 1
            if calls > 1:  # the first attempt lost to a concurrent writer: do not retry the whole batch
                raise _Contended
            if clean and watched[0] == clean[0]:  # no push since the view's stored values held nothing to keep
                unread = True
                return writes.with_items([marker]) if isinstance(writes, Batch) else [*writes, marker]
            current = self.store.read(keys_of(writes))  # read after the marker is watched
            if isinstance(writes, Batch) and all(old is None for old in current):
                return writes.with_items([marker])  # nothing stored to keep: the batch as it is
            return [*self._merged(items_of(writes), current, done), marker]

        try:
            self.store.update([self.target.marker], compute)
        except _Contended:
            items = items_of(writes)
            for start in range(0, len(items), WATCHED_BATCH):
                self._write_watched(items[start:start + WATCHED_BATCH], done)
            return
        if unread:  # written in one go with no push meanwhile (the marker was watched): still nothing to keep
            self._clean = [token]

    def _write_watched(self, items: Sequence[Item], done: dict[bytes, tuple[bytes | None, Item]]) -> None:
        def compute(current: Sequence[bytes | None]) -> list[Item]:
            return self._merged(items, current, done)

        self.store.update([key for key, _, _ in items], compute)

    def _merged(self, items: Sequence[Item], current: Sequence[bytes | None],
                done: dict[bytes, tuple[bytes | None, Item]]) -> list[Item]:
        """Each fresh value with what only its current stored value holds. ``done`` keeps, per key, the stored
        value merged last and the result: a retry merges again only the keys whose stored value changed."""
        out: list[Item] = []
        for (key, value, expire), old in zip(items, current, strict=True):
            if key in done and done[key][0] == old:
                out.append(done[key][1])
                continue
            merged = None if old is None else self.target.remerge(value, old, self.end, self.now_us)
            if merged is None:
                item = (key, value, expire)
            else:
                later = None if expire is None or merged[1] is None else max(expire, merged[1])
                item = (key, merged[0], later)
            done[key] = (old, item)
            out.append(item)
        return out

    def delete_prefix(self, prefix: bytes) -> int:
        return self.store.delete_prefix(prefix)

    def delete_prefixes(self, prefixes: Sequence[bytes], keep: Collection[bytes] = ()) -> int:
        return self.store.delete_prefixes(prefixes, keep)
