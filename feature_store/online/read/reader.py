"""get_online_features: one store read for all requested views and entities, then compiled finishing.

A request's features are compiled once into read plans (plans.py) and cached; a read is then: build keys, one
store read of every view's values (and the pushed deltas of views over push sources), fold in any delta a value
does not hold yet (push/merge.py), msgpack-decode each value, then per group: for many entities, put their tiles
in one matrix (tiles/batch.py), select each window's tiles once and run each function's finisher over every
entity at once; for a few, read each entity's tiles as Python lists (tiles/format.py: EntityTiles), bisect each
window's first tile once and run the finishers entity by entity.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack

from feature_store.errors import EntityDataFrameError
from feature_store.online.read.entities import coerced
from feature_store.online.read.plans import FeaturePlan, ViewPlan
from feature_store.online.stores.base import OnlineStore
from feature_store.online.tiles.batch import TileBatch, select
from feature_store.online.tiles.columnar import pack_key_columns
from feature_store.online.tiles.format import EntityTiles, Shape

_unpack = msgpack.unpackb
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
PRESENT, NOT_FOUND, NULL_VALUE, OUTSIDE_MAX_AGE = "PRESENT", "NOT_FOUND", "NULL_VALUE", "OUTSIDE_MAX_AGE"
NOT_MATERIALIZED = "NOT_MATERIALIZED"  # the feature has no materialized values in this store yet
SMALL_READ = 12  # entities up to which a group is finished in Python, not numpy


@dataclass
class OnlineResponse:
    """Values, statuses and event timestamps per requested feature, in entity-row order."""

    entity_columns: dict[str, list[Any]]
    values: dict[str, list[Any]] = field(default_factory=dict)
    statuses: dict[str, list[str]] = field(default_factory=dict)
    stamps_us: dict[str, list[int | None]] = field(default_factory=dict)  # latest event time, epoch us
    # the instant the values are for (``now``), epoch us: the served-value log's request time
    request_us: int = field(default=0, compare=False)

    @property
    def event_timestamps(self) -> dict[str, list[datetime | None]]:
        """Per feature, the time of the latest event (aggregations) or of the row (snapshots) it used."""
        return {name: [_dt(us) for us in stamps] for name, stamps in self.stamps_us.items()}

    def to_dict(self) -> dict[str, list[Any]]:
        return {**self.entity_columns, **self.values}

    def to_df(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.to_dict())

    @property
    def not_materialized(self) -> list[str]:
        """The features no materialization has written to this store yet (all their values are null)."""
        return [name for name, statuses in self.statuses.items() if statuses and statuses[0] == NOT_MATERIALIZED]


def read(store: OnlineStore, plans: Sequence[ViewPlan], columns: dict[str, list[Any]],
         now: datetime | None) -> OnlineResponse:
    now_us = _epoch_us(now)
    keys = _keys(plans, columns)
    return _respond(plans, columns, store.read_views(keys) if keys else [], now_us)  # one round trip for all


async def read_async(store: OnlineStore, plans: Sequence[ViewPlan], columns: dict[str, list[Any]],
                     now: datetime | None) -> OnlineResponse:
    """``read`` on an event loop: other requests run while the store answers."""
    now_us = _epoch_us(now)
    keys = _keys(plans, columns)
    return _respond(plans, columns, await store.read_views_async(keys) if keys else [], now_us)


def _epoch_us(now: datetime | None) -> int:
    if now is None:
        return int(time.time() * 1_000_000)
    if now.tzinfo is None:  # a naive time is UTC, as everywhere in the store (not the host's local time)
        now = now.replace(tzinfo=UTC)
    return (now - _EPOCH) // _MICROSECOND  # exact: a float of seconds loses microseconds


def _keys(plans: Sequence[ViewPlan], columns: dict[str, list[Any]]) -> list[tuple[bytes, list[bytes]]]:
    """Per stored field read, its key prefix and the packed key of every entity row (a store key is the two
    joined): a view's values, then its pushed deltas (views over push sources)."""
    keys: list[tuple[bytes, list[bytes]]] = []
    encoded: dict[tuple[tuple[str, ...], tuple[str, ...]], list[bytes]] = {}  # views usually share their keys
    for plan in plans:
        missing = [k for k in plan.keys if k not in columns]
        if missing:
            raise EntityDataFrameError(
                f"entity rows lack join key(s) {missing} of feature view {plan.name!r}; given: {sorted(columns)}.",
                missing=missing, view=plan.name,
            )
        shape = (plan.keys, plan.key_kinds)
        if shape not in encoded:
            values = [coerced(columns[k], kind, k) for k, kind in zip(plan.keys, plan.key_kinds, strict=True)]
            encoded[shape] = pack_key_columns(values)
        if not plan.live:
            continue
        keys.append((plan.prefix, encoded[shape]))  # views of one shape share the list: Redis reads them at once
        if plan.delta is not None:
            keys.append((plan.delta, encoded[shape]))
    return keys


