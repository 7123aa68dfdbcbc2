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
    event_timestamps: dict[str, list[datetime | None]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, list[Any]]:
        return {**self.entity_columns, **self.values}

    def to_df(self) -> pd.DataFrame:
        return pd.DataFrame(self.to_dict())


def compile_view(view: ViewQuery, prefix: bytes, key_types: Mapping[str, str]) -> ViewPlan:
    layout = Layout.of(view) if view.is_aggregation else None
    features = []
    for request in view.features:
        if layout is None:
            index = view.columns.index(request.feature.name)
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
        blobs = raw[v * n:(v + 1) * n]
        decoded = [None if b is None else msgpack.unpackb(b) for b in blobs]
        for feature in plan.features:
            _fill(response, plan, feature, decoded, now_us)
    return response


def _fill(response: OnlineResponse, plan: ViewPlan, feature: FeaturePlan, decoded: list[Any], now_us: int) -> None:
    values: list[Any] = []
    statuses: list[str] = []
    stamps: list[datetime | None] = []
    for value in decoded:
        if value is None:
            values.append(feature.empty)
            statuses.append(NOT_FOUND)
            stamps.append(None)
            continue
        if not plan.is_aggregation:
            ts = value[0]
            if plan.ttl is not None and ts < now_us - plan.ttl:
                values.append(None)
                statuses.append(OUTSIDE_MAX_AGE)
            else:
                result = feature.finish([value])
                values.append(result)
                statuses.append(PRESENT if result is not None else NULL_VALUE)
            stamps.append(_dt(ts))
            continue
        rows = _in_window(value[1 + feature.group], feature, now_us)
        result = feature.finish(rows) if rows else feature.empty
        values.append(result)
        statuses.append(PRESENT if result is not None else NULL_VALUE)
        at = 0 if feature.window is None else 1  # maxts comes first among the partials, after a tile's position
        stamps.append(_dt(max((r[at] for r in rows if r[at] is not None), default=None)))
    response.values[feature.output] = values
    response.statuses[feature.output] = statuses
    response.event_timestamps[feature.output] = stamps


def _in_window(group_value: Any, feature: FeaturePlan, now_us: int) -> list[Any]:
    if group_value is None:
        return []
    if feature.window is None:
        return [group_value]
    hop = feature.hop
    start = now_us - feature.window
    start -= start % hop
    return [row for row in group_value if row[0] >= start]


def _dt(micros: int | None) -> datetime | None:
    return None if micros is None else datetime.fromtimestamp(micros / 1_000_000, UTC)

