"""get_online_features: one store read for all requested views and entities, then compiled finishing.

A request's features are compiled once into a plan (views, key columns, per-feature finishing
functions, with their windows and hops) and cached; a read is then: build keys, one store read,
msgpack-decode each value, then per group: for many entities, put their tiles in one matrix
(tiles.TileBatch), select each window's tiles once and run each finisher over every entity at once
(combine.py); for a few, read each entity's tiles as Python lists (tiles.EntityTiles), bisect each
window's first tile once and run the finishers entity by entity (scalar.py).
"""

from __future__ import annotations

import numbers
import re
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgpack
import numpy as np
import pandas as pd

from feature_store.errors import EntityDataFrameError
from feature_store.offline.entity_input import key_family
from feature_store.offline.sql import ViewQuery
from feature_store.online import scalar
from feature_store.online.combine import Finisher, empty_value, finisher, select
from feature_store.online.encode import pack_key_columns
from feature_store.online.layout import Layout
from feature_store.online.stores import OnlineStore
from feature_store.online.tiles import EntityTiles, Shape, TileBatch

_unpack = msgpack.unpackb
PRESENT, NOT_FOUND, NULL_VALUE, OUTSIDE_MAX_AGE = "PRESENT", "NOT_FOUND", "NULL_VALUE", "OUTSIDE_MAX_AGE"


@dataclass(frozen=True)
class FeaturePlan:
    output: str
    group: int  # index into the view's layout groups; -1 for snapshot columns
    hop: int
    window: int | None
    finish: Finisher | None  # aggregations, for many entities at once (combine.py)
    finish_one: scalar.Finisher | None  # aggregations, entity by entity (scalar.py)
    empty: Any
    column: int = -1  # snapshots: the index of the feature's column in the stored row, after ts and created


@dataclass(frozen=True)
class ViewPlan:
    name: str
    prefix: bytes
    keys: tuple[str, ...]
    key_kinds: tuple[str, ...]  # "integer" or "string": how entity values are coerced
    is_aggregation: bool
    ttl: int | None
    features: tuple[FeaturePlan, ...]
    shapes: tuple[Shape, ...]  # how the stored layout's groups are stored (aggregation views)


@dataclass
class OnlineResponse:
    """Values, statuses and event timestamps per requested feature, in entity-row order."""

    entity_columns: dict[str, list[Any]]
    values: dict[str, list[Any]] = field(default_factory=dict)
    statuses: dict[str, list[str]] = field(default_factory=dict)
    stamps_us: dict[str, list[int | None]] = field(default_factory=dict)  # latest event time, epoch us

    @property
    def event_timestamps(self) -> dict[str, list[datetime | None]]:
        """Per feature, the time of the latest event (aggregations) or of the row (snapshots) it used."""
        return {name: [_dt(us) for us in stamps] for name, stamps in self.stamps_us.items()}

    def to_dict(self) -> dict[str, list[Any]]:
        return {**self.entity_columns, **self.values}

    def to_df(self) -> pd.DataFrame:
        return pd.DataFrame(self.to_dict())


def compile_view(full: ViewQuery, view: ViewQuery, prefix: bytes, key_types: Mapping[str, str]) -> ViewPlan:
    """A read plan for the requested features (``view``) of a view stored with the layout of all of its
    features (``full``): the stored layout is the definition's, whatever subset a request asks for."""
    layout = Layout.of(full) if view.is_aggregation else None
    features = []
    for request in view.features:
        if layout is None:
            index = full.columns.index(request.feature.name)
            features.append(FeaturePlan(request.output, -1, 0, None, None, None, None, index))
            continue
        group = layout.group_of(request)
        features.append(FeaturePlan(request.output, group, request.hop, request.window,
                                    finisher(request, layout.groups[group]),
                                    scalar.finisher(request, layout.groups[group]), empty_value(request)))
    kinds = tuple(key_family(key_types[k]) for k in view.keys)
    shapes = tuple(Shape.of(group) for group in layout.groups) if layout else ()
    return ViewPlan(view.name, prefix, view.keys, kinds, view.is_aggregation, view.ttl, tuple(features), shapes)


def entity_columns(entity_rows: Any) -> dict[str, list[Any]]:
    """[{"customer_id": 1}, ...] or {"customer_id": [1, 2]} as columns of equal length."""
    if isinstance(entity_rows, Mapping):
        many = list | tuple | np.ndarray | pd.Series
        columns = {k: list(v) if isinstance(v, many) else [v] for k, v in entity_rows.items()}
    elif isinstance(entity_rows, Sequence) and all(type(r) is dict or isinstance(r, Mapping) for r in entity_rows):
        names: dict[str, None] = {}
        for row in entity_rows:
            names.update(dict.fromkeys(row))
        columns = {n: [r.get(n) for r in entity_rows] for n in names}
    else:
        raise EntityDataFrameError("entity_rows must be a list of {join_key: value} dicts or {join_key: [values]}.")
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        sizes = {k: len(v) for k, v in columns.items()}
        raise EntityDataFrameError(f"entity columns have different lengths: {sizes}.")
    return columns


