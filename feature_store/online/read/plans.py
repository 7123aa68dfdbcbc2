"""Read plans: what a request's features need from the online store, compiled once per request shape.

A read serves the *live generation* of each view (the definition its stored values were materialized with,
recorded in the registry): until a changed definition's values are materialized, its features keep their
previous definition's values, and a feature the live generation lacks reads ``NOT_MATERIALIZED``. The plan
holds the keys, the fields to read (a view over a push source also reads its pushed delta) and, per feature,
its finishers from its function's module (aggregations/).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from feature_store import types
from feature_store.aggregations.base import ManyFinisher, OneFinisher
from feature_store.online.push.merge import PushTarget
from feature_store.online.tiles.format import Shape
from feature_store.query import ViewQuery


@dataclass(frozen=True)
class FeaturePlan:
    output: str
    group: int  # index into the view's groups; -1 for snapshot columns
    hop: int
    window: int | None
    finish: ManyFinisher | None  # aggregations, for many entities at once
    finish_one: OneFinisher | None  # aggregations, entity by entity
    empty: Any
    column: int = -1  # snapshots: the index of the feature's column in the stored row, after ts and created
    materialized: bool = True  # False: the live generation lacks it (status NOT_MATERIALIZED)


@dataclass(frozen=True)
class ViewPlan:
    name: str
    prefix: bytes  # of the live generation's values
    keys: tuple[str, ...]
    key_kinds: tuple[str, ...]  # "integer" or "string": how entity values are coerced
    is_aggregation: bool
    ttl: int | None
    features: tuple[FeaturePlan, ...]
    shapes: tuple[Shape, ...]  # how the stored groups are stored (aggregation views)
    target: PushTarget | None  # a view over a push source: how its pushed delta folds in (None: no delta)
    live: bool = True  # False: no generation of the view is materialized in this store

    @property
    def delta(self) -> bytes | None:
        return None if self.target is None else self.target.delta


def compile_read(live: ViewQuery | None, requested: ViewQuery, prefix: bytes, bucket: int) -> ViewPlan:
    """A read plan of the ``requested`` features (of the current definition) from the values of the ``live``
    generation (the whole view as it was materialized; None: never materialized in this store)."""
    basis = live or requested
    kinds = tuple(types.key_family(t) for t in basis.key_types)
    target = PushTarget.of(live, prefix, bucket) if live is not None and live.source.push_source else None
    by_name = {r.name: r for r in live.features} if live is not None else {}
    features = []
    for request in requested.features:
        stored = by_name.get(request.name)
        if live is None or stored is None:
            features.append(FeaturePlan(request.output, -1, 0, None, None, None, None, materialized=False))
        elif not live.is_aggregation:
            features.append(FeaturePlan(request.output, -1, 0, None, None, None, None, live.columns.index(stored.name)))
        else:
            g = live.group_of(stored)
            group, function, definition = live.groups[g], stored.function, stored.aggregation
            features.append(FeaturePlan(
                request.output, g, stored.hop, stored.window,
                function.finish_many(definition, group, stored.output_type),
                function.finish_one(definition, group, stored.output_type),
                function.empty(stored.output_type),
            ))
    shapes = tuple(Shape.of(group) for group in basis.groups) if basis.is_aggregation else ()
    return ViewPlan(requested.name, prefix, basis.keys, kinds, basis.is_aggregation, basis.ttl, tuple(features),
                    shapes, target, live is not None)
