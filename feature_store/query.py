"""The compiled plan of a view: engine-neutral data that every engine and store compiles further.

From a view's definition and its source's column types (recorded in the registry at apply), :func:`compile_view`
makes a :class:`ViewQuery`: the source as a reference (no SQL), the join keys and time columns, the requested
features with their windows, hops and types, and the hop groups of the view's online layout with the partial
aggregates each keeps. It is plain frozen data: printable, comparable in tests, and the same for DuckDB,
Spark and the online stores. DuckDB compiles it to SQL inside offline/duckdb; the online reader compiles it to
keys, fields and finishers; nothing here reads data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING

from feature_store import types
from feature_store.aggregations import Aggregation, AggregationFunction, Partial, function_of
from feature_store.aggregations.partials import group_partials
from feature_store.definitions import DuckDBSource, FeatureView, Field, FileSource, PushSource, SparkSource
from feature_store.durations import format_duration, to_micros
from feature_store.errors import SchemaError, closest

if TYPE_CHECKING:
    from feature_store.catalog import Catalog
    from feature_store.references import ResolvedFeature

PUSHED_AT = "__fs_pushed_at"  # a pushed row's arrival time, epoch microseconds (the push log's column)
CREATED = "__fs_created"  # availability of a push source's rows (epoch us): created, or pushed at
PUSHED_ROW = "__fs_pushed"  # TRUE for rows of a push source that came from its push log
# A push with an idempotency key logs it, each row's index in the push and the push's row count on each line:
# readers count each (key, row) once, from a complete copy (offline/push_log.py).
PUSH_ID = "__fs_push_id"
PUSH_ROW = "__fs_push_row"
PUSH_ROWS = "__fs_push_rows"


@dataclass(frozen=True)
class SourceRef:
    """Where a view's rows come from, as recorded at apply: the batch source's definition and column types, and
    the push source whose logged events join them (if any)."""

    batch: FileSource | DuckDBSource | SparkSource
    columns: Mapping[str, str]  # column -> engine-neutral type, of the batch source
    push_source: str | None = None

    @property
    def name(self) -> str:
        return self.batch.name

    @property
    def timestamp_field(self) -> str:
        return self.batch.timestamp_field

    @property
    def created_field(self) -> str | None:
        """The column that says when a row became available: a push source's own, else the batch's (if any)."""
        return CREATED if self.push_source else self.batch.created_timestamp_field

    def type_of(self, column: str) -> str:
        if column == CREATED and self.push_source:
            return "int64"
        return self.columns[column]


@dataclass(frozen=True)
class FeatureRequest:
    """One requested feature: an aggregation over windows of events, or a snapshot column."""

    name: str  # in its view
    output: str  # the result's column name
    output_type: str
    input_type: str | None  # the aggregated column's (None for a count of rows), or the snapshot column's
    column: str | None  # the aggregated column (None for a count of rows), or the snapshot column
    hop: int = 0  # microseconds, aggregations only
    window: int | None = None  # microseconds; None is unbounded
    definition: Aggregation | None = None  # None for snapshot columns

    @property
    def aggregation(self) -> Aggregation:
        if self.definition is None:
            raise TypeError(f"{self.name} is a snapshot column, not an aggregation")
        return self.definition

    @property
    def function(self) -> AggregationFunction:
        return function_of(self.aggregation)

    def partials(self) -> tuple[Partial, ...]:
        return self.function.partials(self.aggregation, self.input_type)


@dataclass(frozen=True)
class Group:
    """A hop group of the online layout: the tiles of one hop kept per entity (hop 0: the one cumulative tile of
    unbounded windows), with the fields of their partials (aggregations/partials.py)."""

    hop: int
    window: int  # the widest window of the group (0 for the cumulative group)
    partials: tuple[Partial, ...]
    fields: tuple[str, ...]
    storages: tuple[str, ...]  # per field: INT, FLOAT or OBJECT

    @cached_property
    def _index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.fields)}

    def at(self, name: str) -> int:
        return self._index[name]

    def storage(self, index: int) -> str:
        return self.storages[index]

    @classmethod
    def of(cls, hop: int, requests: Sequence[FeatureRequest]) -> Group:
        partials = group_partials([p for r in requests for p in r.partials()])
        types_of = {p: next((r.input_type for r in requests if p in (*r.partials(), *_needs(r))), None)
                    for p in partials}
        fields: list[str] = []
        storages: list[str] = []
        for partial in partials:
            fields += partial.fields
            storages += partial.storage(types_of[partial])
        window = 0 if hop == 0 else max(r.window or 0 for r in requests)
        return cls(hop, window, partials, tuple(fields), tuple(storages))


def _needs(request: FeatureRequest) -> tuple[Partial, ...]:
    return tuple(need for p in request.partials() for need in p.needs)


@dataclass(frozen=True)
class TileHop:
    """Offline tiles of one hop: the partials training sets read from materialized tiles of that hop."""

    hop: int
    partials: tuple[Partial, ...]
    input_types: Mapping[str, str | None] = field(default_factory=dict)  # partial field -> column type


@dataclass(frozen=True)
class ViewQuery:
    name: str
    keys: tuple[str, ...]
    key_types: tuple[str, ...]
    source: SourceRef
    features: tuple[FeatureRequest, ...]  # the requested ones, in request order
    is_aggregation: bool
    ttl: int | None = None  # microseconds, snapshot views
    field_order: tuple[str, ...] = ()  # a snapshot view's fields in declaration order: they break ties
    groups: tuple[Group, ...] = ()  # the online layout of the whole view (bounded groups by hop, then cumulative)
    tile_hops: tuple[TileHop, ...] = ()  # the offline tiles of the requested features

    @property
    def timestamp_field(self) -> str:
        return self.source.timestamp_field

    @property
    def created_field(self) -> str | None:
        return self.source.created_field

    @property
    def columns(self) -> list[str]:
        """Source columns the requested features read (all of a snapshot view's fields)."""
        names = [r.column for r in self.features]
        return sorted({n for n in [*names, *self.field_order] if n})

    def __str__(self) -> str:
        """The plan as text: what a reviewer (or a test) reads to see what an engine will be asked to compute."""
        push = f" + pushed events of {self.source.push_source}" if self.source.push_source else ""
        keys = ", ".join(f"{k} {t}" for k, t in zip(self.keys, self.key_types, strict=True))
        lines = [f"view {self.name} ({'aggregation' if self.is_aggregation else 'snapshot'})",
                 f"  source: {self.source.name}{push}; keys: {keys}",
                 f"  time: {self.timestamp_field}, available: {self.created_field or 'at event time'}"]
        if self.ttl is not None:
            lines.append(f"  ttl: {format_duration(timedelta(microseconds=self.ttl))}")
        for request in self.features:
            lines.append(f"  feature {request.output}: {_describe_request(request)}")
        for group in self.groups:
            hop = "cumulative" if group.hop == 0 else f"hop {format_duration(timedelta(microseconds=group.hop))}"
            partials = ", ".join(_describe_partial(p) for p in group.partials)
            lines.append(f"  online group {hop}: {partials}")
        for tiles in self.tile_hops:
            partials = ", ".join(_describe_partial(p) for p in tiles.partials)
            lines.append(f"  offline tiles hop {format_duration(timedelta(microseconds=tiles.hop))}: {partials}")
        return "\n".join(lines)

    def group_of(self, request: FeatureRequest) -> int:
        for i, group in enumerate(self.groups):
            if (group.hop == 0) == (request.window is None) and (group.hop == 0 or group.hop == request.hop):
                return i
        raise KeyError(request.output)


def _describe_request(request: FeatureRequest) -> str:
    if request.definition is None:
        return f"column {request.column} ({request.output_type})"
    window = "unbounded" if request.window is None else format_duration(timedelta(microseconds=request.window))
    column = request.column or "*"
    hop = format_duration(timedelta(microseconds=request.hop))
    return f"{request.function.kind}({column}) over {window}, hop {hop} -> {request.output_type}"


def _describe_partial(partial: Partial) -> str:
    param = "" if partial.param is None else f", {partial.param:g}"
    return f"{partial.kind}({partial.column or '*'}{param})"


def compile_view(catalog: Catalog, view: FeatureView, items: Sequence[ResolvedFeature]) -> ViewQuery:
    """The plan of ``items`` (features of ``view``), from definitions and the recorded column types only."""
    declared = catalog.source_of(view)
    batch = catalog.batch_source(declared)
    source = SourceRef(batch, catalog.schema(batch.name),
                       declared.name if isinstance(declared, PushSource) else None)
    keys = catalog.join_keys(view)
    key_types = tuple(_column_type(source, k, view.name) for k in keys)
    everything = tuple(_request(view, view.feature(name), name, source) for name in view.feature_names)
    requested = tuple(_request(view, view.feature(item.feature), item.output, source) for item in items)
    if not view.is_aggregation:
        return ViewQuery(view.name, keys, key_types, source, requested, False,
                         None if view.ttl is None else to_micros(view.ttl), view.feature_names)
    return ViewQuery(view.name, keys, key_types, source, requested, True, groups=_groups(everything),
                     tile_hops=_tile_hops(requested))


def check_view(catalog: Catalog, view: FeatureView) -> None:
    """Raise a SchemaError naming the view, column and fix when the source's recorded columns cannot feed it."""
    declared = catalog.source_of(view)
    source = catalog.batch_source(declared)
    columns = catalog.schema(source.name)
    where = f"source {source.name!r} (used by feature view {view.name!r})"
    for name in filter(None, [source.timestamp_field, source.created_timestamp_field]):
        kind = _require(columns, name, where)
        if not types.is_time(kind):
            raise SchemaError(
                f"{where}: column {name!r} has type {types.sql_name(kind)}, not a timestamp; convert it when "
                "writing the data, or name the right column in timestamp_field/created_timestamp_field.",
                source=source.name, column=name,
            )
    for key in catalog.join_keys(view):
        _require(columns, key, where)
    for optional in declared.nullable if isinstance(declared, PushSource) else ():
        _require(columns, optional, f"source {source.name!r} (nullable= of push source {declared.name!r})")
    for feature in view.features:
        read = feature.column if isinstance(feature, Aggregation) else feature.name
        if read is None:
            continue
        column: str = read
        kind = _require(columns, column, where)
        accepted = function_of(feature).input_types if isinstance(feature, Aggregation) else None
        if accepted is not None and kind not in accepted:
            raise SchemaError(
                f"feature {feature.name!r} of view {view.name!r}: {type(feature).__name__} needs a "
                f"{types.describe(accepted)} column, but {column!r} in {where} is {types.sql_name(kind)}. Use "
                "Count, Last or CountDistinct for such columns, or aggregate a numeric one.",
                view=view.name, feature=feature.name, column=column,
            )


def _require(columns: Mapping[str, str], column: str, where: str) -> str:
    if column not in columns:
        raise SchemaError(
            f"{where} has no column {column!r}.{closest(column, columns)} Columns: {sorted(columns)}.",
            column=column,
        )
    return columns[column]


def _column_type(source: SourceRef, column: str, view: str) -> str:
    if column not in source.columns:
        raise SchemaError(
            f"column {column!r} of feature view {view!r} is not in the recorded columns of source "
            f"{source.name!r} ({sorted(source.columns)}); run 'feature-store apply' after changing the data.",
            view=view, source=source.name, column=column,
        )
    return source.columns[column]


def _request(view: FeatureView, feature: Aggregation | Field, output: str, source: SourceRef) -> FeatureRequest:
    if isinstance(feature, Field):
        field_type = _column_type(source, feature.name, view.name)
        return FeatureRequest(feature.name, output, types.FIELD_TYPES[feature.dtype], field_type, feature.name)
    input_type = _column_type(source, feature.column, view.name) if feature.column else None
    return FeatureRequest(
        feature.name, output, function_of(feature).output_type(feature, input_type), input_type, feature.column,
        hop=to_micros(feature.effective_hop(view.hop)),
        window=None if feature.window is None else to_micros(feature.window), definition=feature,
    )


def _groups(requests: Sequence[FeatureRequest]) -> tuple[Group, ...]:
    bounded: dict[int, list[FeatureRequest]] = {}
    unbounded: list[FeatureRequest] = []
    for request in requests:
        (unbounded if request.window is None else bounded.setdefault(request.hop, [])).append(request)
    groups = [Group.of(hop, reqs) for hop, reqs in sorted(bounded.items())]
    if unbounded:
        groups.append(Group.of(0, unbounded))
    return tuple(groups)


def _tile_hops(requests: Sequence[FeatureRequest]) -> tuple[TileHop, ...]:
    hops: dict[int, list[FeatureRequest]] = {}
    for request in requests:
        if request.function.offline_tiles:
            hops.setdefault(request.hop, []).append(request)
    out = []
    for hop, reqs in sorted(hops.items()):
        partials = group_partials([p for r in reqs for p in r.partials()])
        input_types = {f: r.input_type for r in reqs for p in (*r.partials(), *_needs(r)) for f in p.fields}
        out.append(TileHop(hop, partials, input_types))
    return tuple(out)