_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what a stored key can hold (msgpack's integers)
_DIGITS = re.compile(r"[+-]?[0-9]+")


def _coerced(values: list[Any], kind: str, key: str) -> list[Any]:
    if kind == "integer":  # ints in range pass as they are (bool is not int); the rest is checked
        return [v if type(v) is int and _INT_MIN <= v <= _INT_MAX else _coerce(v, kind, key) for v in values]
    return [v if type(v) is str else _coerce(v, kind, key) for v in values]


def _coerce(value: Any, kind: str, key: str) -> Any:
    """One rule for every store: integer keys accept ints and ASCII digit strings in the 64-bit range,
    string keys accept anything."""
    if value is None:
        raise EntityDataFrameError(f"join key {key!r} is null in an entity row; every row needs a value.")
    if kind != "integer":
        return str(value)
    integral = isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)  # numpy ints too
    if integral:
        number = int(value)
    elif isinstance(value, str) and _DIGITS.fullmatch(value):
        # int() refuses strings of over 4,300 digits, leading zeros included: convert the significant ones,
        # and only when they may fit (more than 20 is beyond 64 bits).
        significant = value.lstrip("+-").lstrip("0") or "0"
        number = _INT_MAX + 1 if len(significant) > 20 else int(significant)
        number = -number if value.startswith("-") else number
    else:
        raise EntityDataFrameError(
            f"join key {key!r} is an integer key but got {_shown(value)}, which is not an integer.", key=key,
        )
    if not _INT_MIN <= number <= _INT_MAX:
        raise EntityDataFrameError(
            f"join key {key!r} is an integer key but {_shown(value)} is outside the 64-bit range.", key=key,
        )
    return number


def _shown(value: Any) -> str:
    """A value for a message: the repr, cut short when long (a request may send megabytes in one key)."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text):,} characters)"


def read(store: OnlineStore, plans: Sequence[ViewPlan], columns: dict[str, list[Any]],
         now: datetime | None) -> OnlineResponse:
    now_us = _epoch_us(now)
    return _respond(plans, columns, store.read_views(_keys(plans, columns)), now_us)  # one round trip for all


async def read_async(store: OnlineStore, plans: Sequence[ViewPlan], columns: dict[str, list[Any]],
                     now: datetime | None) -> OnlineResponse:
    """``read`` on an event loop: other requests run while the store answers."""
    now_us = _epoch_us(now)
    return _respond(plans, columns, await store.read_views_async(_keys(plans, columns)), now_us)


def _epoch_us(now: datetime | None) -> int:
    return int(((now or datetime.now(UTC)).timestamp()) * 1_000_000)


def _keys(plans: Sequence[ViewPlan], columns: dict[str, list[Any]]) -> list[tuple[bytes, list[bytes]]]:
    """Per view, its key prefix and the packed key of every entity row (a store key is the two joined)."""
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
            coerced = [_coerced(columns[k], kind, k) for k, kind in zip(plan.keys, plan.key_kinds, strict=True)]
            encoded[shape] = pack_key_columns(coerced)
        keys.append((plan.prefix, encoded[shape]))  # views of one shape share the list: Redis reads them at once
    return keys


def _respond(plans: Sequence[ViewPlan], columns: dict[str, list[Any]], raw: list[bytes | None],
             now_us: int) -> OnlineResponse:
    n = len(next(iter(columns.values()))) if columns else 0
    response = OnlineResponse(entity_columns={k: list(v) for k, v in columns.items()})
    for v, plan in enumerate(plans):
        decoded = [None if b is None else _unpack(b, use_list=False) for b in raw[v * n:(v + 1) * n]]
        if plan.is_aggregation:
            _fill_aggregation(response, plan, decoded, now_us)
        else:
            _fill_snapshot(response, plan, decoded, now_us)
    return response


def _fill_snapshot(response: OnlineResponse, plan: ViewPlan, decoded: list[Any], now_us: int) -> None:
    times: list[int] = [value[0] for value in decoded] if None not in decoded else []
    if times and (plan.ttl is None or min(times) >= now_us - plan.ttl):
        stamps: list[int | None] = list(times)
        for feature in plan.features:  # every row found and fresh: the common case, with fewer passes
            at = 2 + feature.column
            response.values[feature.output] = values = [value[at] for value in decoded]
            response.statuses[feature.output] = _statuses(values, [])
            response.stamps_us[feature.output] = stamps
        return
    stamps = [None if value is None else value[0] for value in decoded]
    alive = [value is not None and (plan.ttl is None or value[0] >= now_us - plan.ttl) for value in decoded]
    for feature in plan.features:
        at = 2 + feature.column  # a stored row is [ts, created, *columns]
        values = [value[at] if ok else None for value, ok in zip(decoded, alive, strict=True)]
        response.values[feature.output] = values
        response.statuses[feature.output] = [
            NOT_FOUND if value is None else (OUTSIDE_MAX_AGE if not ok else (PRESENT if x is not None else NULL_VALUE))
            for value, ok, x in zip(decoded, alive, values, strict=True)
        ]
        response.stamps_us[feature.output] = stamps


SMALL_READ = 12  # entities up to which a group is finished in Python (scalar.py), not numpy (combine.py)


def _fill_aggregation(response: OnlineResponse, plan: ViewPlan, decoded: list[Any], now_us: int) -> None:
    """Per group, the tiles of every entity read once; per window, its tiles selected once; per feature,
    its values for every entity, put in entity-row order."""
    n = len(decoded)
    missing = [e for e, value in enumerate(decoded) if value is None] if None in decoded else []
    groups: dict[int, _GroupRead] = {}
    for feature in plan.features:
        g = feature.group
        if g not in groups:
            stored = [value[1 + g] for value in decoded] if not missing else \
                [None if value is None else value[1 + g] for value in decoded]
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

