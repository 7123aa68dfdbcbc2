"""get_online_features: one store read for all requested views and entities, then compiled finishing.

A request's features are compiled once into a plan (views, key columns, per-feature finishing
functions, with their windows and hops) and cached; a read is then: build keys, one store read,
msgpack-decode each value, and run the finishers over the in-window tiles.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgpack
import pandas as pd

from feature_store.errors import EntityDataFrameError
from feature_store.offline.entity_input import key_family
from feature_store.offline.sql import ViewQuery
from feature_store.online.combine import empty_value, finisher
from feature_store.online.layout import Layout
from feature_store.online.materialize import encode_key
from feature_store.online.stores import OnlineStore

_unpack = msgpack.unpackb
PRESENT, NOT_FOUND, NULL_VALUE, OUTSIDE_MAX_AGE = "PRESENT", "NOT_FOUND", "NULL_VALUE", "OUTSIDE_MAX_AGE"


@dataclass(frozen=True)
class FeaturePlan:
    output: str
    group: int  # index into the view's layout groups; -1 for snapshot columns
    hop: int
    window: int | None
    finish: Callable[[Sequence[Sequence[Any]]], Any]
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


def _column(index: int) -> Callable[[Sequence[Sequence[Any]]], Any]:
    return lambda rows: rows[0][2 + index]  # snapshot value: [ts, created, *columns]


def entity_columns(entity_rows: Any) -> dict[str, list[Any]]:
    """[{"customer_id": 1}, ...] or {"customer_id": [1, 2]} as columns of equal length."""
    if isinstance(entity_rows, Mapping):
        columns = {k: list(v) if isinstance(v, list | tuple) else [v] for k, v in entity_rows.items()}
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


def _coerce(value: Any, kind: str, key: str) -> Any:
    """One rule for every store: integer keys accept ints and digit strings, string keys accept anything."""
    if value is None:
        raise EntityDataFrameError(f"join key {key!r} is null in an entity row; every row needs a value.")
    if kind == "integer":
        if isinstance(value, bool):
            raise EntityDataFrameError(f"join key {key!r} is an integer key; got {value!r}.")
        try:
            return int(value)
        except (TypeError, ValueError) as exc:
            raise EntityDataFrameError(
                f"join key {key!r} is an integer key but got {value!r}, which is not an integer.", key=key,
            ) from exc
    return str(value)


def read(store: OnlineStore, plans: Sequence[ViewPlan], columns: dict[str, list[Any]],
         now: datetime | None) -> OnlineResponse:
    now_us = int(((now or datetime.now(UTC)).timestamp()) * 1_000_000)
    n = len(next(iter(columns.values()))) if columns else 0
    keys: list[bytes] = []
    for plan in plans:
        missing = [k for k in plan.keys if k not in columns]
        if missing:
            raise EntityDataFrameError(
                f"entity rows lack join key(s) {missing} of feature view {plan.name!r}; given: {sorted(columns)}.",
                missing=missing, view=plan.name,
            )
        coerced = [[_coerce(v, kind, k) for v in columns[k]] for k, kind in zip(plan.keys, plan.key_kinds, strict=True)]
        keys.extend(encode_key(plan.prefix, key) for key in zip(*coerced, strict=True))
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
        values = [feature.finish([value]) if ok else None for value, ok in zip(decoded, alive, strict=True)]
        response.values[feature.output] = values
        response.statuses[feature.output] = [
            NOT_FOUND if value is None else (OUTSIDE_MAX_AGE if not ok else (PRESENT if x is not None else NULL_VALUE))
            for value, ok, x in zip(decoded, alive, values, strict=True)
        ]
        response.stamps_us[feature.output] = stamps


def _fill_aggregation(response: OnlineResponse, plan: ViewPlan, decoded: list[Any], now_us: int) -> None:
    # Features that share a group and a window read the same tiles: select them once per entity.
    selections: dict[tuple[int, int | None], tuple[list[Any], list[int | None]]] = {}
    for feature in plan.features:
        key = (feature.group, feature.window)
        if key not in selections:
            selections[key] = _select(decoded, feature, now_us)
        rows_per_entity, stamps = selections[key]
        finish, empty = feature.finish, feature.empty
        values = [empty if not rows else finish(rows) for rows in rows_per_entity]
        response.values[feature.output] = values
        response.statuses[feature.output] = [
            NOT_FOUND if blob is None else (PRESENT if x is not None else NULL_VALUE)
            for blob, x in zip(decoded, values, strict=True)
        ]
        response.stamps_us[feature.output] = stamps


def _select(decoded: list[Any], feature: FeaturePlan, now_us: int) -> tuple[list[Any], list[int | None]]:
    """Per entity: the group's rows in the window at now, and the latest event time among them."""
    rows_per_entity: list[Any] = []
    stamps: list[int | None] = []
    index = 1 + feature.group
    if feature.window is None:  # the cumulative row: [maxts, ...]
        for blob in decoded:
            row = None if blob is None else blob[index]
            rows_per_entity.append([row] if row else None)
            stamps.append(row[0] if row else None)
        return rows_per_entity, stamps
    start = now_us - feature.window
    start -= start % feature.hop
    for blob in decoded:
        tiles = None if blob is None else blob[index]
        rows = [row for row in tiles if row[0] >= start] if tiles else None
        rows_per_entity.append(rows)
        stamps.append(max(row[1] for row in rows) if rows else None)  # maxts follows the tile position
    return rows_per_entity, stamps


def _dt(micros: int | None) -> datetime | None:
    return None if micros is None else datetime.fromtimestamp(micros / 1_000_000, UTC)