def _respond(plans: Sequence[ViewPlan], columns: dict[str, list[Any]], raw: list[bytes | None],
             now_us: int) -> OnlineResponse:
    n = len(next(iter(columns.values()))) if columns else 0
    response = OnlineResponse(entity_columns={k: list(v) for k, v in columns.items()}, request_us=now_us)
    at = 0
    for plan in plans:
        if not plan.live:
            _fill_not_materialized(response, plan, n)
            continue
        values = raw[at:at + n]
        at += n
        if plan.target is not None:
            deltas = raw[at:at + n]
            at += n
            if any(deltas):  # pushed since materialized (a delta is never empty): a value may lack what they hold
                values = [v if d is None else plan.target.fold(v, d, now_us) for v, d in zip(values, deltas,
                                                                                        strict=True)]
        decoded = [None if b is None else _unpack(b, use_list=False) for b in values]
        if plan.is_aggregation:
            _fill_aggregation(response, plan, decoded, now_us)
        else:
            _fill_snapshot(response, plan, decoded, now_us)
        _fill_not_materialized(response, plan, n)
    return response


def _fill_not_materialized(response: OnlineResponse, plan: ViewPlan, n: int) -> None:
    for feature in plan.features:
        if not feature.materialized:
            response.values[feature.output] = [None] * n
            response.statuses[feature.output] = [NOT_MATERIALIZED] * n
            response.stamps_us[feature.output] = [None] * n


def _fill_snapshot(response: OnlineResponse, plan: ViewPlan, decoded: list[Any], now_us: int) -> None:
    """A stored row is [end, ts, created, *columns]."""
    features = [f for f in plan.features if f.materialized]
    times: list[int] = [value[1] for value in decoded] if None not in decoded else []
    if times and (plan.ttl is None or min(times) >= now_us - plan.ttl):
        stamps: list[int | None] = list(times)
        for feature in features:  # every row found and fresh: the common case, with fewer passes
            at = 3 + feature.column
            response.values[feature.output] = values = [value[at] for value in decoded]
            response.statuses[feature.output] = _statuses(values, [])
            response.stamps_us[feature.output] = stamps
        return
    stamps = [None if value is None else value[1] for value in decoded]
    alive = [value is not None and (plan.ttl is None or value[1] >= now_us - plan.ttl) for value in decoded]
    for feature in features:
        at = 3 + feature.column
        values = [value[at] if ok else None for value, ok in zip(decoded, alive, strict=True)]
        response.values[feature.output] = values
        response.statuses[feature.output] = [
            NOT_FOUND if value is None else (OUTSIDE_MAX_AGE if not ok else (PRESENT if x is not None else NULL_VALUE))
            for value, ok, x in zip(decoded, alive, values, strict=True)
        ]
        response.stamps_us[feature.output] = stamps


