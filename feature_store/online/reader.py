"""get_online_features: one store read for all requested views and entities, then compiled finishing.

A request's features are compiled once into a plan (views, key columns, per-feature finishing
functions, with their windows and hops) and cached; a read is then: build keys, one store read,
msgpack-decode each value, find the first tile in the window once per entity and window (a bisect
on the group's tile positions), and run the finishers over the column slices from there.
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
from feature_store.online.combine import Finisher, empty_value, finisher
from feature_store.online.encode import pack_key
from feature_store.online.layout import Layout
from feature_store.online.stores import OnlineStore

_unpack = msgpack.unpackb
PRESENT, NOT_FOUND, NULL_VALUE, OUTSIDE_MAX_AGE = "PRESENT", "NOT_FOUND", "NULL_VALUE", "OUTSIDE_MAX_AGE"


@dataclass(frozen=True)
class FeaturePlan:
    output: str
    group: int  # index into the view's layout groups; -1 for snapshot columns
    hop: int
    window: int | None
    finish: Finisher  # (stored value of the group, or the snapshot row; first tile in the window) -> value
    empty: Any


@dataclass(frozen=True)
class ViewPlan:
    name: str
    prefix: bytes
    keys: tuple[str, ...]
    key_kinds: tuple[str, ...]  # "integer" or "string": how entity values are coerced
    is_aggregation: bool
    ttl: int | None
    features: tuple[FeaturePlan, ...]


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
            features.append(FeaturePlan(request.output, -1, 0, None, _column(index), None))
            continue
        group = layout.group_of(request)
        features.append(FeaturePlan(request.output, group, request.hop, request.window,
                                    finisher(request, layout.groups[group]), empty_value(request)))
    kinds = tuple(key_family(key_types[k]) for k in view.keys)
    return ViewPlan(view.name, prefix, view.keys, kinds, view.is_aggregation, view.ttl, tuple(features))


def _column(index: int) -> Finisher:
    return lambda row, _i: row[2 + index]  # snapshot value: [ts, created, *columns]


def entity_columns(entity_rows: Any) -> dict[str, list[Any]]:
    """[{"customer_id": 1}, ...] or {"customer_id": [1, 2]} as columns of equal length."""
    if isinstance(entity_rows, Mapping):
        many = list | tuple | np.ndarray | pd.Series
        columns = {k: list(v) if isinstance(v, many) else [v] for k, v in entity_rows.items()}
    elif isinstance(entity_rows, Sequence) and all(isinstance(r, Mapping) for r in entity_rows):
        names = list(dict.fromkeys(k for r in entity_rows for k in r))
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
    if integral or (isinstance(value, str) and _DIGITS.fullmatch(value)):
        number = int(value)
    else:
        raise EntityDataFrameError(
            f"join key {key!r} is an integer key but got {value!r}, which is not an integer.", key=key,
        )
    if not _INT_MIN <= number <= _INT_MAX:
        raise EntityDataFrameError(
            f"join key {key!r} is an integer key but {value!r} is outside the 64-bit range.", key=key,
        )
    return number


def read(store: OnlineStore, plans: Sequence[ViewPlan], columns: dict[str, list[Any]],
         now: datetime | None) -> OnlineResponse:
    now_us = int(((now or datetime.now(UTC)).timestamp()) * 1_000_000)
    n = len(next(iter(columns.values()))) if columns else 0
    keys: list[bytes] = []
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
            encoded[shape] = [pack_key(key) for key in zip(*coerced, strict=True)]
        prefix = plan.prefix
        keys.extend([prefix + key for key in encoded[shape]])
    raw = store.read(keys)  # one round trip for every view and entity
    response = OnlineResponse(entity_columns={k: list(v) for k, v in columns.items()})
    for v, plan in enumerate(plans):
        decoded = [None if b is None else _unpack(b, use_list=False) for b in raw[v * n:(v + 1) * n]]
        if plan.is_aggregation:
            _fill_aggregation(response, plan, decoded, now_us)
        else:
            _fill_snapshot(response, plan, decoded, now_us)
    return response


def _fill_snapshot(response: OnlineResponse, plan: ViewPlan, decoded: list[Any], now_us: int) -> None:
    alive = [value is not None and (plan.ttl is None or value[0] >= now_us - plan.ttl) for value in decoded]
    stamps = [None if value is None else value[0] for value in decoded]
    for feature in plan.features:
        finish = feature.finish
        values = [finish(value, 0) if ok else None for value, ok in zip(decoded, alive, strict=True)]
        response.values[feature.output] = values
        response.statuses[feature.output] = [
            NOT_FOUND if value is None else (OUTSIDE_MAX_AGE if not ok else (PRESENT if x is not None else NULL_VALUE))
            for value, ok, x in zip(decoded, alive, values, strict=True)
        ]
        response.stamps_us[feature.output] = stamps


def _fill_aggregation(response: OnlineResponse, plan: ViewPlan, decoded: list[Any], now_us: int) -> None:
    # Features that share a group and a window read the same tiles: find them once per entity.
    selections: dict[tuple[int, int | None], tuple[list[Any], list[int | None], list[int | None]]] = {}
    for feature in plan.features:
        key = (feature.group, feature.window)
        if key not in selections:
            selections[key] = _select(decoded, feature, now_us)
        groups, firsts, stamps = selections[key]
        finish, empty = feature.finish, feature.empty
        values = [empty if i is None else finish(g, i) for g, i in zip(groups, firsts, strict=True)]
        response.values[feature.output] = values
        response.statuses[feature.output] = [
            NOT_FOUND if blob is None else (PRESENT if x is not None else NULL_VALUE)
            for blob, x in zip(decoded, values, strict=True)
        ]
        response.stamps_us[feature.output] = stamps


def _select(decoded: list[Any], feature: FeaturePlan, now_us: int) -> tuple[list[Any], list[int | None],
                                                                           list[int | None]]:
    """Per entity: the group's stored value, the index of its first tile in the window at now (None: no tile
    in the window), and the latest event time among the tiles from there."""
    index = 1 + feature.group
    groups = [None if blob is None else blob[index] for blob in decoded]
    if feature.window is None:  # the cumulative row: [maxts, ...]
        return groups, [None if row is None else 0 for row in groups], [None if row is None else row[0]
                                                                         for row in groups]
    start = now_us - feature.window
    start -= start % feature.hop
    firsts: list[int | None] = []
    stamps: list[int | None] = []
    for columns in groups:  # [positions, maxts, partials...]: positions ascending
        if columns is not None and (i := bisect_left(columns[0], start)) < len(columns[0]):
            firsts.append(i)
            stamps.append(columns[1][-1])  # a tile's events lie in [position, position + hop): the last is the latest
        else:
            firsts.append(None)
            stamps.append(None)
    return groups, firsts, stamps


def _dt(micros: int | None) -> datetime | None:
    return None if micros is None else datetime.fromtimestamp(micros / 1_000_000, UTC)