def _fill_aggregation(response: OnlineResponse, plan: ViewPlan, decoded: list[Any], now_us: int) -> None:
    """Per group, the tiles of every entity read once; per window, its tiles selected once; per feature,
    its values for every entity, put in entity-row order. A stored value is [end, folded, *groups]."""
    n = len(decoded)
    missing = [e for e, value in enumerate(decoded) if value is None] if None in decoded else []
    groups: dict[int, _GroupRead] = {}
    for feature in plan.features:
        if not feature.materialized:
            continue
        g = feature.group
        if g not in groups:
            stored = [value[2 + g] for value in decoded] if not missing else \
                [None if value is None else value[2 + g] for value in decoded]
            if None in stored:  # entities with nothing stored, or nothing in this group
                rows = [e for e, value in enumerate(stored) if value is not None]
                stored = [stored[e] for e in rows]
            else:
                rows = list(range(n))
            groups[g] = _GroupRead(plan.shapes[g], rows, stored, now_us, n)
        values, stamps = groups[g].finish(feature)
        response.values[feature.output] = values
        response.statuses[feature.output] = _statuses(values, missing)
        response.stamps_us[feature.output] = stamps


class _GroupRead:
    """One group's tiles of the entities of a read: as a numpy batch when they are many, else as Python
    columns per entity; and, per window, its selection and the entities' latest event times in it."""

    def __init__(self, shape: Shape, rows: list[int], stored: list[Any], now_us: int, n: int) -> None:
        self.rows, self.now_us, self.n = rows, now_us, n
        self.many = len(rows) > SMALL_READ
        self.batch = TileBatch(shape, rows, stored) if self.many else None
        self.tiles = [] if self.many else [EntityTiles(shape, value) for value in stored]
        self.windows: dict[int | None, tuple[Any, list[int | None]]] = {}

    def finish(self, feature: FeaturePlan) -> tuple[list[Any], list[int | None]]:
        """The feature's values and latest event times, per entity row."""
        if not self.rows:
            return [feature.empty] * self.n, [None] * self.n
        if feature.window not in self.windows:
            self.windows[feature.window] = self._select(feature)
        selection, stamps = self.windows[feature.window]
        if self.batch is not None and feature.finish is not None:
            return _scatter(feature.finish(self.batch, selection), self.rows, self.n, feature.empty), stamps
        finish_one, empty = feature.finish_one, feature.empty
        if finish_one is None:
            raise TypeError(f"{feature.output} has no finisher")  # snapshot columns never come here
        values = [empty if i is None else finish_one(tiles, i) for tiles, i in zip(self.tiles, selection, strict=True)]
        return _scatter(values, self.rows, self.n, empty), stamps

    def _select(self, feature: FeaturePlan) -> tuple[Any, list[int | None]]:
        """The window's tiles at now, and per entity row the latest event time among them (None: no tile in
        the window). A tile's events lie in [position, position + hop): the latest is in the entity's last
        tile. Many entities: a combine.Selection; few: each one's first tile in the window (None: none), by
        bisecting its positions."""
        start = None
        if feature.window is not None:
            start = self.now_us - feature.window
            start -= start % feature.hop
        if self.batch is not None:
            batch = self.batch
            selection = select(batch, start)
            stamps: list[int | None] = batch.latest  # shared by the windows that every entity reaches
            if start is not None and not selection.inside.all():
                stamps = [t if inside else None for t, inside in zip(stamps, selection.inside.tolist(), strict=True)]
            return selection, _scatter(stamps, self.rows, self.n, None)
        firsts: list[int | None] = []
        stamps = []
        for tiles in self.tiles:
            i = 0 if start is None else bisect_left(tiles.positions, start)
            inside = i < tiles.count
            firsts.append(i if inside else None)
            stamps.append(tiles.latest if inside else None)
        return firsts, _scatter(stamps, self.rows, self.n, None)


def _scatter(values: list[Any], rows: list[int], n: int, empty: Any) -> list[Any]:
    """A batch's values in entity-row order, ``empty`` for the rows not in the batch."""
    if len(rows) == n:  # every row is in the batch, in order
        return values
    out = [empty] * n
    for e, value in zip(rows, values, strict=True):
        out[e] = value
    return out


def _statuses(values: list[Any], missing: list[int]) -> list[str]:
    # no null: the common case, at C speed
    statuses = [NULL_VALUE if x is None else PRESENT for x in values] if None in values else [PRESENT] * len(values)
    for e in missing:  # rows of entities with no stored value
        statuses[e] = NOT_FOUND
    return statuses


def _dt(micros: int | None) -> datetime | None:
    return None if micros is None else datetime.fromtimestamp(micros / 1_000_000, UTC)

